"""Train-step time of VPT-deep (token path and prefix_kv fast path) vs full fine-tuning, side by side.

    python benchmarks/bench_model_step.py            # ViT sized like the shipped tiny backbone, CPU
    python benchmarks/bench_model_step.py --smoke    # seconds, for CI: same JSON shape
    python benchmarks/bench_model_step.py --arch vit_base_patch16_224 --image-size 224 --device cuda

Prints one JSON object: median milliseconds per train step (forward + backward + SGD step) for
full fine-tuning and VPT-deep at p in {1, 10, 50, 200} on both deep paths (per-sample prompt-dropout
masks, the default, so prefix_kv computes per-sample prompt K/V; plus prefix_kv with the batch-shared
mask, whose prompt K/V are batch-free, for comparison), all on the same model
weights and the same batch, measured round-robin (configurations interleaved in every repeat, so
machine load drifts hit all of them alike), plus the two target ratios:
    prefix_kv step(p=200) / step(p=1) <= 1.15        VPT-deep step / full step at p=10 <= 0.75
and prefix_kv / tokens at every p (the fast path must stay faster with per-sample masks).
and the time of SPT k-means initialisation on --kmeans-images images (all patch tokens, every layer).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

import timm
import torch
import torch.nn.functional as F

from vptsearch.models import build_model, initialize_prompts

TARGET_PREFIX_RATIO = 1.15
TARGET_VPT_OVER_FULL = 0.75


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and one repeat: runs in seconds")
    ap.add_argument("--arch", default="vit_tiny_patch16_224", help="timm architecture (random weights)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--timm-defaults", action="store_true", help="use --arch's own sizes, not the above")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lengths", default="1,10,50,200")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3, help="train steps per timed block")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompt-dropout", type=float, default=0.1)
    ap.add_argument("--kmeans-images", type=int, default=1000)
    ap.add_argument("--kmeans-lengths", default="10,200")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.depth, args.batch, args.repeats, args.steps, args.warmup = 2, 8, 1, 1, 1
        args.kmeans_images, args.kmeans_lengths = 40, "10"
    return args


def make_backbone(args: argparse.Namespace) -> torch.nn.Module:
    kwargs: dict[str, Any] = {"num_classes": 0}
    if not args.timm_defaults:
        kwargs.update(
            img_size=args.image_size, patch_size=args.patch, embed_dim=args.width,
            depth=args.depth, num_heads=args.heads,
        )
    torch.manual_seed(0)
    return timm.create_model(args.arch, pretrained=False, **kwargs).to(args.device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = make_backbone(args)
    size = int(backbone.patch_embed.img_size[0])
    lengths = [int(p) for p in args.lengths.split(",")]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=gen).to(args.device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(args.device)

    configs: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {}

    def add(name: str, method: str, **opts: Any) -> None:
        model = build_model(backbone, 10, method, **opts).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        configs[name] = (model, opt)

    add("full", "full")
    for p in lengths:
        for impl in ("tokens", "prefix_kv"):
            add(f"{impl}/p{p}", "vpt", prompt_length=p, depth="deep",
                prompt_dropout=args.prompt_dropout, deep_impl=impl)
        add(f"prefix_kv_batchmask/p{p}", "vpt", prompt_length=p, depth="deep",
            prompt_dropout=args.prompt_dropout, deep_impl="prefix_kv", dropout_mask="batch")

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for model, opt in configs.values():
        for _ in range(args.warmup):
            step(model, opt)
    _sync(args.device)
    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order per repeat
            model, opt = configs[name]
            _sync(args.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, opt)
            _sync(args.device)
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    ms = {name: statistics.median(v) for name, v in times.items()}

    p_lo, p_hi = min(lengths), max(lengths)
    p_mid = 10 if 10 in lengths else lengths[len(lengths) // 2]
    ratios = {
        f"prefix_kv_p{p_hi}_over_p{p_lo}": ms[f"prefix_kv/p{p_hi}"] / ms[f"prefix_kv/p{p_lo}"],
        f"tokens_p{p_hi}_over_p{p_lo}": ms[f"tokens/p{p_hi}"] / ms[f"tokens/p{p_lo}"],
        f"vpt_deep_prefix_kv_over_full_p{p_mid}": ms[f"prefix_kv/p{p_mid}"] / ms["full"],
        f"vpt_deep_tokens_over_full_p{p_mid}": ms[f"tokens/p{p_mid}"] / ms["full"],
        **{f"prefix_kv_over_tokens_p{p}": ms[f"prefix_kv/p{p}"] / ms[f"tokens/p{p}"] for p in lengths},
    }
    targets = {
        f"prefix_kv_p{p_hi}_over_p{p_lo} <= {TARGET_PREFIX_RATIO}":
            ratios[f"prefix_kv_p{p_hi}_over_p{p_lo}"] <= TARGET_PREFIX_RATIO,
        f"vpt_deep_prefix_kv_over_full_p{p_mid} <= {TARGET_VPT_OVER_FULL}":
            ratios[f"vpt_deep_prefix_kv_over_full_p{p_mid}"] <= TARGET_VPT_OVER_FULL,
        "prefix_kv_over_tokens < 1 at every p": all(
            ratios[f"prefix_kv_over_tokens_p{p}"] < 1 for p in lengths
        ),
    }

    # Why the p=200/p=1 ratio depends on model size: forward multiply-adds per image and layer of the
    # prefix_kv path are 12*N*d^2 (qkv, proj, MLP) + 2*N*(N+p)*d (attention over N+p keys), plus
    # 2*p*d^2/B for the batch-free prompt K/V (2*p*d^2 per image with per-sample dropout masks); the
    # attention term grows with p, the rest does not.
    n_tok, d = backbone.patch_embed.num_patches + backbone.num_prefix_tokens, backbone.embed_dim

    def macs(p: int) -> float:
        return 12 * n_tok * d * d + 2 * n_tok * (n_tok + p) * d + 2 * p * d * d / args.batch

    analytic = {f"prefix_kv_forward_macs_p{p_hi}_over_p{p_lo}": round(macs(p_hi) / macs(p_lo), 4)}

    kmeans_s: dict[str, float] = {}
    if args.kmeans_images:
        imgs = torch.randn(args.kmeans_images, 3, size, size, generator=gen)
        for p in [int(v) for v in args.kmeans_lengths.split(",")]:
            model = build_model(backbone, 10, prompt_length=p, depth="deep")
            start = time.perf_counter()
            initialize_prompts(model, "spt-kmeans", imgs, batch_size=min(256, args.kmeans_images))
            _sync(args.device)
            kmeans_s[f"p{p}"] = round(time.perf_counter() - start, 3)

    tokens_per_image = backbone.patch_embed.num_patches
    result = {
        "benchmark": "model_step",
        "smoke": args.smoke,
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "model": {
            "arch": args.arch, "image_size": size, "patch": backbone.patch_embed.patch_size[0],
            "width": backbone.embed_dim, "depth": len(backbone.blocks),
            "heads": backbone.blocks[0].attn.num_heads, "tokens": tokens_per_image + 1,
        },
        "batch": args.batch,
        "prompt_dropout": args.prompt_dropout,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "step_ms": {name: round(v, 3) for name, v in ms.items()},
        "ratios": {k: round(v, 4) for k, v in ratios.items()},
        "targets_met": targets,
        "analytic": analytic,
        "spt_kmeans_init_seconds": kmeans_s,
        "spt_kmeans_images": args.kmeans_images,
        "spt_kmeans_tokens_per_layer": args.kmeans_images * tokens_per_image,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
