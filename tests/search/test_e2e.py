"""End to end through the real stack: local Ray Tune, Optuna + ASHA, sqlite MLflow, bundles, CLI.

One launch (2 mini tasks x 4 trials x 3 epochs, 2 final seeds, tiny local ViT) is shared by the
checks below; the lr choice includes 1e30 so some trial diverges and the search must go on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

from vptsearch.cli import main
from vptsearch.spec import spec_from_dict

from .conftest import TASKS, TINY_KWARGS


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tiny_backbone_file, mini_root):
    import vptsearch.search as search

    tmp = tmp_path_factory.mktemp("launch")
    raw = _raw(tmp, tiny_backbone_file, mini_root)
    spec = spec_from_dict(raw)
    lines: list[str] = []
    summary = search.launch(spec, dashboard=False, say=lines.append)
    return spec, summary, tmp, lines


def _raw(tmp: Path, backbone: Path, root: Path) -> dict:
    bb = {"name": str(backbone), "architecture": "vit_tiny_patch16_224", "model_kwargs": TINY_KWARGS}
    return {
        "name": "smoke", "suite": list(TASKS), "data_root": str(root), "run_dir": str(tmp / "runs"),
        "backbone": bb,
        "params": {"prompt.length": {"choice": [1, 4]}, "prompt.init": {"choice": ["random", "spt-mean"]},
                   "optim.base_lr": {"choice": [1.0, 5.0, 1.0e30]}, "optim.weight_decay": 0.0},
        "search": {"algorithm": "tpe", "trials_per_task": 4, "max_concurrent": 2, "n_startup_trials": 4},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "training": {"epochs": 3, "warmup_epochs": 1, "batch_size": 64},
        "protocol": {"final_seeds": [0, 1]},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "artifact_location": str(tmp / "mlart")},
        "export": {"dir": str(tmp / "exports")},
    }  # fmt: skip


def _runs(summary, kind: str | None = None):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(summary.tracking_uri)
    exp = c.get_experiment_by_name(summary.experiment)
    flt = f"tags.`vptsearch.kind` = '{kind}'" if kind else ""
    return c, c.search_runs([exp.experiment_id], filter_string=flt, max_results=1000)


def test_summary_and_printed_urls(launched) -> None:
    _, summary, _, lines = launched
    assert [r["task"] for r in summary.rows] == TASKS
    for r in summary.rows:
        assert r["completed"] >= 1 and 0.0 <= r["test_mean"] <= 1.0 and r["p"] in (1, 4)
    text = "\n".join(lines)
    assert "MLflow:" in text and summary.tracking_uri in text and "| mini/digits |" in text


def test_mlflow_parent_and_nested_runs(launched) -> None:
    _, summary, _, _ = launched
    c, tasks = _runs(summary, "task")
    assert sorted(r.data.tags["vptsearch.task"] for r in tasks) == TASKS
    _, trials = _runs(summary, "trial")
    statuses = {r.data.tags["vptsearch.status"] for r in trials}
    assert statuses <= {"completed", "pruned", "diverged"} and {"completed", "pruned", "diverged"} <= statuses
    for parent in tasks:
        tags, m = parent.data.tags, parent.data.metrics
        assert parent.info.status == "FINISHED"
        assert tags["best.prompt_length"] in ("1", "4") and tags["best.init"] in ("random", "spt-mean")
        assert parent.data.params["best.init"] == tags["best.init"]
        note = tags["mlflow.note.content"]  # the run page's description: the winner and its head
        assert "**Winner**" in note and ", init probe, lr 0.1 × the base lr's, refit probe" in note
        assert {"best_val_acc", "test_mean", "test_std", "tuned_percent"} <= set(m)
        kids = [r for r in trials if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        search = [r for r in kids if r.data.tags["vptsearch.phase"] == "search"]
        final = [r for r in kids if r.data.tags["vptsearch.phase"] == "final"]
        assert len(search) == 4 and len(final) == 2
        assert sorted(r.data.tags["vptsearch.seed"] for r in final) == ["0", "1"]
        assert all("test_acc" in r.data.metrics for r in final)
        # the head's recipe, though the space leaves it to the defaults, and what its fits cost
        for r in kids:
            assert r.data.params["head.init"] == "probe" and r.data.params["head.refit"] == "probe"
            assert float(r.data.params["optim.head_lr_scale"]) == 0.1
            assert r.data.params["prompt.length"] in ("1", "4")  # the space's own keys still win
        assert all(r.data.metrics["head_init_seconds"] >= 0 for r in kids)
        assert all(r.data.metrics["head_refit_seconds"] > 0 for r in final)
        for r in search:  # per-epoch history, as long as the trial ran
            hist = c.get_metric_history(r.info.run_id, "val_acc")
            assert len(hist) >= 1 and [h.step for h in sorted(hist, key=lambda h: h.step)] == list(
                range(1, len(hist) + 1)
            )
            if r.data.tags["vptsearch.status"] == "completed":
                assert len(hist) == 3
    assert len({r.data.tags["vptsearch.trial_id"] for r in trials}) == len(trials)  # no duplicates
    _, launch_runs = _runs(summary, "launch")
    (lr,) = launch_runs
    names = {a.path for a in c.list_artifacts(lr.info.run_id)}
    assert {
        "summary.parquet",
        "summary.md",
        "summary.html",
        "acc_vs_prompt_length.png",
        "random_vs_spt.png",
        "spec.yaml",
    } <= names


def test_optuna_studies_hold_pruned_trials_at_their_fidelity(launched) -> None:
    from vptsearch.search._searcher import load_studies

    _, summary, _, _ = launched
    studies = load_studies(summary.run_dir / "optuna.journal")
    assert sorted(studies) == TASKS
    pruned = 0
    for study in studies.values():
        for t in study.trials:
            last_step = max(t.intermediate_values, default=0)
            if t.user_attrs["status"] == "completed":
                assert t.state == TrialState.COMPLETE and last_step == 3
            elif t.user_attrs["status"] == "duplicate":  # told its known value, never trained again
                assert t.state == TrialState.COMPLETE and not t.intermediate_values
            elif t.user_attrs["status"] == "duplicate of a running trial":  # asked again at once
                assert t.state == TrialState.FAIL and not t.intermediate_values
            else:
                assert t.state == TrialState.PRUNED and t.user_attrs["status"] in ("pruned", "diverged")
                pruned += t.user_attrs["status"] == "pruned"
                assert last_step < 3 or t.user_attrs["status"] == "diverged"
    assert pruned >= 1


def test_bundles_reload_and_reproduce_test_accuracy(launched, mini_root, tmp_path, capsys) -> None:
    from vptsearch.data import load_split
    from vptsearch.search import evaluate_bundle

    _, summary, _, _ = launched
    assert sorted(summary.bundles) == TASKS
    for task, d in summary.bundles.items():
        meta = json.loads((d / "bundle.json").read_text())
        assert (
            meta["task"] == task
            and meta["backbone"]["sha256"]
            and len(meta["class_names"]) == meta["num_classes"]
        )
        assert meta["method"] == "vpt" and meta["prompt"]["length"] in (1, 4) and meta["seeds"] == [0, 1]
        w = load_file(str(d / "prompts.safetensors"))
        assert w["prompt_tokens"].shape == (3, meta["prompt"]["length"], 32)
        assert w["head.weight"].shape == (meta["num_classes"], 32)
        seed = meta["exported_seed"]
        acc = evaluate_bundle(d, root=str(mini_root), seed=seed)
        assert acc == pytest.approx(meta["test_accuracy"], abs=1e-9)

    # predict from the CLI on two test images of digits
    from PIL import Image

    images, _ = load_split("mini/digits", "test", mini_root)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(p)
        paths.append(str(p))
    bundle = summary.bundles["mini/digits"]
    # predict sees exactly the tensors the model was tested on (same resize, crop, normalisation)
    from vptsearch.data import make_loader
    from vptsearch.search._bundle import preprocess

    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["preprocessing"] == "vtab"
    norm = {"image_size": meta["image_size"], "mean": meta["mean"], "std": meta["std"]}
    loader = make_loader("mini/digits", "test", root=mini_root, batch_size=2, train=False, **norm)
    x_test, _ = next(iter(loader))
    assert torch.allclose(preprocess(paths, meta), x_test, atol=1e-5)
    assert main(["predict", "--bundle", str(bundle), *paths]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith(paths[0])

    # a different backbone file is refused
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)  # every seed's file
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["backbone"]["sha256"] = "0" * 64
    (bad / "bundle.json").write_text(json.dumps(meta))
    assert main(["predict", "--bundle", str(bad), paths[0]]) == 2
    assert "sha256" in capsys.readouterr().err


def test_report_and_reexport_cli(launched, tmp_path, capsys) -> None:
    _, summary, _, _ = launched
    assert main(["report", "--run-dir", str(summary.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "mini/digits" in out and "best val per init strategy" in out
    assert "ensemble test" in out and "probe val / test" in out
    where = json.loads((summary.run_dir / "results.json").read_text())["bundles_dir"]
    assert f"bundles: {where}" in out and where == str(next(iter(summary.bundles.values())).parent)
    assert summary.problems() == []  # every task has a result: `vptsearch launch` exits 0
    assert main(["export", "--run-dir", str(summary.run_dir), "--out", str(tmp_path / "re")]) == 0
    for d in summary.bundles.values():
        again = tmp_path / "re" / d.parent.name / d.name
        a, b = load_file(str(d / "prompts.safetensors")), load_file(str(again / "prompts.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_quickstart_space_smoke_with_shipped_backbone(tmp_path, monkeypatch) -> None:
    """The shipped quickstart (mini_deep.yaml, vptsearch-tiny-mae) with --smoke: builds the mini
    suite into an empty data root and runs every phase."""
    space = Path(__file__).parents[2] / "search_spaces" / "mini_deep.yaml"
    monkeypatch.setenv("VPTSEARCH_DATA", str(tmp_path / "shards"))
    monkeypatch.chdir(tmp_path)
    assert main(["launch", "--space", str(space), "--smoke", "--no-dashboard"]) == 0
    bundles = sorted((tmp_path / "exports" / "mini_deep" / "latest").iterdir())
    assert [b.name for b in bundles] == ["mini__digits", "mini__dsprites_loc", "mini__textures"]
    meta = json.loads((bundles[0] / "bundle.json").read_text())
    assert meta["backbone"]["name"] == "vptsearch-tiny-mae" and meta["backbone"]["source"] == "shipped"
    assert (tmp_path / "mlflow.db").is_file()
