"""The reproduction pipeline (pipelines/reproduce.py): table and claim logic on synthetic results
(fast), the launch plan's specs (validated by the real spec parser), and a slow ``--quick`` run."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"


@pytest.fixture(scope="module")
def repro():
    """The pipeline's helper modules, imported the way reproduce.py imports them."""
    sys.path.insert(0, str(PIPELINES))
    try:
        yield (importlib.import_module("_repro_plan"), importlib.import_module("_repro_report"))
    finally:
        sys.path.remove(str(PIPELINES))


GROUPS = {"mini/a": "natural", "mini/b": "structured", "mini/c": "structured"}
SEED_NOISE = (-0.01, 0.0, 0.01)  # per-seed offsets around a cell's mean


def cell(mean: float, std: float = 0.01, tuned: float = 1.0, ensemble: float | None = None,
         noise: tuple[float, ...] = SEED_NOISE) -> dict:
    """A results cell as _repro_report.collect builds it: per-seed test accuracies around ``mean``."""
    return {"mean": mean, "std": std, "tuned_percent": tuned, "ensemble": ensemble,
            "seeds": {str(i): mean + d for i, d in enumerate(noise)}}


def table(**rows: tuple[float, float, float]) -> dict:
    """variant -> (acc on a, b, c)."""
    return {v.replace("_", "-"): {t: cell(a) for t, a in zip(GROUPS, accs, strict=True)}
            for v, accs in rows.items()}


def results(main: dict, length: dict | None = None, size: dict | None = None) -> dict:
    return {"main": main, "length": length or {}, "frozen": {}, "size": size or {}, "probe": {},
            "groups": GROUPS, "launches": [], "total": 1, "finished": 1}


def test_main_table_means_groups_wins_and_tuned(repro) -> None:
    _, rep = repro
    t = table(full=(0.5, 0.4, 0.3), vpt_deep=(0.6, 0.4, 0.35), linear=(0.2, 0.5, 0.1))
    rows = {r["variant"]: r for r in rep.main_table(t, list(GROUPS), GROUPS)}
    vpt = rows["vpt-deep"]
    assert vpt["mean"] == pytest.approx(0.45)
    assert vpt["groups"] == {"natural": pytest.approx(0.6), "structured": pytest.approx(0.375)}
    assert (vpt["wins"], vpt["wins_of"]) == (2, 3)  # a tie (0.4 vs 0.4) is not a win
    assert rows["linear"]["wins"] == 1 and rows["full"]["wins"] is None
    assert vpt["tuned_percent"] == pytest.approx(1.0)
    md = rep.main_table_md(list(rows.values()), list(GROUPS), GROUPS)
    assert "| vpt-deep | 60.0 ± 1.0 | 40.0 ± 1.0 | 35.0 ± 1.0 | 60.0 | 37.5 | 45.0 | 2/3 | 1.00 |" in md


def test_probe_row_in_the_main_table(repro) -> None:
    _, rep = repro
    t = table(full=(0.5, 0.4, 0.3))
    probe = {"mini/a": {"val": 0.7, "test": 0.8}, "mini/b": {"val": 0.2, "test": 0.3},
             "mini/c": {"val": 0.1, "test": 0.2}}
    rows = rep.main_table(rep.with_probe(t, probe), list(GROUPS), GROUPS)
    md = rep.main_table_md(rows, list(GROUPS), GROUPS)
    assert f"| {rep.PROBE_ROW} | 80.0 | 30.0 | 20.0 | 80.0 | 25.0 | 43.3 | 1/3 | – |" in md
    assert rep.with_probe(t, {}) == t
    # the probe of another study's task (train-size MNIST) stays out of the main table's row
    extra = rep.with_probe(t, {**probe, "repro/mnist_n100": {"val": 0.5, "test": 0.5}})[rep.PROBE_ROW]
    assert set(extra) == set(GROUPS)


def test_missing_cells_give_no_mean(repro) -> None:
    _, rep = repro
    t = table(full=(0.5, 0.4, 0.3))
    del t["full"]["mini/c"]
    row = rep.main_table(t, list(GROUPS), GROUPS)[0]
    assert row["mean"] is None and row["groups"]["structured"] is None and row["groups"]["natural"] == 0.5


# --- the bootstrap --------------------------------------------------------------------------------
def test_bootstrap_two_values_known_distribution(repro) -> None:
    """One unit holding 0 and 1: the resampled mean is 0, 0.5, 1 with probability 1/4, 1/2, 1/4, so
    the 2.5 % and 97.5 % percentiles are exactly 0 and 1."""
    _, rep = repro
    ci = rep.bootstrap_ci([[0.0, 1.0]])
    assert ci == {"mean": 0.5, "lo": 0.0, "hi": 1.0, "units": 1, "cells": 2}


def test_bootstrap_matches_the_exact_bootstrap_distribution(repro) -> None:
    """Four units of one value: all 4^4 resamples enumerated give the exact percentile interval."""
    import itertools

    import numpy as np

    _, rep = repro
    vals = [0.0, 0.1, 0.3, 0.8]
    exact = np.array([np.mean(c) for c in itertools.product(vals, repeat=4)])
    lo, hi = np.percentile(exact, [2.5, 97.5])
    ci = rep.bootstrap_ci([[v] for v in vals])
    assert ci["mean"] == pytest.approx(0.3)
    assert ci["lo"] == pytest.approx(lo, abs=0.02) and ci["hi"] == pytest.approx(hi, abs=0.02)
    assert rep.bootstrap_ci([[v] for v in vals]) == ci  # fixed RNG seed: the same interval every time


def test_bootstrap_normal_approximation_and_levels(repro) -> None:
    import numpy as np

    _, rep = repro
    x = np.random.default_rng(1).normal(0.02, 0.05, size=400)
    ci = rep.bootstrap_ci([[v] for v in x])
    half = 1.96 * x.std() / np.sqrt(len(x))
    assert ci["lo"] == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert ci["hi"] == pytest.approx(x.mean() + half, abs=0.15 * half)
    assert rep.bootstrap_ci([]) is None and rep.bootstrap_ci([[]]) is None


