"""The Ray Tune adapter of :func:`vptsearch.train.run_trial` (lives in the package so workers import it).

Reports go through ``tune.report(metrics, checkpoint=...)``; the checkpoint is one small
``state.pt`` (trained tensors + optimizer + epoch + history), and ``tune.get_checkpoint()`` resumes
a retried or restored trial from it.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from typing import Any

import torch
from ray import tune

from vptsearch.search._cluster import SharedBackbone
from vptsearch.spec import SearchSpec, spec_from_dict
from vptsearch.train import run_trial

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


def make_trainable(spec: SearchSpec, backbone: SharedBackbone | None = None) -> Any:
    """``trainable`` bound to ``spec`` (and the shared backbone) with the trial's resources
    (cpu/gpu fractions allowed)."""
    bound = tune.with_parameters(trainable, spec_json=json.dumps(spec.to_dict()), backbone=backbone)
    return tune.with_resources(bound, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
