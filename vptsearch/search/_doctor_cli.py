"""``vptsearch doctor``: versions, data, backbones, the Ray dashboard token and the tracking store.

Each check is one ``[ok  ]`` / ``[FAIL]`` / ``[note]`` line; the exit status is 1 if any failed.
Library imports sit inside the checks: a broken install is reported, not a crash at start.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata as md
import os
import platform
from pathlib import Path
from typing import Any

from vptsearch._errors import VptsearchError
from vptsearch.search import _monitor
from vptsearch.spec import load_spec


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check versions, data, backbones and tracking")
    p.add_argument("--space", help="also check this search space (spec, data, backbone, tracking)")
    p.add_argument("--root", help="data root (default: $VPTSEARCH_DATA or ~/.cache/vptsearch/shards)")
    p.add_argument("--tracking-uri",
                   help="check this MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                        "space's tracking.uri, else sqlite:///mlflow.db)")  # fmt: skip
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    problems = 0

    def line(ok: bool | None, what: str, detail: str = "") -> None:
        nonlocal problems
        mark = {True: "ok  ", False: "FAIL", None: "note"}[ok]
        problems += ok is False
        print(f"[{mark}] {what}{': ' + detail if detail else ''}")

    line(True, "python", platform.python_version())
    for pkg in ("torch", "timm", "ray", "optuna", "mlflow", "webdataset", "safetensors"):
        try:
            line(True, pkg, md.version(pkg))
        except md.PackageNotFoundError:
            line(False, pkg, "not installed")
    line(True, "cpu cores", str(os.cpu_count()))
    try:
        import torch  # optional here: doctor reports a broken install instead of failing on it

        line(None, "cuda", "available" if torch.cuda.is_available() else "not available (CPU run)")
    except ImportError:
        pass
    from vptsearch.data import built_tasks, data_root  # import cost, like every library import here

    root = data_root(args.root)
    built = built_tasks(root)
    line(bool(built) or None, "data root", f"{root}: {len(built)} task(s) built"
         + ("" if built else "; build the offline suite with `vptsearch data build-mini`"))  # fmt: skip
    try:
        from vptsearch.models import list_backbones  # a broken models install is a FAIL line

        line(True, "backbones", ", ".join(list_backbones()))
    except (ImportError, AttributeError) as exc:
        line(False, "backbones", str(exc))
    token = Path.home() / ".ray" / "auth_token"
    line(
        None,
        "ray auth token",
        f"{token} ({'present' if token.is_file() else 'absent: created on first start'})",
    )
    # The dashboard opens on a token dialog (Ray 2.60 token auth): say which token to paste.
    line(None, "ray dashboard", f"{_monitor.token_hint(joined=False)}; a joined cluster's: "
         "$RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token")  # fmt: skip
    prom = _monitor.find_prometheus()
    line(None, "prometheus", f"{prom}: `vptsearch monitor` charts a launch" if prom else
         "not installed: `vptsearch monitor` needs it (apt-get install prometheus)")  # fmt: skip
    spec_uri = None
    if args.space:
        try:
            spec_uri = _doctor_space(args.space, line)
        except VptsearchError as exc:
            line(False, f"space {args.space}", str(exc))
    _doctor_tracking(args.tracking_uri, spec_uri, line)
    print("all checks passed" if not problems else f"{problems} problem(s) found")
    return 0 if not problems else 1


def _doctor_space(path: str, line: Any) -> str:
    from vptsearch.data import data_root, resolve_tasks
    from vptsearch.search._preflight import check_data  # import cost: Ray, torch
    from vptsearch.train import get_backbone

    spec = load_spec(path)
    line(True, f"space {path}", f"{spec.name}: method {'|'.join(spec.methods)}, {len(spec.params)} params")
    spec = dataclasses.replace(spec, data_root=str(data_root(spec.data_root)), build_missing=False)
    tasks = resolve_tasks(spec.suite if isinstance(spec.suite, str) else list(spec.suite), spec.data_root)
    try:
        check_data(spec, tasks)
        line(True, "data", f"{len(tasks)} task(s) built under {spec.data_root}")
    except VptsearchError as exc:
        line(None if load_spec(path).build_missing else False, "data", str(exc))
    b = get_backbone(spec)
    line(True, "backbone", f"{spec.backbone.name} ({b.source}, sha256 {str(b.sha256)[:12]}...)")
    return spec.tracking.uri


def _doctor_tracking(flag: str | None, spec_uri: str | None, line: Any) -> None:
    """The store a launch would use: ``--tracking-uri``, else $MLFLOW_TRACKING_URI, else the
    space's ``tracking.uri``, else the default ``sqlite:///mlflow.db`` (launch's order)."""
    from vptsearch.search._tracking import check_tracking_uri, tracking_uri_for  # import cost: Ray Tune

    uri = tracking_uri_for(flag, spec_uri or "sqlite:///mlflow.db")
    source = ("--tracking-uri" if flag else "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
              else "the space's tracking.uri" if spec_uri else "default")  # fmt: skip
    try:
        line(True, "tracking", f"{check_tracking_uri(uri)} (from {source})")
    except VptsearchError as exc:
        line(False, "tracking", f"{exc} (from {source})")