def test_bootstrap_resamples_tasks_not_only_seeds(repro) -> None:
    """Seeds that agree inside each task but tasks that disagree: the interval must reflect the
    spread between tasks (a bootstrap over the pooled cells would be far narrower)."""
    _, rep = repro
    units = [[0.10, 0.10, 0.10], [-0.06, -0.06, -0.06], [0.02, 0.02, 0.02]]
    two_level = rep.bootstrap_ci(units)
    one_per_task = rep.bootstrap_ci([[u[0]] for u in units])
    assert two_level["lo"] == pytest.approx(one_per_task["lo"], abs=0.01)
    assert two_level["lo"] < 0 < two_level["hi"]
    assert two_level["cells"] == 9 and two_level["units"] == 3


def test_verdict_rule(repro) -> None:
    _, rep = repro
    assert rep.verdict({"lo": 0.001, "hi": 0.2}) == "TRUE"
    assert rep.verdict({"lo": -0.2, "hi": -0.001}) == "FALSE"
    assert rep.verdict({"lo": -0.1, "hi": 0.1}) == "UNDECIDED"
    assert rep.verdict({"lo": 0.0, "hi": 0.0}) == "UNDECIDED"  # no difference at all is not a win
    assert rep.verdict(None) == "n/a"


# --- the claims -----------------------------------------------------------------------------------
def _spt_rows(vpt: tuple, spt: tuple) -> dict:
    rows = {"vpt_deep": vpt, "linear": (0.1, 0.1, 0.1)}
    rows.update({f"{s}_deep": spt for s in ("spt_mean", "spt_max", "spt_sample", "spt_kmeans")})
    return table(**rows)


def _by_id(cs: list[dict]) -> dict:
    return {c["id"]: c for c in cs}


def test_spt_claims_true_false_undecided(repro) -> None:
    _, rep = repro
    main = {"sup": _spt_rows((0.5, 0.5, 0.5), (0.52, 0.53, 0.51)),
            "mae": _spt_rows((0.4, 0.4, 0.4), (0.5, 0.5, 0.5))}
    c = _by_id(rep.claims(results(main)))
    assert c["spt_beats_vpt"]["verdict"] == "TRUE"
    assert c["spt_beats_vpt"]["ci"]["units"] == 6 and c["spt_beats_vpt"]["ci"]["cells"] == 18
    assert c["spt_beats_vpt"]["ci"]["mean"] == pytest.approx((0.02 + 0.03 + 0.01 + 0.3) / 6)
    assert "sup/a +2.0" in c["spt_beats_vpt"]["numbers"]  # the paired per-task differences are shown
    assert c["spt_gain_larger_on_mae"]["verdict"] == "TRUE"
    assert c["spt_gain_larger_on_mae"]["ci"]["mean"] == pytest.approx(0.08)
    # SPT worse everywhere -> FALSE; the MAE gain smaller -> FALSE
    main["mae"] = _spt_rows((0.5, 0.5, 0.5), (0.45, 0.44, 0.46))
    main["sup"] = _spt_rows((0.5, 0.5, 0.5), (0.47, 0.46, 0.48))
    c = _by_id(rep.claims(results(main)))
    assert c["spt_beats_vpt"]["verdict"] == "FALSE"
    assert c["spt_gain_larger_on_mae"]["verdict"] == "FALSE"
    # better on some tasks, worse on others -> UNDECIDED
    main = {"sup": _spt_rows((0.5, 0.5, 0.5), (0.6, 0.45, 0.5)),
            "mae": _spt_rows((0.5, 0.5, 0.5), (0.4, 0.55, 0.5))}
    assert _by_id(rep.claims(results(main)))["spt_beats_vpt"]["verdict"] == "UNDECIDED"


def test_claims_pair_the_same_seed(repro) -> None:
    """A seed effect shared by both rows cancels in the paired difference (TRUE), although the two
    rows' seed spreads overlap."""
    _, rep = repro
    noise = (-0.2, 0.0, 0.2)
    main = {"sup": {
        "vpt-deep": {t: cell(0.5, noise=noise) for t in GROUPS},
        "linear": {t: cell(0.49, noise=noise) for t in GROUPS},
    }}
    c = _by_id(rep.claims(results(main)))["vpt_beats_linear_structured"]
    assert c["verdict"] == "TRUE" and c["ci"]["lo"] == pytest.approx(0.01)


def test_structured_claim_uses_only_structured_tasks(repro) -> None:
    _, rep = repro
    # VPT loses badly on the natural task but wins on the structured ones: TRUE
    main = {"sup": table(vpt_deep=(0.1, 0.6, 0.6), linear=(0.9, 0.5, 0.5))}
    c = _by_id(rep.claims(results(main)))["vpt_beats_linear_structured"]
    assert c["verdict"] == "TRUE" and c["ci"]["units"] == 2 and "sup/b +10.0" in c["numbers"]
    main = {"sup": table(vpt_deep=(0.9, 0.4, 0.45), linear=(0.1, 0.5, 0.6))}
    assert _by_id(rep.claims(results(main)))["vpt_beats_linear_structured"]["verdict"] == "FALSE"


def _curve(accs: dict[int, float]) -> dict:
    return {p: cell(a) for p, a in accs.items()}


