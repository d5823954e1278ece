"""The probe reference: protocol, numerical equivalence with sklearn, cache, CLI, report, MLflow name."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def sup():
    from vptsearch.models import load_backbone

    return load_backbone("vptsearch-tiny-sup")


def test_probe_matches_sklearn_on_the_same_features_and_is_cached(sup, mini_root) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from vptsearch.data import make_loader
    from vptsearch.models import build_model
    from vptsearch.probe import probe_task

    r = probe_task(sup, "mini/digits", root=mini_root, c_grid=(0.1, 1.0))
    assert not r["cached"] and r["val_acc"] >= 0.7 and r["test_acc"] >= 0.7  # chance: 0.1

    model = build_model(sup, 10, method="linear").eval()

    def feats(split):
        loader = make_loader("mini/digits", split, root=mini_root, batch_size=128, image_size=32,
                             mean=sup.mean, std=sup.std, train=False)  # fmt: skip
        import numpy as np

        pairs = [(model.forward_features(x).detach().numpy(), y.numpy()) for x, y in loader]
        return np.concatenate([f for f, _ in pairs]), np.concatenate([y for _, y in pairs])

    def acc(fit, score, c):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(*feats(fit))
        return clf.score(*feats(score))

    by_c = {c: acc("train800", "val200", c) for c in (0.1, 1.0)}
    assert r["val_acc_by_C"] == {str(c): pytest.approx(a, abs=1e-9) for c, a in by_c.items()}
    assert r["C"] == max(by_c, key=lambda c: (by_c[c], -c))
    assert r["test_acc"] == pytest.approx(acc("train800val200", "test", r["C"]), abs=1e-9)

    again = probe_task(sup, "mini/digits", root=mini_root, c_grid=(0.1, 1.0))
    assert again["cached"] and again["test_acc"] == r["test_acc"]
    assert list((mini_root / "mini" / "digits" / "probes").glob("*.json"))


def test_cli_prints_the_probe_and_bad_input_is_one_line(mini_root, capsys) -> None:
    from vptsearch.cli import main

    args = ["backbones", "probe", "vptsearch-tiny-sup", "--task", "mini/digits", "--root", str(mini_root)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mini/digits: probe val" in out and "test" in out and "%" in out
    assert main([*args[:3], "--task", "mini/digitz", "--root", str(mini_root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mini/digitz" in err and "did you mean" in err
    assert main(["backbones", "probe", "vptsearch-tiny-sop", "--task", "mini/digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vptsearch-tiny-sop" in err


def test_report_column_and_task_run_name_carry_the_probe() -> None:
    from vptsearch.search._report import markdown_table
    from vptsearch.search._tracking import task_outcome

    row = {"task": "mini/digits", "group": "natural", "method": "vpt", "p": 10, "init": "random",
           "tuned_percent": 1.0, "val_acc": 0.8, "test_mean": 0.75, "test_std": 0.01,
           "probe_val": 0.85, "probe_test": 0.8934}  # fmt: skip
    table = markdown_table([row])
    assert "probe val / test" in table and "85.00 / 89.34" in table
    assert "| - |" in markdown_table([{**row, "probe_val": None, "probe_test": None}])
    res = {"best": {"config": {"method": "vpt", "prompt.length": 10, "prompt.init": "spt-mean"},
                    "trial_id": "t1", "val_acc": 0.8},
           "test_accs": {"0": 0.74, "1": 0.76}, "test_mean": 0.75, "test_std": 0.01,
           "probe": {"C": 1.0, "val_acc": 0.85, "test_acc": 0.8934}}  # fmt: skip
    name, note = task_outcome("mini/digits", res)
    assert name == "mini/digits · vpt p=10 spt-mean · test 75.0 ± 1.0 · probe 89.3"
    assert "Probe" in note and "89.3" in note and "t1" in note
    assert task_outcome("mini/digits", {"best": None})[0] == "mini/digits · no completed trial"


def _task_result(test_accs: dict[int, float], probe_test: float | None):
    from vptsearch.search._protocol import mean_std
    from vptsearch.search._results import TaskResult

    mean, std = mean_std(list(test_accs.values()))
    probe = None if probe_test is None else {"C": 1.0, "val_acc": 0.5, "test_acc": probe_test}
    return TaskResult(
        group="structured",
        best=None,
        per_init={},
        per_method={},
        counts={},
        seeds=list(test_accs),
        test_accs=test_accs,
        test_mean=mean,
        test_std=std,
        exported_seed=None,
        final={},
        probe=probe,
        probed=True,
    )


def test_gap_to_probe_is_the_test_mean_minus_the_probe_in_points() -> None:
    from vptsearch.search._report import markdown_table

    res = _task_result({0: 0.30, 1: 0.32}, 0.352)
    assert res.gap_to_probe() == pytest.approx(-4.2)
    row = res.row("mini/dsprites_loc")
    assert row["gap_to_probe"] == pytest.approx(-4.2) and "| -4.20 |" in markdown_table([row])
    assert _task_result({0: 0.9}, None).gap_to_probe() is None  # probe skipped
    assert _task_result({}, 0.35).gap_to_probe() is None  # no final seed completed


def test_the_launch_names_every_task_far_under_its_probe_with_the_key_to_change() -> None:
    from vptsearch.search._report import probe_gap_warning

    rows = [
        {"task": "a/x", "gap_to_probe": -4.2},
        {"task": "a/y", "gap_to_probe": -1.9},
        {"task": "a/z", "gap_to_probe": None},
        {"task": "a/w", "gap_to_probe": -2.5},
    ]
    old = probe_gap_warning(rows, {"a/x": {"head.init": "random"}, "a/w": {"head.init": "random"}})
    assert old is not None and "\n" not in old
    assert "a/x (-4.2)" in old and "a/w (-2.5)" in old and "a/y" not in old and "a/z" not in old
    assert "params.head.init: probe" in old
    fitted = probe_gap_warning(rows, {"a/x": {}, "a/w": {"head.init": "probe"}})  # {}: the default
    assert fitted is not None and "head.init: probe" not in fitted
    assert "prompt.init over spt-*" in fitted and "linear method" in fitted and "standardize" not in fitted
    with_bn = probe_gap_warning(rows, {"a/x": {"head.norm": "batchnorm"}, "a/w": {}})
    assert with_bn is not None and "set params.head.norm: standardize" in with_bn
    assert "optim.head_lr_scale over [0.1, 1]" in fitted  # the default multiple, 0.1
    assert "head.refit" not in fitted  # refitted by default
    unrefitted = probe_gap_warning(rows, {"a/x": {"head.refit": "none"}, "a/w": {}})
    assert "set params.head.refit: probe" in unrefitted
    fast = probe_gap_warning(rows, {"a/x": {"optim.head_lr_scale": 1.0}, "a/w": {"optim.head_lr_scale": 1}})
    assert fast is not None and "head_lr_scale" not in fast and "prompt.init over spt-*" in fast
    assert "method full" not in fast
    full = probe_gap_warning(rows, {"a/x": {"method": "full", "head.init": "probe"}, "a/w": {}})
    assert full is not None and "for method full set params.head.init: random" in full
    # full fine-tuning's own default head is random: no advice to fit it, none to unfit it
    full_random = probe_gap_warning(rows, {"a/x": {"method": "full"}, "a/w": {"method": "full"}})
    assert full_random is not None and "head.init" not in full_random and "lower optim.base_lr" in full_random
    assert probe_gap_warning(rows[1:3], {}) is None


def test_an_init_without_a_completed_trial_is_labelled_on_the_plot(tmp_path, monkeypatch) -> None:
    from vptsearch.search import _report

    def trial(task: str, init: str, status: str, val: float | None) -> dict:
        return {
            "task": task,
            "status": status,
            "val_acc": val,
            "config": {"method": "vpt", "prompt.init": init},
        }

    trials = [
        trial("a/x", "random", "completed", 0.8),
        trial("a/x", "spt-mean", "pruned", 0.5),
        trial("a/y", "random", "completed", 0.7),
        trial("a/y", "spt-mean", "diverged", 0.0),
        trial("a/y", "spt-mean", "pruned", 0.1),
    ]
    assert _report.missing_bar_label(trials, "a/x", "spt-mean") == "all pruned"
    assert _report.missing_bar_label(trials, "a/y", "spt-mean") == "none completed"
    assert _report.missing_bar_label(trials, "a/x", "spt-kmeans") == "not tried"
    import matplotlib.axes

    texts: list[str] = []
    real = matplotlib.axes.Axes.text
    monkeypatch.setattr(
        matplotlib.axes.Axes, "text", lambda ax, x, y, s, **kw: texts.append(s) or real(ax, x, y, s, **kw)
    )
    paths = _report.write_plots(trials, tmp_path)
    assert [p.name for p in paths] == ["acc_vs_prompt_length.png", "random_vs_spt.png"]
    assert sorted(texts) == ["all pruned", "none completed"]  # the two missing spt-mean bars, labelled
