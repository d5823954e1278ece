"""A finished launch made without Ray: a run dir with spec.yaml, results.json and final seed weights.

The "trained" tensors are the seeded random init of a tiny VPT model (with ``head.norm:
batchnorm`` its running statistics come from a few training-mode batches), and each seed's
recorded test accuracy is measured on the real mini test split, so export_bundles, the bundle
files and predict run exactly as after a real launch, in seconds.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vptsearch.spec import spec_from_dict

TASK = "mini/digits"


def config(head_norm: str = "none", **extra: Any) -> dict[str, Any]:
    return {"method": "vpt", "prompt.length": 2, "prompt.init": "random", "prompt.depth": "deep",
            "optim.base_lr": 1.0, "optim.weight_decay": 0.0, "head.norm": head_norm, **extra}  # fmt: skip


def seed_model(spec: Any, cfg: dict[str, Any], seed: int) -> Any:
    """The model a final trial of ``seed`` would have ended with (here: its seeded init)."""
    from vptsearch.data import get_task, make_loader
    from vptsearch.models import build_model
    from vptsearch.train import get_backbone, model_options

    backbone = get_backbone(spec)
    torch.manual_seed(seed)
    model = build_model(
        backbone, get_task(TASK, spec.data_root).num_classes, "vpt", **model_options(cfg, spec)
    )
    if cfg.get("head.norm") == "batchnorm":  # running statistics as training leaves them
        model.train()
        loader = make_loader(TASK, "train800", root=spec.data_root, batch_size=64, image_size=32,
                             mean=backbone.mean, std=backbone.std, train=True, seed=seed)  # fmt: skip
        with torch.no_grad():
            for i, (x, _) in enumerate(loader):
                model(x)
                if i == 2:
                    break
    return model.eval()


def test_accuracy(spec: Any, model: Any) -> float:
    from vptsearch.data import make_loader
    from vptsearch.train import evaluate, get_backbone

    b = get_backbone(spec)
    loader = make_loader(TASK, "test", root=spec.data_root, batch_size=256, image_size=32,
                         mean=b.mean, std=b.std, train=False)  # fmt: skip
    return evaluate(model, loader)[0]


def make_launch(
    base_raw: dict[str, Any],
    root: Path,
    *,
    seeds: tuple[int, ...] = (0, 1),
    stamp: str = "20261202-081500",
    head_norm: str = "none",
    params: dict[str, Any] | None = None,
) -> tuple[Path, dict[int, Any]]:
    """``(run dir, {seed: model})`` of a finished one-task launch of ``seeds`` final seeds."""
    raw = {**base_raw, "suite": [TASK], "protocol": {"final_seeds": list(seeds)},
           "run_dir": str(root / "runs"), "export": {"dir": str(root / "exports")}}  # fmt: skip
    spec = spec_from_dict(raw)
    run_dir = root / "runs" / spec.name / stamp
    spec.dump(run_dir / "spec.yaml")
    cfg = config(head_norm, **(params or {}))
    models, final, accs = {}, {}, {}
    for s in seeds:
        models[s] = seed_model(spec, cfg, s)
        path = run_dir / "final" / "mini__digits" / f"seed-{s}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(models[s].trained_state_dict(), str(path))
        accs[str(s)] = test_accuracy(spec, models[s])
        final[str(s)] = {"status": "completed", "test_acc": accs[str(s)], "config": cfg, "weights": str(path)}
    mean = sum(accs.values()) / len(accs)
    best = {"task": TASK, "trial_id": "t0", "config": cfg, "status": "completed", "epochs": 3,
            "val_acc": 0.5, "tuned_percent": 1.0}  # fmt: skip
    results = {
        "launch_id": f"{spec.name}/{stamp}",
        "tasks": {TASK: {"best": best, "per_init": {}, "per_method": {}, "counts": {"completed": 1},
                         "seeds": list(seeds), "test_accs": accs, "test_mean": mean, "test_std": 0.0,
                         "exported_seed": seeds[0], "final": final}},
        "rows": [{"task": TASK, "group": "mini", "method": "vpt", "p": 2, "init": "random",
                  "tuned_percent": 1.0, "val_acc": 0.5, "test_mean": mean, "test_std": 0.0,
                  "completed": 1, "pruned": 0, "diverged": 0, "failed": 0}],
    }  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir, models


def save_png(path: Path, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width x height`` pixels (a decompression bomb's header, a few bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def bundle_raw(backbone_file: Path, data_root: Path, tmp: Path) -> dict[str, Any]:
    """A raw one-task spec on the session's tiny backbone and mini tasks, for :func:`make_launch`."""
    from ..conftest import TINY_KWARGS

    arch, kwargs = "vit_tiny_patch16_224", dict(TINY_KWARGS)
    backbone = {"name": str(backbone_file), "architecture": arch, "model_kwargs": kwargs}
    return {
        "name": "smoke",
        "suite": [TASK],
        "data_root": str(data_root),
        "run_dir": str(tmp / "runs"),
        "backbone": backbone,
        "method": "vpt",
        "params": {"prompt.length": {"choice": [2]}},
        "training": {"epochs": 3, "warmup_epochs": 1, "batch_size": 64},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"},
    }


def rewrite_member(d: Path, file: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a bundle's member file and record its new sha256, as an export would have."""
    save_file(tensors, str(d / file))
    record_sha256(d, file)


def record_sha256(d: Path, file: str) -> None:
    """Record the sha256 of a bundle's member file as it is now in its bundle.json."""
    meta = json.loads((d / "bundle.json").read_text())
    for m in meta["members"]:
        if m["file"] == file:
            m["sha256"] = hashlib.sha256((d / file).read_bytes()).hexdigest()
    (d / "bundle.json").write_text(json.dumps(meta))


def flip_byte(path: Path, tensor: str) -> None:
    """Change one byte of ``tensor``'s data in a safetensors file (header: u64 length + JSON)."""
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    start = json.loads(data[8 : 8 + n])[tensor]["data_offsets"][0]
    data[8 + n + start] ^= 0x01
    path.write_bytes(bytes(data))
