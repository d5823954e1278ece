"""What a finished launch records on its MLflow task runs: the winner's settings, the accuracies
(test, probe, gap to the probe), the bundle, and the run's name and end state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vptsearch.search._results import LaunchResults, TaskResult
from vptsearch.search._tracking import PREFIX, Tracker, task_outcome
from vptsearch.spec import param_value


def log_bundles(
    tracker: Tracker, parents: dict[str, str], results: LaunchResults, bundles: dict[str, Path]
) -> None:
    """Each exported task's bundle (and its ensemble accuracy) on its task run."""
    for task, path in bundles.items():
        ref, acc = parents[task], results.tasks[task].ensemble_test_acc
        if acc is not None:
            tracker.log_metrics(ref, {"ensemble_test_acc": acc})
        tracker.log_artifact(ref, path, artifact_path="bundle")


def log_task_outcomes(tracker: Tracker, parents: dict[str, str], results: LaunchResults) -> None:
    """Each task run's outcome: name and note, the winner's settings, accuracies; then ended."""
    for task, res in results.tasks.items():
        ref, best = parents[task], res.best
        # the runs list shows names: the task run's name and description carry its outcome
        name, note = task_outcome(task, res.to_dict())
        tracker.set_tags(ref, {"mlflow.runName": name, "mlflow.note.content": note})
        if best is None:
            tracker.set_tags(ref, {PREFIX + "status": "no completed trial"})
            tracker.end(ref, "FAILED")
            continue
        summary = _winner_summary(best.config, best.trial_id)
        tracker.log_params_once(ref, summary)
        tracker.set_tags(ref, {**summary, PREFIX + "status": "completed"})
        tracker.log_metrics(ref, _task_metrics(res))
        tracker.end(ref)


def _winner_summary(cfg: dict[str, Any], trial_id: str) -> dict[str, Any]:
    """The winner's settings as the ``best.*`` params/tags (``-`` where the method has none)."""
    return {
        "best.method": cfg.get("method"),
        "best.prompt_length": cfg.get("prompt.length", "-"),
        "best.init": cfg.get("prompt.init", "-"),
        "best.depth": cfg.get("prompt.depth", "-"),
        "best.base_lr": cfg.get("optim.base_lr"),
        "best.weight_decay": cfg.get("optim.weight_decay"),
        "best.head_init": param_value(cfg, "head.init"),
        "best.head_lr_scale": param_value(cfg, "optim.head_lr_scale"),
        "best.head_refit": param_value(cfg, "head.refit"),
        "best.trial_id": trial_id,
    }


def _task_metrics(res: TaskResult) -> dict[str, float | None]:
    """The task run's metrics: the winner's val, trial counts, test mean/std, probe and gap."""
    best = res.best
    assert best is not None
    metrics = {
        "best_val_acc": best.val_acc,
        "tuned_percent": best.tuned_percent,
        **{f"trials_{k}": v for k, v in res.counts.items()},
        **{f"best_val_acc.{k}": v.val_acc for k, v in res.per_init.items()},
    }
    if res.test_accs:
        metrics.update(test_mean=res.test_mean, test_std=res.test_std)
    if res.probe:
        metrics.update(probe_val_acc=res.probe["val_acc"], probe_test_acc=res.probe["test_acc"])
        gap = res.gap_to_probe()
        if gap is not None:
            metrics["gap_to_probe"] = gap
    return metrics
