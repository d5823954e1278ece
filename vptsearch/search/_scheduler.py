"""One ASHA scheduler per task inside a single Tune experiment.

A single ``ASHAScheduler`` over all tasks would compare, say, dSprites accuracies with digits
accuracies in the same rung. :class:`PerTaskScheduler` keeps one ASHA (one bracket: deterministic)
per ``config["task"]`` and routes every scheduler call to it; trial selection stays FIFO. Final
trials that run in the search's experiment (:mod:`vptsearch.search._final_queue`) are not ASHA's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from vptsearch.search._compat import asha_tracks
from vptsearch.search._searcher import METRIC, MODE, TIME_ATTR
from vptsearch.search._state import DriverStateMixin
from vptsearch.spec import SearchSpec


class PerTaskScheduler(DriverStateMixin, FIFOScheduler):
    """Routes scheduler calls to one ASHA per task (created on the task's first trial)."""

    # Trials some instance in this driver process stopped: on ``Tuner.restore`` Tune runs the
    # scheduler unpickled from the experiment, not the one the driver built, and the last result
    # of a trial stopped there need not carry ``done`` (seen on a resumed launch), so
    # finished_trials() asks here which trials really ended.
    stopped_trial_ids: ClassVar[set[str]] = set()

    def __init__(self, *, max_t: int, grace_period: int, reduction_factor: int) -> None:
        super().__init__()
        super().set_search_properties(METRIC, MODE)  # Tune's own: the metric ASHA compares
        self.asha_kwargs: dict[str, Any] = dict(
            time_attr=TIME_ATTR,
            metric=METRIC,
            mode=MODE,
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            brackets=1,
        )
        self.per_task: dict[str, ASHAScheduler] = {}
        self.stopped: dict[str, int] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def _asha(self, trial: Any) -> ASHAScheduler:
        task = trial.config.get("task", "")
        if task not in self.per_task:
            self.per_task[task] = ASHAScheduler(**self.asha_kwargs)
        return self.per_task[task]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if _is_search(trial):
            self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if not _is_search(trial):  # a final trial (_final_queue): trains its whole budget
            return TrialScheduler.CONTINUE
        asha = self._asha(trial)
        if not asha_tracks(asha, trial.trial_id):  # restored trial: re-register with its bracket
            asha.on_trial_add(tune_controller, trial)
        decision = asha.on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            PerTaskScheduler.stopped_trial_ids.add(trial.trial_id)
        if decision == TrialScheduler.STOP and result.get(TIME_ATTR, 0) < self.asha_kwargs["max_t"]:
            task = trial.config.get("task", "")
            self.stopped[task] = self.stopped.get(task, 0) + 1
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        asha = self._asha(trial)
        if _is_search(trial) and asha_tracks(asha, trial.trial_id):
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        asha = self._asha(trial)
        # ASHA raises KeyError for a trial it does not hold
        if _is_search(trial) and asha_tracks(asha, trial.trial_id):
            asha.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        stopped = ", ".join(f"{t}: {n}" for t, n in sorted(self.stopped.items())) or "none"
        return f"Using per-task ASHA ({len(self.per_task)} tasks); stopped early: {stopped}"


def _is_search(trial: Any) -> bool:
    return trial.config.get("phase", "search") == "search"


def build_scheduler(spec: SearchSpec) -> TrialScheduler:
    if spec.scheduler.type == "none":
        return FIFOScheduler()
    sch = spec.scheduler
    return PerTaskScheduler(
        max_t=spec.training.epochs, grace_period=sch.grace_period, reduction_factor=sch.reduction_factor
    )
