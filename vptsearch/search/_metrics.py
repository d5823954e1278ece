"""Launch progress as Ray custom metrics (``ray.util.metrics``), exported from the driver.

:class:`MetricsCallback` is a Tune callback on the driver; after every trial event it recomputes,
per task and phase, the number of trials running / completed / pruned / diverged / failed and the
best validation accuracy of the completed search trials, and sets one Gauge each. Recomputing
from Tune's trial list (rather than counting events) keeps the numbers right after ``--resume``,
where restored trials produce no new events. Ray exports the gauges through each node's metrics
agent in Prometheus format with a ``ray_`` prefix (``ray_vptsearch_trials_completed{task=...}``);
the Ray dashboard's Metrics view shows them once Prometheus/Grafana scrape the cluster.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any

from ray.tune import Callback

from vptsearch.search._result_keys import trial_status

log = logging.getLogger("vptsearch")
TAG_KEYS = ("task", "phase")
Key = tuple[str, str]  # (task, phase)
COUNTS = ("running", "completed", "pruned", "diverged", "failed")
NAMES = {**{k: f"vptsearch_trials_{k}" for k in COUNTS}, "best_val_acc": "vptsearch_best_val_acc"}
_HELP = {
    "running": "trials of the task currently running",
    "completed": "trials that ran the whole epoch budget",
    "pruned": "trials stopped early by ASHA",
    "diverged": "trials whose loss diverged",
    "failed": "trials that errored after their retries",
    "best_val_acc": "best final validation accuracy among completed search trials",
}


@functools.lru_cache(maxsize=1)
def gauges() -> dict[str, Any] | None:
    """One Gauge per metric, created once per process (None where Ray cannot record metrics)."""
    try:
        from ray.util.metrics import Gauge

        return {k: Gauge(NAMES[k], description=_HELP[k], tag_keys=TAG_KEYS) for k in NAMES}
    except Exception as exc:  # e.g. a ray:// client driver: metrics are then only in `values`
        log.debug("ray.util.metrics unavailable (%s); vptsearch metrics not exported", exc)
        return None


class MetricsCallback(Callback):
    """Keeps ``values[(metric, task, phase)]`` and mirrors it into Ray gauges."""

    def __init__(self, phase: str, max_epochs: int, tasks: Iterable[str] = ()) -> None:
        self.phase = phase
        self.max_epochs = max_epochs
        self.tasks = list(tasks)
        self.values: dict[tuple[str, str, str], float] = {}
        self._publish({(t, phase): dict.fromkeys(COUNTS, 0) for t in self.tasks}, {})

    def _task(self, trial: Any) -> str | None:
        return (trial.config or {}).get("task")

    def update(self, trials: Iterable[Any], ended: Any = None) -> None:
        """Recompute every value from Tune's trial list and publish it.

        ``ended``: a trial Tune reports complete while its status still reads RUNNING (Tune calls
        ``on_trial_complete`` before it marks the trial TERMINATED).
        """
        counts: dict[Key, dict[str, int]] = {(t, self.phase): dict.fromkeys(COUNTS, 0) for t in self.tasks}
        best: dict[Key, float] = {}
        for trial in trials:
            task = self._task(trial)
            if task is None:
                continue
            # final trials run in the search's experiment as each task's search ends (_final_queue)
            key = (task, (trial.config or {}).get("phase", self.phase))
            c = counts.setdefault(key, dict.fromkeys(COUNTS, 0))
            state = "TERMINATED" if trial is ended and trial.status == "RUNNING" else trial.status
            if state in ("RUNNING", "PAUSED"):
                c["running"] += 1
            elif state in ("TERMINATED", "ERROR"):
                status = trial_status(trial.last_result, self.max_epochs, state == "ERROR")
                c[status] += 1
                acc = (trial.last_result or {}).get("val_acc")
                if status == "completed" and acc is not None:
                    best[key] = max(best.get(key, float("-inf")), float(acc))
        self._publish(counts, best)

    def _publish(self, counts: dict[Key, dict[str, int]], best: dict[Key, float]) -> None:
        g = gauges()
        for (task, phase), c in counts.items():
            tags = {"task": task, "phase": phase}
            for k, v in c.items():
                self.values[(k, task, phase)] = float(v)
                if g is not None:
                    g[k].set(float(v), tags=tags)
        for (task, phase), acc in best.items():
            self.values[("best_val_acc", task, phase)] = acc
            if g is not None:
                g["best_val_acc"].set(acc, tags={"task": task, "phase": phase})

    # Tune hooks: every state change of a trial
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.update(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.update(trials, ended=trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.update(trials)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.update(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.update(trials)
