"""The reproduction pipeline (pipelines/reproduce.py): table and claim logic on synthetic results
(fast), the launch plan's specs (validated by the real spec parser), and a slow ``--quick`` run."""

from __future__ import annotations

import importlib
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


def cell(mean: float, std: float = 0.01, tuned: float = 1.0) -> dict:
    return {"mean": mean, "std": std, "tuned_percent": tuned}


def table(**rows: tuple[float, float, float]) -> dict:
    """variant -> (acc on a, b, c)."""
    return {v.replace("_", "-"): {t: cell(a) for t, a in zip(GROUPS, accs, strict=True)}
            for v, accs in rows.items()}


def results(main: dict, length: dict | None = None, size: dict | None = None) -> dict:
    return {"main": main, "length": length or {}, "frozen": {}, "size": size or {}, "groups": GROUPS,
            "launches": [], "total": 1, "finished": 1}


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


def test_missing_cells_give_no_mean(repro) -> None:
    _, rep = repro
    t = table(full=(0.5, 0.4, 0.3))
    del t["full"]["mini/c"]
    row = rep.main_table(t, list(GROUPS), GROUPS)[0]
    assert row["mean"] is None and row["groups"]["structured"] is None and row["groups"]["natural"] == 0.5


def _spt_rows(vpt: tuple, spt: tuple) -> dict:
    rows = {"vpt_deep": vpt, "linear": (0.1, 0.1, 0.1)}
    rows.update({f"{s}_deep": spt for s in ("spt_mean", "spt_max", "spt_sample", "spt_kmeans")})
    return table(**rows)


def _by_id(cs: list[dict]) -> dict:
    return {c["id"]: c for c in cs}


def test_spt_claims_true_and_false(repro) -> None:
    _, rep = repro
    main = {"sup": _spt_rows((0.5, 0.5, 0.5), (0.52, 0.5, 0.5)),
            "mae": _spt_rows((0.4, 0.4, 0.4), (0.5, 0.5, 0.5))}
    c = _by_id(rep.claims(results(main)))
    assert c["spt_beats_vpt"]["verdict"] == "TRUE"
    assert c["spt_gain_larger_on_mae"]["verdict"] == "TRUE"
    assert c["spt_beats_vpt"]["values"]["gain_mae"] == pytest.approx(0.1)
    # SPT worse on one backbone -> FALSE; MAE gain smaller -> FALSE
    main["mae"] = _spt_rows((0.5, 0.5, 0.5), (0.49, 0.5, 0.5))
    c = _by_id(rep.claims(results(main)))
    assert c["spt_beats_vpt"]["verdict"] == "FALSE"
    assert c["spt_gain_larger_on_mae"]["verdict"] == "FALSE"
    assert "vs VPT-deep random 50.0" in c["spt_beats_vpt"]["numbers"]


def test_structured_claim_uses_only_structured_tasks(repro) -> None:
    _, rep = repro
    # VPT loses badly on the natural task but wins on the structured ones: TRUE
    main = {"sup": table(vpt_deep=(0.1, 0.6, 0.6), linear=(0.9, 0.5, 0.5))}
    c = _by_id(rep.claims(results(main)))["vpt_beats_linear_structured"]
    assert c["verdict"] == "TRUE" and "higher on 2" in c["numbers"]
    main = {"sup": table(vpt_deep=(0.9, 0.4, 0.6), linear=(0.1, 0.5, 0.6))}
    assert _by_id(rep.claims(results(main)))["vpt_beats_linear_structured"]["verdict"] == "FALSE"


def test_length_sensitivity_claim(repro) -> None:
    _, rep = repro
    flat = {"mini/a": {1: 0.50, 5: 0.52, 50: 0.51}, "mini/b": {1: 0.3, 5: 0.3, 50: 0.32}}
    steep = {"mini/a": {1: 0.20, 5: 0.40, 50: 0.60}, "mini/b": {1: 0.1, 5: 0.3, 50: 0.2}}
    s = rep.sensitivity(steep)
    assert s["range"] == pytest.approx(0.3)  # mean of 0.4 and 0.2
    c = _by_id(rep.claims(results({}, length={"sup": {"random": steep, "spt-kmeans": flat}})))
    assert c["spt_less_length_sensitive"]["verdict"] == "TRUE"
    c = _by_id(rep.claims(results({}, length={"sup": {"random": flat, "spt-kmeans": steep}})))
    assert c["spt_less_length_sensitive"]["verdict"] == "FALSE"
    assert rep.sensitivity({"mini/a": {1: 0.5}})["range"] is None  # one length: no sensitivity


def test_train_size_claim_needs_a_growing_gap(repro) -> None:
    _, rep = repro
    tasks = ("repro/mnist_n100", "repro/mnist_n800", "repro/mnist_nall")

    def size(full: tuple, vpt: tuple) -> dict:
        return {"full": {t: cell(a) for t, a in zip(tasks, full, strict=True)},
                "vpt-deep": {t: cell(a) for t, a in zip(tasks, vpt, strict=True)}}

    grow = rep.claims(results({}, size=size((0.3, 0.6, 0.9), (0.5, 0.6, 0.7))))
    grow = _by_id(grow)["full_gains_with_data"]
    assert grow["verdict"] == "TRUE"
    assert grow["values"] == {"gap_n100": pytest.approx(-0.2), "gap_n800": pytest.approx(0.0),
                              "gap_n3800": pytest.approx(0.2)}
    dip = _by_id(rep.claims(results({}, size=size((0.3, 0.8, 0.9), (0.5, 0.6, 0.8)))))["full_gains_with_data"]
    assert dip["verdict"] == "FALSE"  # gap -0.2, +0.2, +0.1: shrinks at the last step


