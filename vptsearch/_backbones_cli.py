"""``vptsearch backbones``: the models layer's actions plus ``probe``, which reads data.

The probe fits a linear classifier on a task's frozen features, so it needs vptsearch.data and
vptsearch.probe, which the models layer must not import; this module sits above both and adds
``probe`` to the group vptsearch.models._cli builds.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from vptsearch._errors import ConfigError
from vptsearch.models import _cli as models_cli


def add_commands(subparsers: Any) -> None:
    models_cli.add_commands(subparsers, more=_add_probe)


def _add_probe(sub: Any) -> None:
    q = sub.add_parser(
        "probe",
        help="standardised logistic-regression probe of the frozen features on a task (val and test)",
        description="Fit StandardScaler + LogisticRegression on the frozen features (what the "
        "`linear` method's head sees): C chosen on the search splits (train800 -> val200), refit on "
        "the final train split, accuracy on test. Cached next to the task's shards.",
    )
    q.add_argument("name", help="registered name, timm model name or weights file")
    q.add_argument(
        "--task", required=True, action="append", help="task or suite (repeatable): mini/digits, mini"
    )
    q.add_argument("--root", help="data root (default: $VPTSEARCH_DATA or ~/.cache/vptsearch/shards)")
    q.add_argument("--weights", help="hub | none | path (timm names); none (registered names)")
    q.add_argument("--architecture", help="timm architecture for a local weights file")
    q.add_argument("--model-kwargs", type=json.loads, default=None, help="JSON, e.g. '{\"img_size\": 32}'")
    q.add_argument("--image-size", type=int, help="input size (default: the backbone's)")
    q.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    q.add_argument("--no-cache", action="store_true", help="recompute even when a cached result exists")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    # data and the probe load when the command runs, not whenever the parser is built
    from vptsearch.data import resolve_tasks
    from vptsearch.models.backbones import load_backbone
    from vptsearch.probe import probe_task

    if args.image_size is not None and args.image_size < 1:
        raise ConfigError(f"--image-size must be a positive integer, got {args.image_size}")
    if args.device not in (None, "cpu", "cuda"):
        raise ConfigError(f"--device {args.device!r}: accepted: cpu, cuda")
    tasks = resolve_tasks(args.task, args.root)  # unknown names: one line with suggestions
    b = load_backbone(
        args.name, weights=args.weights, architecture=args.architecture, model_kwargs=args.model_kwargs
    )
    results = []
    for task in tasks:
        r = probe_task(b, task, root=args.root, image_size=args.image_size, device=args.device,
                       cache=not args.no_cache)  # fmt: skip
        results.append(r)
        if not args.json:
            fit, val = r["splits"]["select"]
            train, test = r["splits"]["report"]
            how = "cached" if r["cached"] else f"{r['seconds']:.1f} s"
            print(f"{b.name} on {task}: probe val {100 * r['val_acc']:.2f} % ({fit} -> {val}, C={r['C']:g}), "
                  f"test {100 * r['test_acc']:.2f} % ({train} -> {test}); {r['num_features']} features, "
                  f"{how}")  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))
    return 0
