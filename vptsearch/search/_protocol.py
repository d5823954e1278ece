"""The two-stage protocol: select on validation accuracy, retrain with every final seed, test.

Selection only looks at search-phase trials that ran the full epoch budget (``completed``): a
pruned trial's low-fidelity score and a diverged trial never win. Per task we keep the best
configuration overall, per init strategy (random vs SPT) and per method.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from vptsearch.search._result_keys import trial_status


def hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of a trial config (without task / phase / seed): ``method`` and every
    parameter the spec knows (:data:`vptsearch.spec.PARAMS`). Taken from the spec's table, not a
    list of prefixes: a hand-kept list once lacked ``head.`` and the final phase retrained every
    winner without its head norm (tested 59 % on digits against 86 % with it)."""
    from vptsearch.spec import PARAMS

    return {k: v for k, v in config.items() if k == "method" or k in PARAMS}


def strategy_of(config: dict[str, Any]) -> str:
    """The init strategy of a config (``random``, ``spt-kmeans``...) or the method for non-prompt methods."""
    return (
        str(config.get("prompt.init", "random")) if config.get("method", "vpt") == "vpt" else config["method"]
    )


@dataclass
class TrialRecord:
    task: str
    trial_id: str
    config: dict[str, Any]
    status: str
    epochs: int
    val_acc: float | None
    tuned_percent: float | None = None

    @classmethod
    def from_result(
        cls, trial_id: str, config: dict[str, Any], last: dict[str, Any] | None, error: bool, max_epochs: int
    ) -> TrialRecord:
        last = last or {}
        val = last.get("val_acc")
        return cls(
            task=config["task"],
            trial_id=trial_id,
            config=hparams(config),
            status=trial_status(last, max_epochs, error),
            epochs=int(last.get("epoch", 0)),
            val_acc=None if val is None or (isinstance(val, float) and math.isnan(val)) else float(val),
            tuned_percent=last.get("tuned_percent"),
        )


@dataclass
class TaskSelection:
    task: str
    best: TrialRecord | None
    per_init: dict[str, TrialRecord] = field(default_factory=dict)
    per_method: dict[str, TrialRecord] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def _best(records: list[TrialRecord]) -> TrialRecord | None:
    done = [r for r in records if r.status == "completed" and r.val_acc is not None]
    # Ties go to the cheaper model (fewer tuned parameters), then to the earlier trial.
    return max(done, key=lambda r: (r.val_acc, -(r.tuned_percent or 0.0)), default=None)


def select(records: list[TrialRecord], tasks: list[str]) -> dict[str, TaskSelection]:
    """Best completed trial per task, per init strategy and per method."""
    out: dict[str, TaskSelection] = {}
    for task in tasks:
        rs = [r for r in records if r.task == task]
        counts: dict[str, int] = {}
        for r in rs:
            counts[r.status] = counts.get(r.status, 0) + 1
        per_init = {
            s: b
            for s in sorted({strategy_of(r.config) for r in rs})
            if (b := _best([r for r in rs if strategy_of(r.config) == s]))
        }
        per_method = {
            m: b
            for m in sorted({r.config.get("method", "vpt") for r in rs})
            if (b := _best([r for r in rs if r.config.get("method", "vpt") == m]))
        }
        out[task] = TaskSelection(task, _best(rs), per_init, per_method, counts)
    return out


def final_configs(
    selection: dict[str, TaskSelection], seeds: tuple[int, ...]
) -> dict[str, list[dict[str, Any]]]:
    """Final-phase trial configs: the best configuration of each task once per final seed."""
    return {
        task: [{**sel.best.config, "phase": "final", "seed": s} for s in seeds]
        for task, sel in selection.items()
        if sel.best is not None
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