def test_length_sensitivity_claim(repro) -> None:
    _, rep = repro
    flat = {"mini/a": _curve({1: 0.50, 5: 0.52, 50: 0.51}), "mini/b": _curve({1: 0.3, 5: 0.3, 50: 0.32})}
    steep = {"mini/a": _curve({1: 0.20, 5: 0.40, 50: 0.60}), "mini/b": _curve({1: 0.1, 5: 0.3, 50: 0.2})}
    assert rep.seed_ranges(steep["mini/a"]) == {"0": pytest.approx(0.4), "1": pytest.approx(0.4),
                                                "2": pytest.approx(0.4)}
    c = _by_id(rep.claims(results({}, length={"sup": {"random": steep, "spt-kmeans": flat}})))
    assert c["spt_less_length_sensitive"]["verdict"] == "TRUE"
    assert c["spt_less_length_sensitive"]["ci"]["mean"] == pytest.approx(((0.4 - 0.02) + (0.2 - 0.02)) / 2)
    c = _by_id(rep.claims(results({}, length={"sup": {"random": flat, "spt-kmeans": steep}})))
    assert c["spt_less_length_sensitive"]["verdict"] == "FALSE"
    assert rep.seed_ranges({1: cell(0.5)}) == {}  # one length: no sensitivity


def test_train_size_claim_needs_a_growing_gap(repro) -> None:
    _, rep = repro
    tasks = ("repro/mnist_n100", "repro/mnist_n800", "repro/mnist_nall")

    def size(full: tuple, vpt: tuple, noise: tuple = SEED_NOISE) -> dict:
        return {"full": {t: cell(a) for t, a in zip(tasks, full, strict=True)},
                "vpt-deep": {t: cell(a, noise=noise) for t, a in zip(tasks, vpt, strict=True)}}

    def claim(sizes: dict) -> dict:
        return _by_id(rep.claims(results({}, size=sizes)))["full_gains_with_data"]

    grow = claim(size((0.3, 0.6, 0.9), (0.5, 0.6, 0.7)))
    assert grow["verdict"] == "TRUE" and grow["ci"]["mean"] == pytest.approx(0.4)
    assert grow["values"]["gap_n100"] == pytest.approx(-0.2)
    assert grow["values"]["gap_n3800"] == pytest.approx(0.2)
    assert claim(size((0.6, 0.6, 0.7), (0.5, 0.6, 0.7)))["verdict"] == "FALSE"
    # the seeds disagree (per seed: -8, +2, +12 points): UNDECIDED
    noisy = size((0.5, 0.6, 0.52), (0.5, 0.6, 0.5))
    noisy["vpt-deep"]["repro/mnist_n100"] = cell(0.5, noise=(-0.05, 0.0, 0.05))
    noisy["vpt-deep"]["repro/mnist_nall"] = cell(0.5, noise=(0.05, 0.0, -0.05))
    c = claim(noisy)
    assert c["verdict"] == "UNDECIDED"
    assert (c["ci"]["lo"], c["ci"]["hi"]) == (pytest.approx(-0.08), pytest.approx(0.12))


def test_ensemble_claim(repro) -> None:
    _, rep = repro

    def rows(gain_a: float, gain_b: float) -> dict:
        out = {}
        for r in rep.DEEP_PROMPT_ROWS:
            out[r] = {"mini/a": cell(0.5, ensemble=0.5 + gain_a), "mini/b": cell(0.3, ensemble=0.3 + gain_b)}
        return out

    c = _by_id(rep.claims(results({"sup": rows(0.02, 0.01), "mae": rows(0.03, 0.01)})))
    e = c["ensemble_beats_seed_mean"]
    assert e["verdict"] == "TRUE" and e["ci"]["units"] == 4 and e["ci"]["cells"] == 4 * 5
    assert e["ci"]["mean"] == pytest.approx((0.02 + 0.01 + 0.03 + 0.01) / 4)
    c = _by_id(rep.claims(results({"sup": rows(-0.02, -0.01)})))
    assert c["ensemble_beats_seed_mean"]["verdict"] == "FALSE"
    c = _by_id(rep.claims(results({"sup": rows(0.02, -0.03)})))
    assert c["ensemble_beats_seed_mean"]["verdict"] == "UNDECIDED"
    md = rep.ensemble_table_md(results({"sup": rows(0.02, 0.01)}))
    assert "| vpt-deep | 52.0 (+2.0) | 31.0 (+1.0) | +1.5 |" in md


def test_missing_launches_read_na(repro) -> None:
    _, rep = repro
    cs = rep.claims(results({"sup": table(full=(0.5, 0.5, 0.5))}))
    assert {c["verdict"] for c in cs} == {"n/a"}
    # every cell there, but a launch the claim needs is unfinished: n/a, not a verdict on part of it
    res = results({"sup": table(vpt_deep=(0.6, 0.6, 0.6), linear=(0.1, 0.1, 0.1))})
    res["launches"] = [{"name": "x", "study": "main", "backbone": "mae", "variant": "linear", "done": False,
                        "run_dir": None}]
    c = _by_id(rep.claims(res))["vpt_beats_linear_structured"]
    assert c["verdict"] == "n/a" and c["numbers"] == "waiting for launches"


def test_document_marks_partial_runs_and_counts_only_this_plans_timings(repro, tmp_path: Path) -> None:
    plan, rep = repro
    res = results({"sup": table(full=(0.5, 0.4, 0.3), vpt_deep=(0.6, 0.4, 0.35))})
    run = tmp_path / "repro_main_sup_full" / "20270101-000000"
    res.update(total=30, finished=2, launches=[
        {"name": "repro_main_sup_full", "study": "main", "backbone": "sup", "variant": "full", "done": True,
         "run_dir": str(run)},
        {"name": "repro_main_sup_vpt_deep", "study": "main", "backbone": "sup", "variant": "vpt-deep",
         "done": True, "run_dir": str(tmp_path / "b")}])
    timings = {"repro_main_sup_full": {"status": "done", "seconds": 120.0, "run_dir": str(run)},
               # an older plan's launch of the same name (another run folder): not this run's time
               "repro_main_sup_vpt_deep": {"status": "done", "seconds": 999.0,
                                           "run_dir": str(tmp_path / "old")}}
    text = rep.document(res, plan.FULL, command="python pipelines/reproduce.py", timings=timings,
                        full_cmd="X", plot_names=[], plot_dir="results", launches=plan.plan(False))
    assert "**Partial: 2 of 30 launches finished.**" in text
    assert "`python pipelines/reproduce.py`" in text and "## Claims" in text
    assert "2.0 min for 1 launch(es)" in text
    assert "`head.norm: batchnorm` for every method" in text and "15 epoch(s) (2 warm-up" in text
    assert "`head.init: probe`" in text and "(`optim.head_lr_scale` {0.1, 1})" in text
    assert "two-level percentile bootstrap (10,000 resamples" in text
    assert "Estimated wall time of the whole plan" in text


