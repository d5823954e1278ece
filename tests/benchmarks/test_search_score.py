"""The search-efficiency benchmark's noise-aware score on hand-made grids (no training, no Ray)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "_search_score.py"
_spec = importlib.util.spec_from_file_location("_search_score", _PATH)
assert _spec is not None and _spec.loader is not None
score = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(score)

# three configs x two seeds: "a" is best on average, "b" has the luckiest single seed
CURVES = {
    "a": [[0.3, 0.6, 0.80], [0.4, 0.7, 0.78]],
    "b": [[0.5, 0.6, 0.84], [0.5, 0.6, 0.70]],
    "c": [[0.1, 0.2, 0.40], [0.1, 0.3, 0.42]],
}
DONE = {k: [True, True] for k in CURVES}


def test_truth_is_seed_averaged_with_a_pooled_standard_error():
    t = score.task_truth(CURVES, DONE)
    assert t["quality"] == pytest.approx({"a": 0.79, "b": 0.77, "c": 0.41})
    assert t["best_key"] == "a"  # not "b", whose best seed (0.84) is the grid's single best run
    pooled = (0.0002 + 0.0098 + 0.0002) / 3  # sample variances of the finals per config
    assert t["standard_error"] == pytest.approx(math.sqrt(pooled / 2))
    assert t["configs_found"] == 2  # b is within one SE (0.0408) of a; c is not
    assert t["grid_trial_epochs"] == 9


def test_regret_and_found_follow_the_selection():
    t = score.task_truth(CURVES, DONE)
    points = [(3, None), (6, "c"), (9, "b"), (12, "a")]
    regrets = score.regret_curve(points, t)
    assert regrets == [(3, None), (6, pytest.approx(0.38)), (9, pytest.approx(0.02)), (12, 0.0)]
    assert score.epochs_to_found(regrets, t["standard_error"]) == 9
    assert score.epochs_to_found(regrets, 0.01) == 12
    assert score.epochs_to_found(regrets[:2], 0.01) is None
    assert score.regret_at(regrets, 7) == pytest.approx(0.38) and score.regret_at(regrets, 2) is None


def test_trace_selects_by_what_the_search_saw():
    def status(result, max_epochs):
        return "completed" if result["epoch"] == max_epochs else "pruned"

    events = [
        ("result", "T", "1", "c", {"epoch": 1, "val_acc": 0.1}),
        ("complete", "T", "1", "c", {"epoch": 1, "val_acc": 0.1}),  # pruned: never selected
        ("result", "T", "2", "b", {}), ("result", "T", "2", "b", {}),
        ("result", "U", "9", "a", {}),  # another task's epochs are not counted
        ("complete", "T", "2", "b", {"epoch": 2, "val_acc": 0.84}),
        ("result", "T", "3", "a", {}), ("result", "T", "3", "a", {}),
        ("complete", "T", "3", "a", {"epoch": 2, "val_acc": 0.80}),  # truly better, looked worse
    ]
    tr = score.trace(events, "T", 2, status)
    assert tr["points"] == [(1, None), (3, "b"), (5, "b")]
    assert tr["epochs"] == 5 and tr["selected"] == "b"
    assert tr["statuses"] == {"pruned": 1, "completed": 2}


def test_rung_correlations_and_spearman():
    rho = score.rung_correlations(CURVES, 3)
    assert rho[3] == 1.0  # the final epoch ranks itself
    assert rho[1] == pytest.approx(0.5)  # mean epoch-1 (0.35, 0.5, 0.1) vs final (0.79, 0.77, 0.41)
    assert score.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert score.spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert score.spearman([1, 1, 1], [1, 2, 3]) is None


def test_spread_sorts_never_last():
    assert score.spread([0.2, None, 0.1]) == {"median": 0.2, "min": 0.1, "max": None}
    assert score.spread([]) == {"median": None, "min": None, "max": None}
