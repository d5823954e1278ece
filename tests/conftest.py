"""Shared fixtures: tiny random-weight ViTs, a tiny local backbone file and two built mini tasks per
test session (the search and fuzz tests use those)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores: keep intra-op threads low so parallel helpers (DataLoader workers, Ray) don't thrash.
os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
TASKS = ["mini/digits", "mini/textures"]


@pytest.fixture(scope="session")
def tiny_backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny timm ViT saved as safetensors: a real local backbone with a sha256, in ~1 s."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY_KWARGS)
    path = tmp_path_factory.mktemp("backbone") / "tiny.safetensors"
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mini/digits and mini/textures built from packaged data (~3 s), read by the tests that use them."""
    from vptsearch.data import build_mini

    root = tmp_path_factory.mktemp("shards")
    assert build_mini(root, tasks=TASKS) == TASKS
    return root


@pytest.fixture(scope="session")
def tiny_vit_kwargs() -> dict:
    """timm kwargs of a tiny ViT (32 px, patch 8, width 32, depth 3) for fast CPU tests."""
    return dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=0)


@pytest.fixture()
def tiny_vit(tiny_vit_kwargs):
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **tiny_vit_kwargs)


@pytest.fixture()
def run_benchmark():
    """Run ``benchmarks/<name>.py``'s ``main(argv)`` in-process and return its JSON result.

    Benchmarks set torch's thread count process-wide; it is restored afterwards.
    """
    import importlib.util
    from pathlib import Path

    import torch

    def run(name: str, argv: list[str]) -> dict:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        threads = torch.get_num_threads()
        try:
            return module.main(argv)
        finally:
            torch.set_num_threads(threads)

    return run
