"""The Ray Tune adapter of :func:`vptsearch.train.run_trial` (lives in the package so workers import it).

Reports go through ``tune.report(metrics, checkpoint=...)``; the checkpoint is one small
``state.pt`` (trained tensors + optimizer + epoch + history), and ``tune.get_checkpoint()`` resumes
a retried or restored trial from it. Not every epoch is a Tune result: :class:`ReportThrottle`
sends the ones the scheduler needs and at most one progress result per ``training.report_every_s``;
the epochs held back travel in the next result's ``EARLIER_EPOCHS`` list (the driver's MLflow
callback logs each at its own step).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import posixpath
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from ray import tune
from ray.tune.logger import TBXLoggerCallback

from vptsearch._errors import ConfigError, DataError
from vptsearch.data._shared_splits import SplitStore, sharing_splits
from vptsearch.search._cluster import SharedBackbone
from vptsearch.search._result_keys import EARLIER_EPOCHS, METRIC
from vptsearch.spec import SearchSpec, spec_from_dict
from vptsearch.train import run_trial

log = logging.getLogger("vptsearch")
STATE_FILE = "state.pt"


# the same for every epoch of a trial: the result that carries the held-back epochs has them once
_CONSTANT_KEYS = frozenset({"phase", "seed", "tuned_percent", "node_id", "head_init_seconds"})


class ReportThrottle:
    """Decides which per-epoch results of a trial Tune receives.

    Every result is a round trip through the driver (the trial's ``tune.report`` waits for it), so
    only these go at once: a result with a checkpoint (``checkpoint_epochs``: ASHA's rungs, where it
    decides, and the last epoch), a diverged or failed one (the trial ends), and the first after
    ``interval_s`` seconds without a result (progress for the dashboard and MLflow). The others are
    held and sent, as rows of their numbers and the time they were measured, with the next result
    under ``EARLIER_EPOCHS``. ASHA and Optuna see the same values at the same rungs as with a
    result every epoch. ``interval_s`` 0: every epoch is sent.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self.clock = float(interval_s), clock
        self.held: list[dict[str, Any]] = []
        self.last_sent = clock()

    def offer(self, metrics: dict[str, Any], must: bool) -> dict[str, Any] | None:
        """The result to send now (with the epochs held since the last one), or None: held."""
        now = self.clock()
        ends = metrics.get("diverged") or "error" in metrics
        if not (must or ends) and now - self.last_sent < self.interval_s:
            self.held.append(_row(metrics))
            return None
        out = dict(metrics)
        if self.held:
            out[EARLIER_EPOCHS], self.held = self.held, []
        self.last_sent = now
        return out


def _row(metrics: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in metrics.items() if k not in _CONSTANT_KEYS and isinstance(v, (int, float))}
    row["timestamp"] = time.time()  # when the epoch ended: MLflow's time axis for the held-back points
    return row


class TuneReporter:
    """Reporter that forwards to ``tune.report`` through a :class:`ReportThrottle`, writing the state
    as a Tune checkpoint.

    Every result carries ``node_id`` (the Ray node the trial ran on): Tune's own ``node_ip`` is the
    same for every node of a one-host cluster, and which node trained which epoch is what a
    node-loss post-mortem (and the node-loss test) needs. ``report_every_s``: the throttle's
    interval (``training.report_every_s``; 0: every epoch).
    """

    def __init__(self, report_every_s: float = 0.0) -> None:
        self.last: dict[str, Any] = {}
        self.node_id = _node_id()
        self.throttle = ReportThrottle(report_every_s)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        if self.node_id is not None:
            metrics = {**metrics, "node_id": self.node_id}
        if metrics.get("phase") == "final":  # no val split; the key for the search's metric check
            metrics = {METRIC: None, **metrics}
        self.last = metrics
        sent = self.throttle.offer(metrics, must=state is not None)
        if sent is None:
            return
        if state is None:
            tune.report(sent)
            return
        with tempfile.TemporaryDirectory(prefix="vptsearch-ckpt-") as tmp:
            torch.save(state, os.path.join(tmp, STATE_FILE))
            tune.report(sent, checkpoint=tune.Checkpoint.from_directory(tmp))


def load_state(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        # weights_only: the state is tensors, dicts, lists, strings and numbers; a full unpickle of a
        # file in shared storage would run whatever code anyone with write access put there.
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=4)
def _spec(spec_json: str) -> SearchSpec:
    return spec_from_dict(json.loads(spec_json))


def trainable(
    config: dict[str, Any],
    spec_json: str,
    backbone: SharedBackbone | None = None,
    splits: SplitStore | None = None,
) -> None:
    """Tune function trainable: one trial of ``config["task"]`` in ``config["phase"]``.

    ``backbone``: the driver's backbone in the object store (``_cluster.share_backbone``); the
    worker builds the model from it once instead of reading the weights file (None: read the file).
    ``splits``: the launch's decoded splits (``_split_store``), shared by the node's workers
    (None: each worker decodes its own).
    """
    spec = _spec(spec_json)
    reporter = TuneReporter(spec.training.report_every_s)
    try:
        with sharing_splits(splits):
            run_trial(
                config,
                task=config["task"],
                spec=spec,
                reporter=reporter,
                checkpoint=load_state(tune.get_checkpoint()),
                threads=max(1, int(spec.resources.cpu)),
                backbone=None if backbone is None else backbone.get(),
            )
    except (DataError, ConfigError) as exc:
        # Bad input fails the same way on every attempt: raising would make Tune retry the trial
        # (FailureConfig.max_failures, meant for lost nodes) and print a traceback each time.
        # Tune has no per-exception retry policy, so the trial ends normally with a final result
        # naming the error; trial_status() reads it as "failed".
        reporter.report(failure_result(exc, reporter.last, config.get("phase", "search")))


def failure_result(exc: Exception, last: dict[str, Any], phase: str) -> dict[str, Any]:
    """The last result of a trial that met bad data or config: ``error`` (one line) plus the keys
    Tune's strict metric check needs (the search phase's ``val_acc``, unchanged from the last epoch
    so neither ASHA nor Optuna records a new value; None for a final trial) and the epoch it got to."""
    out: dict[str, Any] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                           "epoch": int(last.get("epoch", 0))}  # fmt: skip
    # a final trial has no val split: None, present for the check when it runs in the search's
    # experiment (_final_queue)
    out[METRIC] = float(last.get(METRIC, 0.0)) if phase == "search" else None
    return out


