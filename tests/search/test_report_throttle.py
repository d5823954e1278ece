"""A trial sends Tune only the results a decision needs; ASHA, Optuna and MLflow see what they saw.

The throttle (``_trainable.ReportThrottle``) holds a trial's epochs between the results its
scheduler needs (rungs, checkpoints, the last epoch) and sends at most one progress result per
interval; the held epochs ride along with the next result. Driving the launch's own scheduler and
searcher with the same curves, once with a result every epoch and once through the throttle, must
give the same stops, the same Optuna record and the same selected trial.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from vptsearch._trial_loop import checkpoint_epochs
from vptsearch.search._result_keys import EARLIER_EPOCHS
from vptsearch.search._scheduler import build_scheduler
from vptsearch.search._searcher import build_searcher
from vptsearch.search._tracking import TrackingCallback
from vptsearch.search._trainable import ReportThrottle
from vptsearch.spec import spec_from_dict

EPOCHS = 30
RAW = {
    "name": "throttle",
    "suite": ["mini/digits", "mini/textures"],
    "params": {"prompt.length": {"choice": [1, 5, 10]}, "optim.base_lr": {"loguniform": [0.1, 10]}},
    "search": {"trials_per_task": 8, "max_concurrent": 8, "n_startup_trials": 3},
    "scheduler": {"grace_period": 3, "reduction_factor": 3},  # rungs 3, 9, 27
    "training": {"epochs": EPOCHS, "warmup_epochs": 1, "checkpoint_every": 0},
}


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_throttle_holds_epochs_between_the_results_that_must_go() -> None:
    clock = _Clock()
    throttle = ReportThrottle(5.0, clock=clock)
    sent = []
    for epoch in range(1, 13):
        clock.t += 1.0  # one second per epoch
        out = throttle.offer({"epoch": epoch, "val_acc": epoch / 100, "phase": "search"}, must=epoch == 9)
        if out is not None:
            sent.append(out)
    # progress after 5 s (epoch 5), the rung at 9 at once; the next progress is due 5 s after it
    assert [r["epoch"] for r in sent] == [5, 9]
    assert [[e["epoch"] for e in r.get(EARLIER_EPOCHS, [])] for r in sent] == [[1, 2, 3, 4], [6, 7, 8]]
    assert [h["epoch"] for h in throttle.held] == [10, 11, 12]
    row = sent[0][EARLIER_EPOCHS][0]
    assert row["val_acc"] == 0.01 and "phase" not in row and isinstance(row["timestamp"], float)
    # a diverged or failed result ends the trial: it goes at once, with what was held
    out = throttle.offer({"epoch": 13, "val_acc": 0.0, "diverged": 1}, must=False)
    assert out is not None and [e["epoch"] for e in out[EARLIER_EPOCHS]] == [10, 11, 12]
    assert throttle.offer({"epoch": 14, "error": "DataError: x"}, must=False) is not None


def test_interval_zero_sends_every_epoch() -> None:
    throttle = ReportThrottle(0.0, clock=_Clock())
    assert all(throttle.offer({"epoch": e, "val_acc": 0.5}, must=False) is not None for e in range(1, 6))


def _curve(task: str, config: dict, epoch: int) -> float:
    """A deterministic learning curve per configuration: some rise fast, some slowly, some stall."""
    lr, p = float(config["optim.base_lr"]), int(config["prompt.length"])
    ceiling = (
        0.5 + 0.4 * math.exp(-((math.log(lr) - 0.3) ** 2)) + 0.01 * p + (0.05 if task.endswith("s") else 0)
    )
    return round(ceiling * (1 - math.exp(-epoch / (2 + 3 * (p % 4)))), 6)


def _launch(spec, throttled: bool, interval_s: float):
    """Tune's controller, reduced to what decides: suggest, result -> scheduler -> searcher, complete.

    Trials of both tasks advance one epoch per round, in order; a trial's results pass through a
    ReportThrottle (one second per epoch on its clock) when ``throttled``."""
    tasks = list(spec.suite)
    scheduler, searcher = build_scheduler(spec), build_searcher(spec, tasks)
    must = checkpoint_epochs(spec)
    trials, stops, finals = {}, [], {}
    for i in range(sum(searcher.budgets.values())):
        tid = f"t{i:02d}"
        config = searcher.suggest(tid)
        trial = SimpleNamespace(trial_id=tid, config=config)
        scheduler.on_trial_add(None, trial)
        clock = _Clock()
        trials[tid] = (trial, ReportThrottle(interval_s if throttled else 0.0, clock=clock), clock)
    live = dict(trials)
    for epoch in range(1, EPOCHS + 1):
        for tid, (trial, throttle, clock) in list(live.items()):
            clock.t += 1.0
            metrics = {"epoch": epoch, "val_acc": _curve(trial.config["task"], trial.config, epoch)}
            result = throttle.offer(metrics, must=epoch in must)
            if result is None:
                continue
            decision = scheduler.on_trial_result(None, trial, result)
            if decision == TrialScheduler.STOP:
                stops.append((tid, epoch))
            else:
                searcher.on_trial_result(tid, result)
            if decision == TrialScheduler.STOP or epoch == EPOCHS:
                searcher.on_trial_complete(tid, result)
                finals[tid] = result["val_acc"] if epoch == EPOCHS else None
                del live[tid]
    record = {
        task: [(t.number, t.state.name, t.value, dict(t.intermediate_values)) for t in study.trials]
        for task, study in searcher.studies().items()
    }
    return stops, finals, record


@pytest.mark.parametrize("interval_s", [1e9, 4.0])  # only the results that must go; plus progress
def test_rung_decisions_and_the_selected_trial_are_those_of_a_result_every_epoch(interval_s) -> None:
    spec = spec_from_dict(RAW)
    assert spec.asha_rungs == {3, 9, 27}
    stops, finals, record = _launch(spec, throttled=False, interval_s=0.0)
    t_stops, t_finals, t_record = _launch(spec, throttled=True, interval_s=interval_s)
    assert stops and t_stops == stops  # the same trials stopped at the same rungs
    assert t_finals == finals

    def best(f):
        return max((v, t) for t, v in f.items() if v is not None)

    assert best(t_finals) == best(finals)  # the same winner, at the same value
    assert t_record == record  # Optuna: same states, values, and a value at every rung it reached
    values = [iv for trials in record.values() for (_, _, _, iv) in trials]
    assert all(set(iv) <= {3, 9, 27, EPOCHS} for iv in values)  # one journal write per rung, not per epoch


def test_mlflow_gets_every_epoch_of_a_throttled_trial() -> None:
    logged: list[tuple[int, dict, float | None]] = []
    cb = TrackingCallback("sqlite:///unused.db", "e", None, "launch", {}, EPOCHS, resume=False)
    cb._tracker = SimpleNamespace(log_epochs=lambda ref, rows: logged.extend(rows))
    cb._runs["t0"] = "ref"
    trial = SimpleNamespace(trial_id="t0", config={"task": "mini/digits"})
    clock = _Clock()
    throttle = ReportThrottle(5.0, clock=clock)
    for epoch in range(1, 13):
        clock.t += 1.0
        out = throttle.offer(
            {"epoch": epoch, "val_acc": epoch / 100, "train_loss": 1 / epoch}, must=epoch == 12
        )
        if out is not None:
            cb.on_trial_result(epoch, [trial], trial, out)
    assert [step for step, _, _ in logged] == list(range(1, 13))
    assert all(m["val_acc"] == step / 100 and m["train_loss"] == 1 / step for step, m, _ in logged)
    # the results sent (progress every 5 s, the last epoch) are logged as of now; held rows keep their time
    assert {step for step, _, t in logged if t is None} == {5, 10, 12}
