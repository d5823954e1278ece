"""Reproduce the shipped tiny backbones `vptsearch-tiny-sup` and `vptsearch-tiny-mae`.

Commands (from the repository root):

    nice -n 5 .venv/bin/python pipelines/pretrain_tiny_backbones.py           # both, in parallel
    .venv/bin/python pipelines/pretrain_tiny_backbones.py --probe             # linear probes -> cards

The first runs the two pretrainings as two processes with one torch thread each (the same as
`--only sup --threads 1` and `--only mae --threads 1` side by side; that is how the shipped weights
were made). Expected runtime on the 2-core reference machine, measured while other jobs shared it:
supervised 1 400 steps in 784 s, MAE 1 500 steps in 1 088 s, so ~20 min for both in parallel
("train_seconds" in each card). The probes take 0.5-5 min (load-dependent) once
`vptsearch data build-mini` has built the mini suite (`--data-root` points at another build).
Everything is seeded and the data is generated on the fly (vptsearch.models._shape_stream), so
nothing is downloaded. Bit-identical weights are expected only with the same torch build and
thread count (CPU kernels may reduce in a different order).

Outputs: vptsearch/assets/<name>.safetensors + <name>.json (model card with sha256, recipe, probes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling _tiny_pretrain, however run

import _tiny_pretrain as _pretrain

from vptsearch.probe import probe_card

ASSETS = Path(__file__).resolve().parents[1] / "vptsearch" / "assets"
STEPS = {"sup": 1400, "mae": 1500}  # batches of 128
NAMES = {"sup": "vptsearch-tiny-sup", "mae": "vptsearch-tiny-mae"}


def _parallel(args: argparse.Namespace) -> int:
    """Both pretrainings at once, one thread each: on 2 cores this beats 2 threads one after the other."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--only",
                key,
                "--threads",
                "1",
                "--out",
                str(args.out),
                "--steps-scale",
                str(args.steps_scale),
            ]
        )
        for key in ("sup", "mae")
    ]
    return max(p.wait() for p in procs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ASSETS, help="output folder (default: vptsearch/assets)")
    ap.add_argument("--only", choices=["sup", "mae"], help="pretrain just one of the two")
    ap.add_argument("--probe", action="store_true", help="only run the linear probes and update the cards")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="scale the step counts (smoke runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", type=Path, help="shard root of the mini suite (default: vptsearch's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.probe:
        for key in [args.only] if args.only else ["sup", "mae"]:
            results = probe_card(args.out / f"{NAMES[key]}.json", root=args.data_root)
            print(NAMES[key], results, flush=True)
        return 0
    if not args.only:
        return _parallel(args)

    key = args.only
    script = "nice -n 5 .venv/bin/python pipelines/pretrain_tiny_backbones.py"
    command = f"{script} --only {key} --threads {args.threads}"
    steps = max(10, int(STEPS[key] * args.steps_scale))
    warmup = max(1, steps // 20)

    def log(msg: str) -> None:
        print(f"[{NAMES[key]}] {msg}", flush=True)

    if key == "sup":
        model, recipe = _pretrain.pretrain_supervised(steps=steps, warmup=warmup, log=log)
        kwargs = _pretrain.TINY_KWARGS
    else:
        model, recipe = _pretrain.pretrain_mae(steps=steps, warmup=warmup, log=log)
        kwargs = _pretrain.TINY_MAE_KWARGS
    card = _pretrain.make_card(NAMES[key], kwargs, recipe, command, threads=args.threads)
    path = _pretrain.save_backbone(model, args.out, NAMES[key], card)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
