"""Fixtures of the benchmark smoke tests: mini/digits built somewhere, and one local Ray per module."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory: pytest.TempPathFactory):
    """The data root holding mini/digits: the user's if built there, else a fresh build (seconds)."""
    from vptsearch._errors import DataError
    from vptsearch.data import build_mini, data_root, read_manifest

    try:
        read_manifest("mini/digits")
        yield data_root()
        return
    except DataError:
        pass
    root = tmp_path_factory.mktemp("shards")
    assert build_mini(root, tasks=["mini/digits"]) == ["mini/digits"]
    old = os.environ.get("VPTSEARCH_DATA")
    os.environ["VPTSEARCH_DATA"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("VPTSEARCH_DATA", None)
        else:
            os.environ["VPTSEARCH_DATA"] = old


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for all benchmark runs of a module (a benchmark leaves a running Ray alone)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
