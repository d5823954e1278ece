"""Seconds of every prompt initialiser on all training tokens of a VTAB-1k-size task, next to one trial.

    python benchmarks/bench_spt_init.py           # mini/digits train800val200 (1 000 images), p = 10, 50, 200
    python benchmarks/bench_spt_init.py --smoke   # 16 images, p = 10, a 1-epoch trial: seconds, same JSON

Initialisers (``vptsearch.models.initialize_prompts``, VPT-deep, the shipped ``vptsearch-tiny-sup``
backbone): ``random``, ``spt-mean``, ``spt-max``, ``spt-sample``, ``spt-kmeans`` for each prompt
length p, and ``cls-prototype`` at p = number of classes (the only length it accepts). The images
are the task's final train split (train800val200: 1 000 images, every patch token of every layer),
preprocessed as trials do (eval transform, backbone normalisation), decoded once before timing.
Every initialiser's time includes its forward passes through the frozen backbone.

One trial: the mini_deep_full recipe (``search_spaces/mini_deep_full.yaml``: VPT-deep, batch 32, its epochs)
on the task's search split at p = 10 with random init, timed by ``run_trial`` for ``--trial-epochs``
epochs; ``trial_seconds = median(epoch_seconds) x recipe epochs`` (stated in the JSON), so a short
measurement stands in for the full trial. Ratios: initialiser seconds / trial seconds; target for
spt-kmeans: <= 5 % at every p.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

STRATEGIES = ("random", "spt-mean", "spt-max", "spt-sample", "spt-kmeans")
TARGET_KMEANS_FRACTION = 0.05
SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "mini_deep_full.yaml"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="16 images, p = 10, 1 trial epoch")
    ap.add_argument("--task", default="mini/digits")
    ap.add_argument("--split", default="train800val200", help="images to initialise from (all of them)")
    ap.add_argument("--images", type=int, default=0, help="use only the first N images (0: all)")
    ap.add_argument("--lengths", default="10,50,200")
    ap.add_argument("--trial-epochs", type=int, default=2, help="epochs of the timed trial (extrapolated)")
    ap.add_argument("--repeats", type=int, default=1, help="timings per initialiser (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (trials run with 1: resources.cpu)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.lengths, args.trial_epochs = args.images or 16, "10", 1
    try:
        args.p = [int(v) for v in args.lengths.split(",")]
    except ValueError:
        ap.error(f"--lengths {args.lengths!r}: expected comma-separated integers, e.g. 10,50,200")
    if args.trial_epochs < 1 or args.repeats < 1 or args.threads < 1 or min(args.p) < 1:
        ap.error("--trial-epochs, --repeats, --threads and every --lengths value must be >= 1")
    return args


def load_images(task: str, split: str, spec: Any, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``split`` as the trial's initialiser sees them (eval transform, normalised)."""
    from vptsearch.data import make_loader
    from vptsearch.train import get_backbone

    bb = get_backbone(spec)
    xs, ys = [], []
    for x, y in make_loader(task, split, root=spec.data_root, batch_size=256, image_size=bb.image_size,
                            mean=bb.mean, std=bb.std, train=False):
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    if not limit:
        return x, y
    # Round-robin over classes, so a few images still hold every class (cls-prototype needs them all).
    rank = torch.zeros_like(y)
    for c in y.unique():
        rank[y == c] = torch.arange(int((y == c).sum()))
    keep = torch.argsort(rank * (int(y.max()) + 1) + y)[:limit]
    return x[keep], y[keep]