def test_missing_launches_read_na(repro) -> None:
    _, rep = repro
    cs = rep.claims(results({"sup": table(full=(0.5, 0.5, 0.5))}))
    assert {c["verdict"] for c in cs} == {"n/a"}


def test_document_marks_partial_runs(repro) -> None:
    plan, rep = repro
    res = results({"sup": table(full=(0.5, 0.4, 0.3), vpt_deep=(0.6, 0.4, 0.35))})
    res.update(total=30, finished=2)
    text = rep.document(res, plan.FULL, command="python pipelines/reproduce.py", timings={}, full_cmd="X",
                        plot_names=[], plot_dir="results")
    assert "**Partial: 2 of 30 launches finished.**" in text
    assert "`python pipelines/reproduce.py`" in text and "## Claims" in text


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
    for lc in launches:
        spec = spec_from_dict(plan.spec_dict(lc, plan.FULL, run_dir=str(tmp_path), tracking_uri="sqlite:///x.db",
                                             experiment="repro"))
        assert spec.protocol.final_seeds == (0, 1, 2) and spec.experiment == "repro"
        assert spec.search.algorithm == "grid"
        if lc.study == "frozen":
            assert spec.params["prompt.frozen"].values == (True,)
        if lc.study == "length":
            assert spec.params["prompt.length"].values == plan.LENGTHS
            assert spec.search.trials_per_task == len(plan.LENGTHS)


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
    assert (tmp_path / "results" / "train_size_sweep.png").is_file()
    # a second run finds every launch finished and only rebuilds the report
    again = subprocess.run(
        [sys.executable, str(PIPELINES / "reproduce.py"), "--quick", "--run-dir", str(tmp_path / "runs"),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 10, again.stdout[-2000:]


def _full_results() -> dict:
    size_tasks = ("repro/mnist_n100", "repro/mnist_n800", "repro/mnist_nall")
    res = results(
        {"sup": _spt_rows((0.5, 0.5, 0.5), (0.6, 0.5, 0.5)),
         "mae": _spt_rows((0.4, 0.4, 0.4), (0.6, 0.5, 0.5))},
        length={"sup": {"random": {"mini/a": {1: 0.2, 50: 0.6}},
                        "spt-kmeans": {"mini/a": {1: 0.5, 50: 0.55}}}},
        size={"full": {t: cell(a) for t, a in zip(size_tasks, (0.3, 0.6, 0.9), strict=True)},
              "vpt-deep": {t: cell(a) for t, a in zip(size_tasks, (0.5, 0.6, 0.7), strict=True)}},
    )
    res["frozen"] = {"sup": {"random": {"mini/a": cell(0.3)}}}
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
    assert "- **TRUE** — SPT-deep > random-init VPT-deep on average" in text
    assert "| random, frozen after init | 30.0 ± 1.0 |" in text
    assert "![train_size_sweep.png](results/train_size_sweep.png)" in text
    assert "| vpt-deep | 50.0 ± 1.0 | 60.0 ± 1.0 | 70.0 ± 1.0 |" in text  # the train-size table


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
    assert "- **TRUE** — SPT-deep > random-init VPT-deep on average" in text
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


def test_finished_launches_are_found_and_skipped(repro, tmp_path: Path) -> None:
    """Incremental runs: same spec + results.json -> done; same spec, no results -> resume;
    changed sizes -> new (the old folder is kept); a new spec section alone changes nothing."""
    plan, _ = repro
    reproduce = importlib.import_module("reproduce")
    from vptsearch.spec import spec_from_dict

    lc = plan.plan(quick=True)[0]

    def spec(sizes):
        return spec_from_dict(plan.spec_dict(lc, sizes, run_dir=str(tmp_path), tracking_uri="sqlite:///x.db",
                                             experiment="repro-quick", data_root=str(tmp_path)))

    assert reproduce.launch_state(spec(plan.QUICK)) == ("new", None)
    run = tmp_path / lc.name / "20260101-000000"
    spec(plan.QUICK).dump(run / "spec.yaml")
    assert reproduce.launch_state(spec(plan.QUICK)) == ("resume", run)
    (run / "results.json").write_text("{}")
    assert reproduce.launch_state(spec(plan.QUICK)) == ("done", run)
    assert reproduce.finished_run_dir(spec(plan.QUICK)) == run
    from dataclasses import replace

    assert reproduce.launch_state(spec(replace(plan.QUICK, epochs=2))) == ("new", None)
    saved = spec(plan.QUICK).to_dict()
    assert reproduce._identity({**saved, "tracking": {"uri": "elsewhere"}}) == reproduce._identity(saved)
