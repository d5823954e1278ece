"""Sub-commands of the search engine: launch, report, export, predict, sync (ui, doctor, monitor
live in their own modules).

Library imports sit inside the commands: ``vptsearch --help`` and each command import only what
they use (Ray, torch and MLflow take seconds to import).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vptsearch._errors import ConfigError
from vptsearch.search import _runlock
from vptsearch.search._doctor_cli import add_command as add_doctor
from vptsearch.search._monitor import add_command as add_monitor
from vptsearch.search._report import OPTIONAL_COLUMNS, SUMMARY_COLUMNS, probe_gap_warning, running_line
from vptsearch.search._rundir import RESULTS_FILE, latest_run_dir
from vptsearch.search._ui_cli import add_command as add_ui
from vptsearch.spec import load_spec


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="run a search space: search, select, retrain with final seeds, export")
    p.add_argument("--space", required=True, help="search space YAML (see search_spaces/)")
    p.add_argument("--address", help="Ray cluster address (HOST:PORT, ray://HOST:PORT, auto); default: local")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the space's tracking.uri)",
    )
    p.add_argument("--resume", action="store_true", help="continue the latest launch of this space")
    p.add_argument("--storage", metavar="URI",
                   help="Tune experiment storage: local/NFS path or s3://BUCKET/PREFIX "
                        "(default: $VPTSEARCH_STORAGE, else storage.path, else the run dir)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    p.add_argument("--smoke", action="store_true", help="shrink to a few short trials (same code paths)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("report", help="print the summary table of a launch")
    _run_args(p)
    p.add_argument("--trials", action="store_true", help="also list every search trial")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="re-export the bundles of a finished launch")
    _run_args(p)
    p.add_argument("--out", help="export folder or s3://BUCKET/PREFIX (default: the space's export.dir); "
                   "bundles go to OUT/<launch stamp>/<suite>__<task>, OUT/latest is the newest")  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="classify images with an exported bundle")
    p.add_argument("--bundle", required=True,
                   help="bundle folder (bundle.json + prompts.safetensors), e.g. "
                        "exports/<space>/latest/<suite>__<task>")  # fmt: skip
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=1, help="print the K most probable classes per image")
    p.add_argument(
        "--seed",
        type=int,
        help="use this final seed's prompts only (default: the ensemble of the bundle's seeds)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--no-verify", action="store_true", help="skip the backbone sha256 check")
    p.set_defaults(func=cmd_predict)

    add_ui(sub)  # ui: the MLflow UI of a launch's tracking store
    add_doctor(sub)  # doctor: versions, data, backbones, tracking

    p = sub.add_parser("sync", help="replay a launch's MLflow writes the tracking store missed")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the launch folder (runs/<name>/<stamp>)")
    p.add_argument("--tracking-uri", help="sync into this store instead (default: the launch's own)")
    p.set_defaults(func=cmd_sync)

    add_monitor(sub)  # monitor: a local Prometheus scraping the launch's Ray metrics


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--space", help="search space YAML: its latest launch")
    g.add_argument("--run-dir", help="a launch folder (runs/<name>/<stamp>)")


def _run_dir(args: argparse.Namespace, then: str) -> Path:
    """The launch folder asked for; a launch still running there is refused in one line that
    says how far it is and ``then`` (when what was asked for will be there)."""
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        found = latest_run_dir(load_spec(args.space), running=True)
        if found is None:
            raise ConfigError(
                f"no launch of {args.space!r} found; run `vptsearch launch --space {args.space}`"
            )
        run_dir = found
    _not_running(run_dir, then)
    if not (run_dir / RESULTS_FILE).is_file():
        raise ConfigError(f"{str(run_dir)!r} has no {RESULTS_FILE}: the launch did not finish (try --resume)")
    return run_dir


def _not_running(run_dir: Path, then: str) -> None:
    info = _runlock.holder(run_dir)
    if info is not None:
        raise _runlock.LaunchRunning(running_line(run_dir, info, then))


def _resume_args(args: argparse.Namespace) -> str:
    """What follows ``--space`` in the resume hint: the file and every option that shaped the spec
    or where it runs (``--smoke`` shrinks the spec a resume compares; the tracking URI is saved)."""
    given = [args.space, *(f"--set {shlex.quote(s)}" for s in args.set)]
    given += ["--smoke"] if args.smoke else []
    where = (("address", args.address), ("storage", args.storage))
    given += [f"--{k} {shlex.quote(v)}" for k, v in where if v]
    return " ".join(given + (["--no-dashboard"] if args.no_dashboard else []))


def cmd_launch(args: argparse.Namespace) -> int:
    # import cost (Ray, torch); called on the module, where the tests replace launch
    from vptsearch.search import _driver
    from vptsearch.search._tune_state import DiskFull

    spec = load_spec(args.space, overrides=args.set, smoke=args.smoke)
    try:
        summary = _driver.launch(spec, address=args.address, tracking_uri=args.tracking_uri,
                                 resume=args.resume, dashboard=not args.no_dashboard,
                                 storage=args.storage)  # fmt: skip
    except _driver.LaunchInterrupted as exc:
        # the resume hint names the file and the --set this launch was given (a resume compares them)
        exc.space = _resume_args(args)
        if isinstance(exc, DiskFull):  # a failed write: an error (1), resumable once space is freed
            print(f"vptsearch: error: {exc}", file=sys.stderr)
            return 1
        print(f"vptsearch: interrupted: {exc}", file=sys.stderr)
        return 130  # like a plain Ctrl-C: not bad input (2), not an incomplete result (1)
    problems = summary.problems()
    if problems:  # ran to the end, but not every task has a result: a script must notice
        print(f"vptsearch: error: launch {summary.launch_id} finished without a result: "
              f"{'; '.join(problems)}; see {summary.run_dir / 'report' / 'summary.md'}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from vptsearch.search._tracking import sync  # import cost: Ray Tune, MLflow

    # the running launch's own writer syncs its spool; a second writer of the same spool and
    # positions file could create a run twice or lose a position
    _not_running(Path(args.run_dir), "run `vptsearch sync` once it has ended")
    c = sync(args.run_dir, args.tracking_uri)
    print(
        f"synced {c.get('records', 0)} MLflow write(s) to {c['uri']}: "
        f"{c.get('runs_created', 0)} run(s) created, {c.get('runs_found', 0)} found, "
        f"{c.get('metrics', 0)} metric value(s) ({c.get('metrics_skipped', 0)} already there), "
        f"{c.get('params', 0)} param(s), {c.get('tags', 0)} tag(s), {c.get('artifacts', 0)} artifact(s); "
        f"{c['left']} left"
    )
    return 0


@contextlib.contextmanager
def _results_file(run_dir: Path) -> Iterator[None]:
    """A results.json that is not the one a launch writes (truncated, edited, another file's) is
    one line naming it, not a traceback from deep in the table or the export."""
    try:
        yield
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON and UTF-8 errors: ValueError
        why = f"{type(exc).__name__}: {str(exc)[:100]}" if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{run_dir / RESULTS_FILE}: not the results.json a launch writes ({why}); accepted: the "
            "file as the launch wrote it (run the launch again, or --resume it)"
        ) from None


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args, "its table is there once it ends (results.json and report/ are written then)")
    with _results_file(run_dir):
        res = _checked_results(json.loads((run_dir / RESULTS_FILE).read_bytes()))
    console = _report(res)  # outside: a fault in drawing the table is not the file's
    if args.trials:
        import pandas as pd  # import cost: only --trials reads the parquet

        console.print(pd.read_parquet(run_dir / "report" / "trials.parquet").to_string(index=False))
    return 0


# What the table reads from each row (results.json as ``LaunchResults.save`` writes it)
_ROW_KEYS = tuple(c for c in SUMMARY_COLUMNS if c not in OPTIONAL_COLUMNS)


def _checked_results(res: Any) -> dict[str, Any]:
    """``res`` if it has the shape :func:`_report` reads; else the KeyError/TypeError that
    :func:`_results_file` turns into its one line."""
    if not isinstance(res, dict) or not isinstance(res["launch_id"], str):
        raise TypeError("expected an object with a launch_id string")
    if not isinstance(res["rows"], list) or not isinstance(res["tasks"], dict):
        raise TypeError("expected rows (a list) and tasks (an object)")
    for row in res["rows"]:
        missing = [k for k in _ROW_KEYS if k not in row]
        if missing:
            raise KeyError(f"a row lacks {', '.join(missing)}")
    for task in res["tasks"].values():
        if not all(isinstance(v["val_acc"], (int, float)) for v in task["per_init"].values()):
            raise TypeError("per_init val_acc must be numbers")
    return res


def _report(res: dict[str, Any]) -> Any:
    """Print the summary table of a launch's results; returns the console it printed to."""
    from rich.console import Console  # import cost: only the report draws tables
    from rich.table import Table

    table = Table(title=f"vptsearch launch {res['launch_id']}")
    for col in ("task", "group", "method", "p", "init", "tuned %", "val", "test mean ± std", "ensemble test",
                "probe val / test", "gap to probe", "c/p/d/f"):  # fmt: skip
        table.add_column(col)

    def pct(v: Any) -> str:
        return "-" if v is None or v != v else f"{100 * v:.2f}"

    for r in res["rows"]:
        test = "-" if r["test_mean"] is None or r["test_mean"] != r["test_mean"] else \
            f"{100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f}"  # fmt: skip
        probe = "-" if r.get("probe_test") is None else f"{pct(r.get('probe_val'))} / {pct(r['probe_test'])}"
        table.add_row(
            r["task"], r["group"], str(r["method"] or "-"), str(r["p"] or "-"), str(r["init"] or "-"),
            "-" if r["tuned_percent"] is None else f"{r['tuned_percent']:.3f}",
            pct(r["val_acc"]), test, pct(r.get("ensemble_test")), probe,
            "-" if r.get("gap_to_probe") is None else f"{r['gap_to_probe']:+.2f}",
            "/".join(str(r[k]) for k in ("completed", "pruned", "diverged", "failed")),
        )  # fmt: skip
    console = Console(width=None if sys.stdout.isatty() else 160)  # pipes get the full table
    console.print(table)
    best = {t: (v.get("best") or {}).get("config", {}) for t, v in res.get("tasks", {}).items()}
    warning = probe_gap_warning(res["rows"], best)
    if warning:
        console.print(warning, soft_wrap=True, markup=False)
    if res.get("error"):
        console.print(f"the launch failed after its search: {res['error']}", soft_wrap=True)
    where = res.get("bundles_dir")
    console.print(f"bundles: {where} (this launch's; <suite>__<task> folders)" if where else
                  "bundles: none exported by this launch", soft_wrap=True)  # fmt: skip
    for task, t in res["tasks"].items():
        inits = ", ".join(f"{k} {100 * v['val_acc']:.2f}" for k, v in t["per_init"].items())
        console.print(f"{task}: best val per init strategy: {inits or '-'}", soft_wrap=True)
    return console


def cmd_export(args: argparse.Namespace) -> int:
    from vptsearch.search._export import export_bundles  # import cost: torch
    from vptsearch.search._results import LaunchResults  # import cost: Ray, Optuna (via _protocol)

    run_dir = _run_dir(args, "export its bundles once it has ended (a launch exports its own at its end)")
    with _results_file(run_dir):
        results = LaunchResults.load(run_dir)
    bundles = export_bundles(run_dir, args.out, results=results)  # its progress lines: logging
    for task, path in bundles.items():
        print(f"{task}\t{path}")
    if not bundles:
        print("no task of this launch has a finished final phase to export", file=sys.stderr)
        return 1
    where = str(results.bundles_dir)
    print(f"bundles of {run_dir.name}: {where}; the newest launch's: {where.rsplit('/', 1)[0]}/latest")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Good images are printed (top-k lines each, or one JSON line), each bad one is one error line
    on stderr, and the exit status is 2 if any failed."""
    from vptsearch.search import predict  # import cost: torch, timm

    failed = 0
    for p in predict(args.bundle, args.images, verify=not args.no_verify, top_k=args.top_k,
                     seed=args.seed, errors="collect"):  # fmt: skip
        if "error" in p:
            failed += 1
            print(f"vptsearch: error: {p['error']}", file=sys.stderr)
        elif args.json:
            print(json.dumps(p))
        else:
            for name, prob in p["top"]:
                print(f"{p['image']}\t{name}\t{prob:.4f}")
    return 2 if failed else 0