def time_init(backbone: Any, classes: int, p: int, strategy: str, x: torch.Tensor, y: torch.Tensor,
              repeats: int) -> float:
    from vptsearch.models import build_model, initialize_prompts

    times = []
    for _ in range(repeats):
        model = build_model(backbone, classes, "vpt", prompt_length=p, depth="deep")
        t0 = time.perf_counter()
        initialize_prompts(model, strategy, x, y, seed=0, batch_size=256)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_trial(task: str, spec: Any, epochs: int) -> dict[str, Any]:
    """Median epoch seconds of the mini_deep_full recipe at p = 10, random init, over ``epochs`` epochs."""
    from vptsearch.train import ListReporter, run_trial

    rep = ListReporter(stop_after=epochs)
    # the space's fixed head norm: without it the probe-fitted head (the default head.init) is folded
    # onto raw features, where SGD at this lr diverges on the sup backbone
    config = {"method": "vpt", "prompt.length": 10, "prompt.init": "random", "optim.base_lr": 2.5,
              "optim.weight_decay": 0.0, "head.norm": "batchnorm"}
    run_trial(config, task=task, spec=spec, reporter=rep, threads=torch.get_num_threads())
    per_epoch = [r["epoch_seconds"] for r in rep.results]
    return {
        "config": config,
        "measured_epochs": len(per_epoch),
        "epoch_seconds": [round(v, 3) for v in per_epoch],
        "median_epoch_seconds": statistics.median(per_epoch),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    from vptsearch.data import get_task
    from vptsearch.spec import load_spec
    from vptsearch.train import get_backbone

    spec = load_spec(SPACE)
    info = get_task(args.task, spec.data_root)
    backbone = get_backbone(spec)
    t0 = time.perf_counter()
    x, y = load_images(args.task, args.split, spec, args.images)
    load_s = time.perf_counter() - t0
    seconds: dict[str, dict[str, float]] = {}
    for p in args.p:
        seconds[f"p{p}"] = {s: round(time_init(backbone, info.num_classes, p, s, x, y, args.repeats), 4)
                            for s in STRATEGIES}
    classes = info.num_classes
    seconds[f"p{classes}"] = {
        **seconds.get(f"p{classes}", {}),
        "cls-prototype": round(time_init(backbone, classes, classes, "cls-prototype", x, y, args.repeats), 4),
    }
    trial = time_trial(args.task, spec, args.trial_epochs)
    trial_s = trial["median_epoch_seconds"] * spec.training.epochs
    ratios = {p: {s: round(v / trial_s, 5) for s, v in per.items()} for p, per in seconds.items()}
    kmeans = [r["spt-kmeans"] for r in ratios.values() if "spt-kmeans" in r]
    n_tokens = int(x.shape[0]) * int(backbone.model.patch_embed.num_patches)
    result = {
        "benchmark": "spt_init",
        "smoke": args.smoke,
        "task": args.task,
        "split": args.split,
        "images": int(x.shape[0]),
        "image_load_seconds": round(load_s, 3),
        "tokens_per_layer": n_tokens,
        "layers": len(backbone.model.blocks),
        "backbone": spec.backbone.name,
        "init_seconds": seconds,
        "trial": {
            **trial,
            "recipe": str(SPACE.relative_to(SPACE.parents[1])),
            "epochs": spec.training.epochs,
            "batch_size": spec.training.batch_size,
            "train_images": info.sizes.get(info.search_splits[0]),
            "seconds": round(trial_s, 3),
            "formula": "median(epoch_seconds) x training.epochs",
        },
        "ratio_to_trial": ratios,
        "target": f"spt-kmeans <= {TARGET_KMEANS_FRACTION:.0%} of a trial at every p",
        "meets_target": bool(kmeans) and max(kmeans) <= TARGET_KMEANS_FRACTION,
        "threads": torch.get_num_threads(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
    }
    print(json.dumps(result, indent=2))
    epoch_s = trial["median_epoch_seconds"]
    print(f"one trial ~ {trial_s:.1f} s ({epoch_s:.2f} s/epoch x {spec.training.epochs})", file=sys.stderr)
    for p, per in seconds.items():
        cells = "  ".join(f"{s} {v:.2f}s ({100 * ratios[p][s]:.1f}%)" for s, v in per.items())
        print(f"{p:>5}: {cells}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
