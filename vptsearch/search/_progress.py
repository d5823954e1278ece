"""One concise line per finished trial: the launch's console face while Tune's own tables are off.

Re-exported from :mod:`vptsearch.search._tracking`, where experiment snapshots saved before this
module existed name it.
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from vptsearch.search._result_keys import trial_status


class ProgressCallback(tune.Callback):
    """One concise line per finished trial (Tune's own tables are silenced: verbose=0).

    ``total`` trials of ``phase``; ``finals`` (at most that many) final trials run in the same
    experiment as the search (:mod:`vptsearch.search._final_queue`) and are counted apart.
    """

    finals, finals_done = 0, 0  # class defaults: a callback pickled before finals ran in the search

    def __init__(self, total: int, max_epochs: int, phase: str, finals: int = 0) -> None:
        self.total, self.max_epochs, self.phase, self.done = total, max_epochs, phase, 0
        self.finals = finals
        self.t0 = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.t0 = time.monotonic()

    def _count(self, trial: Any) -> str:
        """``phase done/total`` of the trial's phase, counting it."""
        phase = trial.config.get("phase", self.phase)
        if phase == self.phase or not self.finals:
            self.done += 1
            return f"{self.phase} {self.done}/{self.total}"
        self.finals_done += 1
        return f"{phase} {self.finals_done}/{self.finals}"

    def _line(self, trial: Any, error: bool) -> None:
        count = self._count(trial)
        last = trial.last_result or {}
        status = trial_status(last, self.max_epochs, error)
        cfg = trial.config
        what = ", ".join(
            f"{k.split('.')[-1]}={cfg[k]}"
            for k in ("method", "prompt.length", "prompt.init", "optim.base_lr")
            if k in cfg
        )
        score = (
            f"test {last['test_acc']:.3f}"
            if "test_acc" in last
            else f"val {_num(last.get('val_acc')):.3f}"
        )
        head = f"  [{count} {time.monotonic() - self.t0:5.0f}s]"
        why = f": {last['error']}" if last.get("error") else ""  # bad data/config: not retried
        print(
            f"{head} {cfg.get('task')} seed {cfg.get('seed', 0)}: {status} after {last.get('epoch', 0)} "
            f"epoch(s), {score} ({what}){why}",
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, error=True)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)
