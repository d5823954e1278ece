"""The Ray Tune adapter of :func:`vptsearch.train.run_trial` (lives in the package so workers import it).

Reports go through ``tune.report(metrics, checkpoint=...)``; the checkpoint is one small
``state.pt`` (trained tensors + optimizer + epoch + history), and ``tune.get_checkpoint()`` resumes
a retried or restored trial from it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import posixpath
import tempfile
from typing import Any

import torch
from ray import tune

from vptsearch.search._cluster import SharedBackbone
from vptsearch.spec import SearchSpec, spec_from_dict
from vptsearch.train import run_trial

log = logging.getLogger("vptsearch")
STATE_FILE = "state.pt"
CONTROL_KEYS = ("task", "phase", "seed")


class TuneReporter:
    """Reporter that forwards to ``tune.report``, writing the state as a Tune checkpoint."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="vptsearch-ckpt-") as tmp:
            torch.save(state, os.path.join(tmp, STATE_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def load_state(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)


@functools.lru_cache(maxsize=4)
def _spec(spec_json: str) -> SearchSpec:
    return spec_from_dict(json.loads(spec_json))


def trainable(config: dict[str, Any], spec_json: str, backbone: SharedBackbone | None = None) -> None:
    """Tune function trainable: one trial of ``config["task"]`` in ``config["phase"]``.

    ``backbone``: the driver's backbone in the object store (``_cluster.share_backbone``); the
    worker builds the model from it once instead of reading the weights file (None: read the file).
    """
    spec = _spec(spec_json)
    run_trial(
        config,
        task=config["task"],
        spec=spec,
        reporter=TuneReporter(),
        checkpoint=load_state(tune.get_checkpoint()),
        threads=max(1, int(spec.resources.cpu)),
        backbone=None if backbone is None else backbone.get(),
    )


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


def make_trainable(spec: SearchSpec, backbone: SharedBackbone | None = None) -> Any:
    """``trainable`` bound to ``spec`` (and the shared backbone) with the trial's resources
    (cpu/gpu fractions allowed), restoring through :func:`heal_pruned_checkpoint`."""
    from ray.tune.trainable.function_trainable import wrap_function

    bound = tune.with_parameters(trainable, spec_json=json.dumps(spec.to_dict()), backbone=backbone)
    base: Any = wrap_function(bound)

    class Trainable(base):
        def restore(self, checkpoint_path: Any) -> Any:
            checkpoint = getattr(checkpoint_path, "checkpoint", None)
            if checkpoint is not None:
                heal_pruned_checkpoint(checkpoint)
            return super().restore(checkpoint_path)

    return tune.with_resources(Trainable, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
