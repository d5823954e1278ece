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
