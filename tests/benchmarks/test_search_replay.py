"""The search-efficiency benchmark's replayed methods on a hand-made grid (real Tuner, no training).

What is checked is what makes the comparison fair: screening pays only for the epochs it trains,
the leave-one-task-out warm start starts from the *other* tasks' best configurations and never
from the held-out task's own, and every method selects something on every task.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from vptsearch.search._searcher import trial_status

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
TASKS = ["mini/digits", "mini/textures"]
EPOCHS, GRACE = 4, 1


@pytest.fixture(scope="module")
def bench():
    path = BENCH / "bench_search_efficiency.py"
    spec = importlib.util.spec_from_file_location("bench_search_efficiency", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path, so _search_replay imports
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules["_search_replay"])
    return module


def small_grid(bench):
    grid = {k: list(v[:1]) for k, v in bench.GRID.items()}
    grid["prompt.length"] = list(bench.GRID["prompt.length"][:2])
    grid["optim.base_lr"] = list(bench.GRID["optim.base_lr"][:3])
    return grid  # 2 x 3 = 6 configurations


def synthetic(bench, grid):
    """Per task, a clear best configuration that differs between the tasks; two seeds each."""
    curves, completed, best = {}, {}, {}
    for i, task in enumerate(TASKS):
        configs = bench.grid_configs(grid)
        for j, c in enumerate(configs):
            final = 0.9 if j == (i * 4) % len(configs) else 0.3 + 0.05 * j
            key = task + "#" + bench.config_key(c)
            curves[key] = [[final * (e + 1) / EPOCHS + 0.01 * s for e in range(EPOCHS)] for s in (0, 1)]
            completed[key] = [True, True]
            if final == 0.9:
                best[task] = bench.config_key(c)
    return curves, completed, best


@pytest.fixture(scope="module")
def replays(bench, local_ray, tmp_path_factory):
    grid = small_grid(bench)
    curves, completed, best = synthetic(bench, grid)
    recipe = {**bench.RECIPE, "epochs": EPOCHS}

    def spec_for(tasks, *, method, seed, warm_start):
        return bench.make_spec(tasks, grid, recipe, None, method=method, seed=seed, trials=4, grace=GRACE,
                               reduction=2, warm_start=warm_start)

    replay = bench.Replay(curves, completed, bench.PARAM_KEYS, spec_for, tmp_path_factory.mktemp("replay"))
    methods = ("screen_topk", "tpe_asha_warm_loto", "random_asha")
    return {m: replay.run(m, TASKS, 0, GRACE) for m in methods}, best, replay


def _per_trial(events, task):
    out: dict[str, list] = {}
    for kind, t, tid, key, result in events:
        if t == task and kind == "result":
            out.setdefault(tid, []).append((key, int(result["epoch"])))
    return out


def test_screening_pays_only_for_the_epochs_it_trains(bench, replays):
    runs, _best, _ = replays
    for task in TASKS:
        trials = _per_trial(runs["screen_topk"][task], task)
        firsts = [epochs for epochs in trials.values() if epochs[0][1] == 1]
        continued = [epochs for epochs in trials.values() if epochs[0][1] == GRACE + 1]
        assert len(firsts) == 4 and all(len(e) == GRACE for e in firsts)  # the screening rung only
        top = min(sys.modules['_search_replay'].SCREEN_TOP_K, len(firsts))
        assert len(continued) == top and all([n for _k, n in e] == list(range(GRACE + 1, EPOCHS + 1))
                                              for e in continued)
        run = bench.trace(runs["screen_topk"][task], task, EPOCHS, trial_status)
        assert run["epochs"] == 4 * GRACE + top * (EPOCHS - GRACE)
        assert run["statuses"] == {"pruned": 4, "completed": top} and run["selected"] is not None


def test_leave_one_task_out_starts_from_the_other_tasks_best(bench, replays):
    runs, best, _ = replays
    for task, other in (TASKS, TASKS[::-1]):
        events = runs["tpe_asha_warm_loto"][task]
        assert {t for _k, t, *_ in events} == {task}  # the held-out task searched alone
        first_key = next(key for kind, t, _tid, key, _r in events if kind == "result")
        assert first_key == best[other] != best[task]


def test_the_earlier_launch_holds_only_the_other_tasks(bench, replays, tmp_path):
    from vptsearch.search._searcher import load_studies

    _runs, _best, replay = replays
    studies = load_studies(replay.earlier_launch(["mini/textures"], tmp_path) / "optuna.journal")
    assert list(studies) == ["mini/textures"]
    assert len(studies["mini/textures"].trials) == 6


def test_every_method_selects_on_every_task(bench, replays):
    runs, _best, _ = replays
    for per_task in runs.values():
        for task in TASKS:
            assert bench.trace(per_task[task], task, EPOCHS, trial_status)["selected"] is not None
