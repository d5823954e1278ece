"""GPU check (<= 5 minutes on one GPU): ViT-B/16 VPT-deep speed and memory, then a launch --smoke.

    python benchmarks/gpu_check.py                # everything, one JSON on stdout
    python benchmarks/gpu_check.py --no-launch    # the speed table only
    python benchmarks/gpu_check.py --steps 10     # fewer timed steps per cell

Without a CUDA device it prints ``{"benchmark": "gpu_check", "skipped": "no CUDA device", ...}`` and
exits 0 (nothing else runs). On a GPU:

1. a synthetic VTAB-1k-shaped task (10 classes, 224-px images; train800 / val200 / train800val200 /
   test, fewer images with --images) written with the project's shard writer (``write_task``) under
   a temporary data root;
2. ViT-B/16 with random weights (``vit_base_patch16_224``, ``weights: none``) with VPT-deep prompts,
   ``deep_impl`` tokens vs prefix_kv at p in {1, 50, 200}: training steps (batch 64, bf16 autocast as
   ``precision: auto`` picks on cuda, SGD) on a device-resident batch, timed after warm-up with CUDA
   synchronisation: images/s, peak memory (``torch.cuda.max_memory_allocated``), achieved TFLOP/s
   from the analytic count of bench_gpu_sim (:func:`vit_flops`), and the 800-image epoch this
   implies next to bench_gpu_sim's anchor (0.18 s at p = 50, H100-class at 40 % of peak);
3. one real ``run_trial`` of 2 epochs on the synthetic task (device-resident data, evaluation,
   checkpoint policy): its seconds per epoch;
4. ``vptsearch launch --smoke`` of search_spaces/vtab_deep.yaml pointed at the synthetic task,
   ViT-B/16 ``weights: none``, on the GPU (resources gpu 0.5): exit status, wall seconds, the tail
   of its output.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ARCH = "vit_base_patch16_224"
TASK = "gpucheck/synthetic224"
LENGTHS = (1, 50, 200)
IMPLS = ("tokens", "prefix_kv")


def _sim() -> Any:
    """bench_gpu_sim as a module (vit_flops, the anchor): one FLOP count for both benchmarks."""
    spec = importlib.util.spec_from_file_location("bench_gpu_sim", HERE / "bench_gpu_sim.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_synthetic_task(root: Path, images: int) -> str:
    """A VTAB-1k-shaped task of random 224-px images (labels from a stripe pattern) in ``root``."""
    import numpy as np

    from vptsearch.data import Sample, TaskInfo
    from vptsearch.data._writer import write_task

    info = TaskInfo(name=TASK, suite="gpucheck", group="custom", num_classes=10, build_hint="(gpu_check)")
    rng = np.random.default_rng(0)
    n_train, n_val = images, max(1, images // 4)

    def samples(prefix: str, n: int) -> list[Any]:
        out = []
        for i in range(n):
            label = int(rng.integers(10))
            img = rng.integers(0, 64, (224, 224, 3), dtype=np.uint8)
            img[:, label * 22 : label * 22 + 22] += 128  # a learnable cue
            out.append(Sample(f"{prefix}{i:05d}", img, label))
        return out

    train, val = samples("t", n_train), samples("v", n_val)
    write_task(info, {"train800": train, "val200": val, "train800val200": train + val, "test": val},
               class_names=[f"c{i}" for i in range(10)], builder="gpu_check", root=root)  # fmt: skip
    return TASK


def _train_step(model: Any, opt: Any, x: Any, y: Any) -> None:
    """One step as run_trial takes it on cuda: bf16 autocast forward, fp32 loss, SGD."""
    import torch
    import torch.nn.functional as F

    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def speed_table(steps: int, batch: int) -> dict[str, Any]:
    """Training img/s, peak memory and TFLOP/s for tokens vs prefix_kv at each p."""
    import torch

    from vptsearch.models import build_model, load_backbone
    from vptsearch.train import freeze_backbone

    sim = _sim()
    dev = torch.device("cuda")
    bb = freeze_backbone(load_backbone(ARCH, weights="none"))
    bb.model.to(dev)
    x = torch.randn(batch, 3, 224, 224, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    cells: dict[str, Any] = {}
    for impl in IMPLS:
        for p in LENGTHS:
            model = build_model(bb, 10, "vpt", prompt_length=p, depth="deep", deep_impl=impl).to(dev)
            opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.01, momentum=0.9)
            model.train()
            for _ in range(3):  # warm-up: kernels chosen, allocator settled
                _train_step(model, opt, x, y)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(steps):
                _train_step(model, opt, x, y)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            ips = steps * batch / seconds
            flops = sim.vit_flops(p, impl=impl)
            cells[f"{impl}_p{p}"] = {
                "images_per_s": round(ips, 1),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                "train_gflop_per_image": round(flops / 1e9, 2),
                "achieved_tflops": round(ips * flops / 1e12, 1),
                "epoch_800_s": round(800 / ips, 4),
            }
            del model, opt
            torch.cuda.empty_cache()
    ratios = {f"prefix_kv_over_tokens_p{p}": round(cells[f"prefix_kv_p{p}"]["images_per_s"]
                                                   / cells[f"tokens_p{p}"]["images_per_s"], 3)
              for p in LENGTHS}  # fmt: skip
    return {"batch": batch, "steps": steps, "cells": cells, "speed_ratios": ratios,
            "sim_anchor_epoch_s_p50": round(sim.ANCHOR_EPOCH_S, 4)}  # fmt: skip


def _spec_raw(root: Path, data_root: Path, epochs: int | None = None) -> dict[str, Any]:
    """vtab_deep.yaml on the synthetic task, ViT-B/16 random weights, half a GPU per trial;
    ``epochs`` (the run_trial part): that many epochs, ASHA's grace cut to fit."""
    raw = yaml.safe_load((HERE.parent / "search_spaces" / "vtab_deep.yaml").read_text())
    raw.update(
        suite=[TASK], data_root=str(data_root), run_dir=str(root / "runs"),
        backbone={"name": ARCH, "weights": "none"},
        tracking={"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "gpu_check"},
        export={"dir": str(root / "exports")}, resources={"cpu": 4, "gpu": 0.5},
    )  # fmt: skip
    if epochs is not None:
        raw["training"] = {**raw["training"], "epochs": epochs, "warmup_epochs": 1}
        raw["scheduler"] = {**raw["scheduler"], "grace_period": 1}
    raw["protocol"] = {**raw.get("protocol", {}), "probe": False}
    return raw


def one_trial(root: Path, data_root: Path) -> dict[str, Any]:
    """A real run_trial (2 epochs, p = 50 tokens, spt-mean off: random init) on the GPU."""
    from vptsearch.spec import spec_from_dict
    from vptsearch.train import ListReporter, run_trial

    spec = spec_from_dict(_spec_raw(root, data_root, epochs=2))
    rep = ListReporter()
    t0 = time.perf_counter()
    res = run_trial({"method": "vpt", "prompt.length": 50, "prompt.depth": "deep", "prompt.init": "random",
                     "optim.base_lr": 1.0, "optim.weight_decay": 0.0}, task=TASK, spec=spec, reporter=rep)
    return {"status": res.status, "seconds": round(time.perf_counter() - t0, 2),
            "epoch_seconds": [round(r["epoch_seconds"], 4) for r in rep.results],
            "val_acc": res.val_acc}  # fmt: skip


def launch_smoke(root: Path, data_root: Path, timeout: float) -> dict[str, Any]:
    space = root / "gpu_check_space.yaml"
    space.write_text(yaml.safe_dump(_spec_raw(root, data_root)))  # --smoke: 3 epochs, 4 trials
    cmd = [sys.executable, "-m", "vptsearch.cli", "launch", "--space", str(space), "--smoke",
           "--no-dashboard"]
    env = {**os.environ, "VPTSEARCH_DATA": str(data_root)}
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, timeout=timeout)
        rc, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}{exc.stderr or ''}"
    return {"command": " ".join(cmd[1:]), "returncode": rc, "seconds": round(time.perf_counter() - t0, 1),
            "ok": rc == 0, "output_tail": text[-2000:]}  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per (impl, p) cell")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=800, help="train800 size of the synthetic task")
    ap.add_argument("--no-launch", action="store_true", help="skip the run_trial and launch --smoke parts")
    ap.add_argument("--launch-timeout", type=float, default=180.0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    import torch

    result: dict[str, Any] = {"benchmark": "gpu_check", "torch": torch.__version__,
                              "cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        result["skipped"] = "no CUDA device"
        print(json.dumps(result, indent=2))
        print("gpu_check: skipped, no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return result
    t0 = time.perf_counter()
    result["device"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="vptsearch-gpucheck-") as tmp:
        root = Path(tmp)
        data_root = root / "data"
        t = time.perf_counter()
        result["task"] = {"name": write_synthetic_task(data_root, args.images),
                          "write_seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
        result["speed"] = speed_table(args.steps, args.batch)
        if not args.no_launch:
            os.environ["VPTSEARCH_DATA"] = str(data_root)
            result["run_trial"] = one_trial(root, data_root)
            result["launch_smoke"] = launch_smoke(root, data_root, args.launch_timeout)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
