"""What a trial's Tune result says: the keys the worker writes and the driver reads, and the status
they add up to. No third-party imports: the MLflow callback and ``vptsearch report`` read it
without torch, Ray or Optuna."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# the search metric (ASHA and Optuna compare it) and ASHA's time attribute
METRIC, MODE, TIME_ATTR = "val_acc", "max", "epoch"
# the epochs a trial held back since its previous result (see _trainable.ReportThrottle): a list of
# rows, each an epoch's numbers plus ``timestamp`` (seconds) when it ended
EARLIER_EPOCHS = "earlier_epochs"


def trial_status(result: Mapping[str, Any] | None, max_epochs: int, error: bool = False) -> str:
    """completed | pruned | diverged | failed, from a trial's last result.

    A result with ``error`` is the last one of a trial that met bad data or config and ended
    without a retry (see ``_trainable.failure_result``)."""
    if error or not result or result.get("error"):
        return "failed"
    if result.get("diverged"):
        return "diverged"
    return "completed" if int(result.get(TIME_ATTR, 0)) >= max_epochs else "pruned"