def _node_id() -> str | None:
    import ray

    try:
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside a Ray worker (a trial run in-process by a test)
        return None


def heal_pruned_checkpoint(checkpoint: tune.Checkpoint) -> bool:
    """Put the trial's newest checkpoint where a restored experiment expects its last one.

    Tune 2.60 deletes a trial's older checkpoint (``num_to_keep``) as soon as it registers a newer
    one, and writes the experiment snapshot that stops pointing at the older one only afterwards; a
    driver killed in between leaves a snapshot naming a deleted checkpoint, and the restored trial
    fails ("Could not recover from checkpoint"). The newer checkpoint is still in the trial folder:
    move it under the expected name (our state carries its own epoch and history, and ASHA's time
    attribute is that epoch, so the trial simply resumes one epoch later). Returns True if it healed.
    """
    from pyarrow.fs import FileSelector, FileType, copy_files

    fs, path = checkpoint.filesystem, checkpoint.path
    if fs is None or fs.get_file_info(path).type != FileType.NotFound:
        return False
    parent, name = posixpath.split(path.rstrip("/"))
    siblings = sorted(
        info.path
        for info in fs.get_file_info(FileSelector(parent, allow_not_found=True))
        if info.type == FileType.Directory and posixpath.basename(info.path).startswith("checkpoint_")
    )
    newer = [p for p in siblings if posixpath.basename(p) > name]
    if not newer:
        return False  # nothing to recover from: Tune reports its own error
    fs.create_dir(path, recursive=True)
    copy_files(newer[-1], path, source_filesystem=fs, destination_filesystem=fs)
    fs.delete_dir(newer[-1])  # unknown to the restored experiment: it would never be pruned
    log.warning("checkpoint %s was pruned before Tune's snapshot; resuming from %s", path, newer[-1])
    return True


def make_trainable(
    spec: SearchSpec, backbone: SharedBackbone | None = None, splits: SplitStore | None = None
) -> Any:
    """``trainable`` bound to ``spec`` (and the shared backbone and splits) with the trial's
    resources (cpu/gpu fractions allowed), restoring through :func:`heal_pruned_checkpoint`."""
    from ray.tune.trainable.function_trainable import wrap_function

    bound = tune.with_parameters(
        trainable, spec_json=json.dumps(spec.to_dict()), backbone=backbone, splits=splits
    )
    base: Any = wrap_function(bound)

    class Trainable(base):
        def restore(self, checkpoint_path: Any) -> Any:
            checkpoint = getattr(checkpoint_path, "checkpoint", None)
            if checkpoint is not None:
                heal_pruned_checkpoint(checkpoint)
            return super().restore(checkpoint_path)

    return tune.with_resources(Trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


class NoTensorBoard(TBXLoggerCallback):
    """Takes the place of Tune's TensorBoard logger, which Tune adds to any run that has none.

    That logger fsyncs an event file on every result: with the launch's other per-trial costs cut
    it was the largest one left on the driver (~5 ms per no-op trial here, measured in
    ``bench_platform_overhead``), and nothing reads those files (the launch's metrics are in
    MLflow). Tune's result.json and progress.csv loggers stay: its result grid and the trial
    folders keep them. An instance is part of the pickled run config, so a restore keeps it.
    """

    def __init__(self) -> None:  # no SummaryWriter: nothing is written
        pass

    def log_trial_start(self, trial: Any) -> None:
        pass

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        pass

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        pass
