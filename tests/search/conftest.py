"""Fixtures of the search tests: a valid raw spec on the session's tiny backbone and mini tasks
(``tiny_backbone_file`` and ``mini_root``: tests/conftest.py, shared with tests/fuzz)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import TASKS, TINY_KWARGS  # the search tests import them from here


@pytest.fixture()
def base_raw(tiny_backbone_file: Path, mini_root: Path, tmp_path: Path) -> dict:
    """A small valid raw spec (as parsed from YAML) pointing at the session's data and backbone."""
    return {
        "name": "smoke",
        "suite": list(TASKS),
        "data_root": str(mini_root),
        "run_dir": str(tmp_path / "runs"),
        "backbone": {
            "name": str(tiny_backbone_file),
            "architecture": "vit_tiny_patch16_224",
            "model_kwargs": dict(TINY_KWARGS),
        },
        "method": "vpt",
        "params": {
            "prompt.length": {"choice": [1, 4]},
            "prompt.init": {"choice": ["random", "spt-mean"]},
            "optim.base_lr": {"choice": [1.0, 5.0, 1.0e30]},
            "optim.weight_decay": 0.0,
        },
        "search": {
            "algorithm": "tpe",
            "trials_per_task": 4,
            "max_concurrent": 2,
            "seed": 0,
            "n_startup_trials": 4,
        },
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "training": {"epochs": 3, "warmup_epochs": 1, "batch_size": 64},
        "protocol": {"final_seeds": [0, 1]},
        "tracking": {
            "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_location": str(tmp_path / "mlart"),
        },
        "export": {"dir": str(tmp_path / "exports")},
    }


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core box: 1 intra-op thread is ~5x faster than 2 under contention
    (trials in Tune get ``resources.cpu`` threads the same way). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def own_ray(num_cpus: int = 2, **kwargs) -> Iterator[None]:
    """A fresh local Ray for the block (one left by an earlier test is shut down first)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()
