"""Which of a trial's Tune checkpoints stay: the newest one, pruned by the launch, not by Tune.

Tune's own pruning (``CheckpointConfig(num_to_keep=N)``) forces an experiment snapshot whenever a
trial has saved N checkpoints since the last one (ray PR 30187): with ``num_to_keep=1`` that is a
snapshot of every trial's state after every checkpoint, on the driver's one thread. It took 117 s
of a 382-s simulated 16-GPU launch (benchmarks/bench_gpu_sim.py). Without ``num_to_keep`` Tune keeps
every checkpoint and snapshots on its own schedule (~5 % of the driver's time);
:class:`CheckpointPruner` then deletes a trial's previous checkpoint as soon as Tune has registered
the newer one, off the driver's thread.

A driver killed before its next snapshot leaves a snapshot naming a checkpoint already deleted:
``_trainable.heal_pruned_checkpoint`` puts the newer one in its place when the trial is restored.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import tune

log = logging.getLogger("vptsearch")


class CheckpointPruner(tune.Callback):
    """Deletes a trial's previous checkpoint when Tune registers its next one (in a background
    thread: on S3 a delete is a list and a request per file). An instance is part of the pickled
    run config, so a restored experiment keeps pruning."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # a thread pool does not pickle; a restored pruner starts its own

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: tune.Checkpoint, **info: Any
    ) -> None:
        # Tune calls its callbacks before it registers the checkpoint: trial.checkpoint is the one before
        previous = trial.checkpoint
        if previous is None or previous.path == checkpoint.path:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vptsearch-prune")
        self._pool.submit(_delete, previous)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the deletes still running (a finished launch leaves one checkpoint per trial)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _delete(checkpoint: tune.Checkpoint) -> None:
    from pyarrow.fs import FileType, LocalFileSystem

    fs = checkpoint.filesystem or LocalFileSystem()
    try:
        if fs.get_file_info(checkpoint.path).type != FileType.NotFound:
            fs.delete_dir(checkpoint.path)
    except OSError as exc:  # a full or flaky store: the checkpoint stays, the launch goes on
        log.warning("could not delete the older checkpoint %s: %s", checkpoint.path, exc)