def test_plan_specs_validate_and_cover_the_issue(repro, tmp_path: Path) -> None:
    plan, _ = repro
    from vptsearch.spec import spec_from_dict

    launches = plan.plan(quick=False)
    names = [lc.name for lc in launches]
    assert len(names) == len(set(names))
    main = {(lc.backbone, lc.variant) for lc in launches if lc.study == "main"}
    for bb in plan.BACKBONES:
        for v in ("full", "linear", "bias", "adapter", "vpt-shallow", "vpt-deep",
                  "spt-mean-deep", "spt-max-deep", "spt-sample-deep", "spt-kmeans-deep"):
            assert (bb, v) in main
    assert plan.FULL.epochs >= 15 and plan.FULL.final_seeds == (0, 1, 2) and plan.FULL.lr_points >= 3
    lengths = {}
    for lc in launches:
        spec = spec_from_dict(plan.spec_dict(lc, plan.FULL, run_dir=str(tmp_path), tracking_uri="sqlite:///x.db",
                                             experiment="repro"))
        assert spec.protocol.final_seeds == (0, 1, 2) and spec.experiment == "repro" and spec.protocol.probe
        assert spec.params["head.norm"].values == ("batchnorm",)
        if lc.method == "full":  # the issue-12 head: a fitted one collapsed full fine-tuning
            assert spec.search.algorithm == "grid" and spec.search.trials_per_task == len(lc.lrs) >= 3
            assert spec.params["head.init"].values == ("random",)
            assert spec.params["optim.head_lr_scale"].values == (1.0,)
        else:
            assert spec.search.algorithm == "grid" and spec.search.trials_per_task == 2 * len(lc.lrs) >= 6
            assert spec.params["head.init"].values == ("probe",)
            assert spec.params["optim.head_lr_scale"].values == (0.1, 1.0)
        assert spec.training.optimizer == "sgd" and spec.training.prompt_dropout_mask == "sample"
        assert spec.training.epochs == plan.FULL.epochs
        assert spec.training.warmup_epochs == plan.FULL.warmup_epochs
        if lc.study == "main":
            assert set(spec.suite) == set(plan.TASKS)
        if lc.study == "frozen":
            assert spec.params["prompt.frozen"].values == (True,)
        if lc.study == "length":
            p = spec.params["prompt.length"].values[0]
            lengths.setdefault((lc.backbone, lc.extra["init"]), set()).add(p)
    # every (backbone, init) has every length but the main table's p, which the main rows provide
    others = set(plan.LENGTHS) - {plan.FULL.prompt_length}
    assert lengths == {(bb, i): others for bb in plan.BACKBONES for i in ("random", "spt-kmeans")}
    assert {v for _, v in main} >= {"vpt-deep", "spt-kmeans-deep"}
    # the claims' launches come before the rest of the main table and the frozen study
    studies = [lc.study for lc in launches]
    assert studies.index("size") < names.index("repro_main_sup_bias") < studies.index("frozen")


def test_quick_plan_specs_validate(repro, tmp_path: Path) -> None:
    plan, _ = repro
    from vptsearch.spec import spec_from_dict

    launches = plan.plan(quick=True)
    assert len(launches) == 10 and {lc.study for lc in launches} == {"main", "length", "size", "frozen"}
    for lc in launches:
        spec = spec_from_dict(plan.spec_dict(lc, plan.QUICK, run_dir=str(tmp_path), tracking_uri="sqlite:///x.db",
                                             experiment="repro-quick"), source=lc.name)
        assert spec.training.epochs == 1 and spec.protocol.final_seeds == (0, 1)  # 2 seeds: an ensemble
        assert spec.params["head.norm"].values == ("batchnorm",) and spec.search.trials_per_task == 1


def test_cost_model_reproduces_the_2_epoch_run(repro) -> None:
    """The estimate's constant comes from the published 2-epoch run: its main study (20 launches,
    2 lr values, 2 epochs) must come out at the measured 53.4 min."""
    plan, _ = repro
    from dataclasses import replace

    old = replace(plan.FULL, epochs=2, warmup_epochs=1, lr_points=2, head_lr_scales=(1.0,))  # its one head
    main = [replace(lc, lrs=lc.lrs[:2]) for lc in plan.plan(False) if lc.study == "main"]
    assert len(main) == 20
    assert plan.estimate_seconds(main, old)["total"] / 60 == pytest.approx(53.4, abs=0.2)
    est = plan.estimate_seconds(plan.plan(False), plan.FULL)
    assert est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"))
    assert 5 * 3600 < est["total"] < 20 * 3600


@pytest.mark.slow
def test_quick_end_to_end(tmp_path: Path) -> None:
    """The whole --quick pipeline on the real stack (Ray, MLflow, export); a few minutes."""
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, str(PIPELINES / "reproduce.py"), "--quick", "--run-dir", str(tmp_path / "runs"),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(out), "--cpus", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "Partial" not in text and "## Claims" in text
    assert "| probe (frozen features) |" in text and "## Ensembles of the final seeds" in text
    assert (tmp_path / "results" / "train_size_sweep.png").is_file()
    verdicts = {c["id"]: c["verdict"]
                for c in json.loads((tmp_path / "results" / "claims.json").read_text())["claims"]}
    # one backbone: the MAE-vs-sup claim cannot be judged; every other claim gets a verdict
    assert verdicts.pop("spt_gain_larger_on_mae") == "n/a"
    assert set(verdicts.values()) <= {"TRUE", "FALSE", "UNDECIDED"} and len(verdicts) == 5, verdicts
    # a second run finds every launch finished and only rebuilds the report
    again = subprocess.run(
        [sys.executable, str(PIPELINES / "reproduce.py"), "--quick", "--run-dir", str(tmp_path / "runs"),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 10, again.stdout[-2000:]
    records = sorted((tmp_path / "runs" / "launches").glob("*.json"))
    assert len(records) == 10 and all(json.loads(r.read_text())["results"]["tasks"] for r in records)
    # a fresh clone holds the records but no run folder: every launch done, the same claims
    import shutil

    for d in (tmp_path / "runs").iterdir():
        if d.name != "launches":
            shutil.rmtree(d)
    base = [sys.executable, str(PIPELINES / "reproduce.py"), "--quick", "--run-dir", str(tmp_path / "runs"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(out)]
    planned = subprocess.run([*base, "--plan"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert planned.returncode == 0 and planned.stdout.count(" done\n") == 10, planned.stdout[-2000:]
    rebuilt = subprocess.run([*base, "--report-only"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stdout[-2000:] + rebuilt.stderr[-2000:]
    assert "| repro_main_sup_full | main | yes | runs/launches/repro_main_sup_full.json |" in out.read_text()
    again_verdicts = {c["id"]: c["verdict"]
                      for c in json.loads((tmp_path / "results" / "claims.json").read_text())["claims"]}
    assert again_verdicts.pop("spt_gain_larger_on_mae") == "n/a" and again_verdicts == verdicts


def _full_results() -> dict:
    size_tasks = ("repro/mnist_n100", "repro/mnist_n800", "repro/mnist_nall")
    res = results(
        {"sup": _spt_rows((0.5, 0.5, 0.5), (0.6, 0.5, 0.5)),
         "mae": _spt_rows((0.4, 0.4, 0.4), (0.6, 0.5, 0.5))},
        length={"sup": {"random": {"mini/a": _curve({1: 0.2, 50: 0.6})},
                        "spt-kmeans": {"mini/a": _curve({1: 0.5, 50: 0.55})}}},
        size={"full": {t: cell(a) for t, a in zip(size_tasks, (0.3, 0.6, 0.9), strict=True)},
              "vpt-deep": {t: cell(a) for t, a in zip(size_tasks, (0.5, 0.6, 0.7), strict=True)}},
    )
    res["frozen"] = {"sup": {"random": {"mini/a": cell(0.3)}}}
    res["main"]["sup"]["vpt-deep"]["mini/a"]["ensemble"] = 0.56
    res["probe"] = {"sup": {"mini/a": {"val": 0.7, "test": 0.8},
                            "repro/mnist_n100": {"val": 0.5, "test": 0.4}}}
    return res


def test_page_and_plots(repro, tmp_path: Path) -> None:
    plan, rep = repro
    res = _full_results()
    pngs = rep.plots(res, tmp_path)
    names = sorted(p.name for p in pngs)
    assert names == ["acc_vs_prompt_length.png", "main_table.png", "train_size_sweep.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)
    text = rep.document(res, plan.FULL, command="c", timings={}, full_cmd="X",
                        plot_names=[p.name for p in pngs], plot_dir="results")
    assert "- **TRUE** — SPT-deep > random-init VPT-deep. Rule: paired" in text
    assert "| random, frozen after init | 30.0 ± 1.0 |" in text
    assert "![train_size_sweep.png](results/train_size_sweep.png)" in text
    assert "| vpt-deep | 50.0 ± 1.0 | 60.0 ± 1.0 | 70.0 ± 1.0 |" in text  # the train-size table
    assert "| full − vpt-deep (95 % CI over seeds) | -20.0 [-20.0, -20.0] |" in text
    assert "| probe (frozen features) | 40.0 | – | – |" in text
    assert "| vpt-deep | 56.0 (+6.0) |" in text  # the ensemble table
    assert f"| {rep.PROBE_ROW} | 80.0 | – | – |" in text


@pytest.mark.slow
def test_publish_writes_page_plots_and_mlflow_run(repro, tmp_path: Path, monkeypatch) -> None:
    """publish() on synthetic results: the page, the plots, claims.json, and one reusable
    ``repro-report`` MLflow run carrying the claim verdicts as tags (~30 s: MLflow's sqlite setup)."""
    plan, rep = repro
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    res = _full_results()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "docs" / "results.md"
    for _ in range(2):  # rebuilding reuses the same MLflow run
        rep.publish(res, plan.FULL, out=out, command="python pipelines/reproduce.py", timings={},
                    tracking_uri=uri, experiment="repro", full_cmd="X")
    text = out.read_text()
    assert "- **TRUE** — SPT-deep > random-init VPT-deep. Rule: paired" in text
    assert "| random, frozen after init | 30.0 ± 1.0 |" in text
    for name in ("acc_vs_prompt_length.png", "train_size_sweep.png", "main_table.png"):
        assert (tmp_path / "docs" / "results" / name).stat().st_size > 1000
        assert f"![{name}](results/{name})" in text
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("repro")
    runs = client.search_runs([exp.experiment_id], "tags.`vptsearch.kind` = 'repro-report'")
    assert len(runs) == 1
    assert runs[0].data.tags["claim.full_gains_with_data"] == "TRUE"
    assert runs[0].data.tags["claim.spt_less_length_sensitive"] == "TRUE"
    names = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"results.md", "claims.json", "train_size_sweep.png"} <= names


@pytest.fixture()
def reproduce(repro):
    return importlib.import_module("reproduce")


def _quick_spec(plan, tmp_path: Path, sizes=None, index: int = 0):
    """One quick launch's spec, its run folders under ``tmp_path``."""
    from vptsearch.spec import spec_from_dict

    lc = plan.plan(quick=True)[index]
    return spec_from_dict(plan.spec_dict(lc, sizes or plan.QUICK, run_dir=str(tmp_path),
                                         tracking_uri="sqlite:///x.db", experiment="repro-quick",
                                         data_root=str(tmp_path)))


def _task_results(tasks, acc: float = 0.5) -> dict:
    """A launch's results.json as vptsearch.search.launch writes it (the keys collect reads)."""
    return {"tasks": {t: {"test_mean": acc, "test_std": 0.01, "test_accs": {"0": acc - 0.01, "1": acc + 0.01},
                          "ensemble_test_acc": acc + 0.02,
                          "best": {"val_acc": acc, "tuned_percent": 1.5, "config": {"optim.base_lr": 1.0}},
                          "probe": {"val_acc": 0.4, "test_acc": 0.45}} for t in tasks},
            "rows": [{"task": t, "test_acc": acc} for t in tasks]}


MACHINE = {"cores": 2, "cpu": "test cpu", "system": "Linux test"}
VERSIONS = {"python": "3.x", "vptsearch": "0.1.0", "commit": "abc"}


def _record(reproduce, spec, results: dict | None = None, seconds: float | None = 12.5) -> dict:
    return reproduce.make_record(spec.name, reproduce.spec_identity(spec),
                                 results or _task_results(spec.suite), seconds=seconds, launch_seconds=10.0,
                                 finished="2027-01-01T00:00:00Z", machine=MACHINE, versions=VERSIONS)


def test_finished_launches_are_found_and_skipped(repro, reproduce, tmp_path: Path) -> None:
    """Without records (older runs): same spec + results.json -> done (a record is harvested, not yet
    written); same spec, no results or a failed launch's results -> resume; changed sizes -> new (the
    old folder is kept); a new spec section alone changes nothing."""
    plan, _ = repro
    records = tmp_path / "records"
    spec = _quick_spec(plan, tmp_path)
    assert reproduce.launch_state(spec, records) == reproduce.State("new")
    run = tmp_path / spec.name / "20260101-000000"
    spec.dump(run / "spec.yaml")
    assert reproduce.launch_state(spec, records) == reproduce.State("resume", run)
    (run / "results.json").write_text(json.dumps({"tasks": {}, "error": "export failed"}))
    assert reproduce.launch_state(spec, records).state == "resume"
    (run / "results.json").write_text(json.dumps(_task_results(spec.suite)))
    st = reproduce.launch_state(spec, records)
    assert (st.state, st.run_dir, st.recorded, st.stale) == ("done", run, False, False)
    assert st.record["results"] == _task_results(spec.suite) and not records.exists()  # read-only
    assert "record is written on the next run" in reproduce.state_text(st)
    from dataclasses import replace

    assert reproduce.launch_state(_quick_spec(plan, tmp_path, replace(plan.QUICK, epochs=2)), records).state \
        == "new"
    saved = spec.to_dict()
    assert reproduce._identity({**saved, "tracking": {"uri": "elsewhere"}}) == reproduce._identity(saved)


def _finished_run_folder(plan, tmp_path: Path):
    """The QUICK spec's launch finished in a run folder of its own: (spec, folder)."""
    spec = _quick_spec(plan, tmp_path)
    run = tmp_path / spec.name / "20260101-000000"
    spec.dump(run / "spec.yaml")
    (run / "results.json").write_text(json.dumps(_task_results(spec.suite)))
    return spec, run


def test_a_finished_run_folder_is_harvested_into_its_record(repro, reproduce, tmp_path: Path) -> None:
    """finished() (collect's finder) writes the record of an older run folder, its time taken from the
    old timings.json when that names this very folder; afterwards the record alone says done."""
    plan, _ = repro
    records = tmp_path / "records"
    spec, run = _finished_run_folder(plan, tmp_path)
    (tmp_path / "timings.json").write_text(json.dumps(
        {spec.name: {"status": "done", "seconds": 77.0, "launch_seconds": 70.0, "run_dir": str(run)}}))
    found = reproduce.finished(spec, records)
    assert found.path == records / f"{spec.name}.json" and found.run_dir == run
    assert found.record["timing"] == {"seconds": 77.0, "launch_seconds": 70.0}
    assert json.loads(found.path.read_text()) == found.record
    import shutil

    shutil.rmtree(tmp_path / spec.name)  # a fresh clone: the record, no run folder
    st = reproduce.launch_state(spec, records)
    assert (st.state, st.run_dir, st.recorded) == ("done", None, True)


def test_a_record_says_done_without_any_run_folder(repro, reproduce, tmp_path: Path) -> None:
    plan, _ = repro
    records = tmp_path / "docs" / "results" / "launches"
    spec = _quick_spec(plan, tmp_path)
    path = reproduce.write_record(records, _record(reproduce, spec))
    assert path == records / f"{spec.name}.json" and not (tmp_path / spec.name).exists()
    st = reproduce.launch_state(spec, records)
    assert (st.state, st.run_dir, st.recorded, st.stale) == ("done", None, True, False)
    assert reproduce.state_text(st) == "done"
    found = reproduce.finished(spec, records)
    assert found == reproduce.Finished(json.loads(path.read_text()), path, None)
    # the other launches of the plan have no record: new
    assert reproduce.launch_state(_quick_spec(plan, tmp_path, index=1), records).state == "new"


def test_a_record_of_another_identity_is_stale(repro, reproduce, tmp_path: Path) -> None:
    """Changed sizes: the record is stale, the launch is new (and said so); once the new spec's run
    folder finishes, its record replaces the stale one."""
    plan, _ = repro
    from dataclasses import replace

    records = tmp_path / "records"
    old = _quick_spec(plan, tmp_path)
    reproduce.write_record(records, _record(reproduce, old))
    spec = _quick_spec(plan, tmp_path, replace(plan.QUICK, epochs=2))
    st = reproduce.launch_state(spec, records)
    assert (st.state, st.stale) == ("new", True)
    assert reproduce.state_text(st) == "new (its record is of an older spec: redone)"
    assert reproduce.finished(spec, records) is None
    run = tmp_path / spec.name / "20270101-000000"
    spec.dump(run / "spec.yaml")
    assert reproduce.launch_state(spec, records).state == "resume"
    (run / "results.json").write_text(json.dumps(_task_results(spec.suite, 0.7)))
    found = reproduce.finished(spec, records)
    assert found.record["identity"] == reproduce.spec_identity(spec)
    assert found.record["identity"]["training"]["epochs"] == 2
    assert reproduce.read_record(records, spec.name) == found.record
    assert reproduce.launch_state(old, records).stale  # the QUICK spec's record is gone now


def test_record_identity_is_json_and_survives_new_spec_defaults(repro, reproduce, tmp_path: Path) -> None:
    """The identity is stored in its JSON form and compared in that form; a field vptsearch added
    since the record was written (absent from it, default today) does not make the record stale."""
    plan, _ = repro
    records = tmp_path / "records"
    spec = _quick_spec(plan, tmp_path)
    identity = reproduce.spec_identity(spec)
    assert json.loads(json.dumps(identity)) == identity
    assert identity["suite"] == list(spec.suite)  # a tuple in the spec, a list in the record
    record = _record(reproduce, spec)
    del record["identity"]["search"]["warm_start"]  # written before search.warm_start existed
    reproduce.write_record(records, record)
    assert reproduce.launch_state(spec, records).state == "done"
    record["identity"]["search"]["no_such_field"] = 1  # a field vptsearch no longer knows: stale
    reproduce.write_record(records, record)
    assert reproduce.launch_state(spec, records).stale


def test_a_record_from_before_precise_bn_is_stale(repro, reproduce, tmp_path: Path) -> None:
    """Precise BN changed what every evaluation measures: a record written before
    training.precise_bn_images existed was evaluated with the running averages (as 0 today)."""
    plan, _ = repro
    records = tmp_path / "records"
    spec = _quick_spec(plan, tmp_path)
    record = _record(reproduce, spec)
    assert record["identity"]["training"]["precise_bn_images"] == spec.training.precise_bn_images > 0
    del record["identity"]["training"]["precise_bn_images"]
    reproduce.write_record(records, record)
    assert reproduce.launch_state(spec, records).stale


def test_a_run_folder_from_before_precise_bn_is_not_done(repro, reproduce, tmp_path: Path) -> None:
    """The same rule for a finished run folder: its spec.yaml, written before the key existed, was
    evaluated with the running averages, so the launch runs again (found by its first rerun: four
    such folders were harvested as done)."""
    import yaml

    plan, _ = repro
    records = tmp_path / "records"
    spec, run = _finished_run_folder(plan, tmp_path)
    assert reproduce.launch_state(spec, records).state == "done"
    raw = yaml.safe_load((run / "spec.yaml").read_text())
    del raw["training"]["precise_bn_images"]
    (run / "spec.yaml").write_text(yaml.safe_dump(raw))
    assert reproduce.launch_state(spec, records) == reproduce.State("new")


def test_records_are_byte_identical_from_the_same_inputs(repro, reproduce, tmp_path: Path) -> None:
    """Sorted keys and a fixed indent: the same inputs (in any key order, tuples or lists) give the
    same bytes, so a rewritten record makes no git diff; the write leaves no temp file."""
    plan, _ = repro
    spec = _quick_spec(plan, tmp_path)
    a = _record(reproduce, spec)
    res = _task_results(spec.suite)
    shuffled = {k: res[k] for k in reversed(list(res))}
    identity = dict(reversed(list(reproduce.spec_identity(spec).items())))
    b = reproduce.make_record(spec.name, identity, shuffled, seconds=12.5, launch_seconds=10.0,
                              finished="2027-01-01T00:00:00Z", machine=dict(reversed(list(MACHINE.items()))),
                              versions=VERSIONS)
    assert reproduce.record_text(a) == reproduce.record_text(b)
    one, two = tmp_path / "one", tmp_path / "two"
    first = reproduce.write_record(one, a).read_bytes()
    assert reproduce.write_record(two, b).read_bytes() == first
    assert reproduce.write_record(one, b).read_bytes() == first  # rewriting: same bytes
    assert sorted(p.name for p in one.iterdir()) == [f"{spec.name}.json"]
    rec = json.loads(first)
    assert set(rec) == {"format", "launch", "identity", "results", "timing", "finished", "machine",
                        "versions"}
    assert rec["launch"] == spec.name and rec["timing"]["seconds"] == 12.5 and rec["machine"]["cores"] == 2


def test_collect_reads_the_records(repro, reproduce, tmp_path: Path) -> None:
    """collect and the page from records alone (no run folder): cells, probe, timings, and the
    launches table pointing at the record."""
    plan, rep = repro
    records = tmp_path / "records"
    launches = [lc for lc in plan.plan(quick=True) if lc.study == "main"]
    specs = [_quick_spec(plan, tmp_path, index=i) for i, lc in enumerate(plan.plan(quick=True))
             if lc.study == "main"]
    done = {"repro_main_sup_vpt_deep": 0.6, "repro_main_sup_linear": 0.4}
    for spec in specs:
        if spec.name in done:
            results = _task_results(spec.suite, done[spec.name])
            reproduce.write_record(records, _record(reproduce, spec, results))
    res = rep.collect(launches, specs, lambda s: reproduce.finished(s, records))
    assert (res["finished"], res["total"]) == (2, len(launches))
    vpt = res["main"]["sup"]["vpt-deep"]["mini/digits"]
    assert vpt["mean"] == 0.6 and vpt["seeds"] == {"0": 0.59, "1": 0.61} and vpt["ensemble"] == 0.62
    assert res["probe"]["sup"]["mini/digits"] == {"val": 0.4, "test": 0.45}
    entry = next(x for x in res["launches"] if x["name"] == "repro_main_sup_linear")
    assert entry["record"] == str(records / "repro_main_sup_linear.json") and entry["run_dir"] is None
    assert rep.timings_of(res) == {n: {"status": "done", "seconds": 12.5} for n in done}
    text = rep.document(res, plan.QUICK, command="c", timings=rep.timings_of(res), full_cmd="X",
                        plot_names=[], plot_dir="results", records="docs/results/launches")
    import os

    assert f"| repro_main_sup_linear | main | yes | {os.path.relpath(entry['record'])} |" in text
    assert "| repro_main_sup_full | main | no | – |" in text
    assert "0.4 min for 2 launch(es)" in text
    assert "**Commit the records after every sitting**" in text
    assert "`docs/results/launches/<launch>.json`" in text


def test_plan_shows_done_from_records(repro, reproduce, tmp_path: Path, capsys) -> None:
    plan, _ = repro
    from vptsearch.data import data_root
    from vptsearch.spec import spec_from_dict

    run_dir, records = tmp_path / "runs", tmp_path / "records"
    lc = plan.plan(quick=True)[0]
    spec = spec_from_dict(plan.spec_dict(lc, plan.QUICK, run_dir=str(run_dir), tracking_uri="sqlite:///x.db",
                                         experiment="repro-quick", data_root=str(data_root(None))))
    reproduce.write_record(records, _record(reproduce, spec))
    assert reproduce.main(["--quick", "--plan", "--run-dir", str(run_dir), "--records", str(records)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"  1. {lc.name}") and lines[0].endswith(" done")
    assert all(line.endswith(" new") for line in lines[1:-1]) and len(lines) == 11
    assert f"records: {records}" in lines[-1] and not run_dir.exists()


def test_a_broken_record_stops_the_run_naming_the_file(repro, reproduce, tmp_path: Path) -> None:
    """A merge conflict in a record must not silently redo hours of work."""
    plan, _ = repro
    spec = _quick_spec(plan, tmp_path)
    path = reproduce.record_path(tmp_path, spec.name)
    path.write_text("<<<<<<< HEAD\n{}\n")
    with pytest.raises(SystemExit, match=str(path)):
        reproduce.launch_state(spec, tmp_path)


def test_convergence_check_lists_cells_under_the_probe_and_judges_longer_curves(repro) -> None:
    plan, rep = repro
    gap = importlib.import_module("_repro_probe_gap")
    res = {"main": {"sup": {"linear": {"mini/a": cell(0.80), "mini/b": cell(0.30)},
                            "vpt-deep": {"mini/a": cell(0.88), "mini/b": cell(0.15)}}},
           "probe": {"sup": {"mini/a": {"val": 0.8, "test": 0.85}, "mini/b": {"val": 0.2, "test": 0.20}}},
           "groups": GROUPS}
    under = {(c["row"], c["task"]): round(100 * c["gap"], 1) for c in gap.below_probe(res)}
    assert under == {("linear", "mini/a"): -5.0, ("vpt-deep", "mini/b"): -5.0}  # -2 or above: not listed
    md = gap.below_probe_md(res)
    assert "| sup | b | 20.0 | vpt-deep (-5.0) |" in md and "2 of 4 main-table cells" in md

    def run(epochs: int, last3: float) -> dict:
        return {"launch": "repro_main_sup_linear", "task": "mini/b", "epochs": epochs, "val_last3": last3,
                "train_acc_last": 0.5, "probe_val": 0.30, "probe_C": 10.0, "config": {"optim.base_lr": 2.0}}

    assert gap.verdict(run(15, 0.20), run(60, 0.29)) == "closes"
    assert gap.verdict(run(15, 0.20), run(60, 0.25)) == "narrows"  # half of the 10-point gap
    assert gap.verdict(run(15, 0.20), run(60, 0.22)) == "no"
    assert gap.verdict(run(15, 0.29), run(60, 0.30)) == "none to close"
    entries = {"a": run(15, 0.20), "b": run(60, 0.25), "lonely": {**run(15, 0.1), "task": "mini/c"}}
    table = gap.convergence_md(entries)
    assert "| repro_main_sup_linear | b | 2.0 | 10.0 | 30.0 | 20.0 (15 ep) | 25.0 (60 ep) |" in table
    assert "narrows" in table and "| c |" not in table  # a cell without its longer run is not shown
    assert gap.convergence_md({}) == "" and gap.head_only_md(entries) == ""
    head = {f"h{ep}": {"kind": "head_only", "launch": "repro_main_sup_linear", "task": "mini/b", "epochs": ep,
                       "lr": 0.25, "val_acc": v, "train_acc": 0.5, "probe_val": 0.3, "probe_C": 10.0,
                       "probe_val_C1e4": 0.32} for ep, v in ((15, 0.2), (300, 0.31))}
    entries |= head
    assert gap.convergence_md(entries) == table  # head-only entries are not trial cells
    assert ("| repro_main_sup_linear | b | 0.25 | 20.0 (50.0) | 31.0 (50.0) | 30.0 (10.0) | 32.0 |"
            in gap.head_only_md(entries))
    page = rep.document(_full_results(), plan.FULL, command="c", timings={}, full_cmd="X", plot_names=[],
                        plot_dir="results", convergence=entries)
    assert "## Convergence check: the main table against the probe" in page and table in page


def test_convergence_script_names_a_missing_record_or_task_and_a_too_short_budget(repro, capsys) -> None:
    conv = importlib.import_module("repro_convergence")
    with pytest.raises(SystemExit, match=r"no launch record .*repro_main_sup_nothing\.json"):
        conv.winner("repro_main_sup_nothing", "mini/digits")
    with pytest.raises(SystemExit, match="has no task 'mini/nope'"):
        conv.winner("repro_main_sup_linear", "mini/nope")
    with pytest.raises(SystemExit):
        conv.main(["--long", "15"])
    assert "--long 15: must exceed the reproduction's 15 epochs" in capsys.readouterr().err
    config, _, probe = conv.winner("repro_main_sup_linear", "mini/digits")  # a committed record
    assert config["method"] == "linear" and "optim.base_lr" in config and probe["val_acc"] > 0.5
