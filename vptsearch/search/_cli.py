"""Sub-commands of the search engine: launch, report, export, predict, ui, doctor."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from vptsearch._errors import ConfigError, VptsearchError

UI_STATE = Path(".vptsearch") / "ui.json"  # our own `mlflow ui` process, so --stop ends only that one


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="run a search space: search, select, retrain with final seeds, export")
    p.add_argument("--space", required=True, help="search space YAML (see search_spaces/)")
    p.add_argument("--address", help="Ray cluster address (HOST:PORT, ray://HOST:PORT, auto); default: local")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the space's tracking.uri)")
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
    p.add_argument("--seed", type=int,
                   help="use this final seed's prompts only (default: the ensemble of the bundle's seeds)")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument("--no-verify", action="store_true", help="skip the backbone sha256 check")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for a launch's tracking store")
    p.add_argument("--space", help="search space YAML: use its latest launch's tracking URI")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the space's latest launch's, "
                   "else $MLFLOW_TRACKING_URI, else the space's tracking.uri, else sqlite:///mlflow.db)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--experiment", help="experiment whose runs page to print (default: the space's)")
    p.add_argument("--stop", action="store_true", help="stop the UI this command started")
    p.add_argument("--foreground", action="store_true", help="run in the foreground until Ctrl-C")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("doctor", help="check versions, data, backbones and tracking")
    p.add_argument("--space", help="also check this search space (spec, data, backbone, tracking)")
    p.add_argument("--root", help="data root (default: $VPTSEARCH_DATA or ~/.cache/vptsearch/shards)")
    p.add_argument("--tracking-uri",
                   help="check this MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                        "space's tracking.uri, else sqlite:///mlflow.db)")  # fmt: skip
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("sync", help="replay a launch's MLflow writes the tracking store missed")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the launch folder (runs/<name>/<stamp>)")
    p.add_argument("--tracking-uri", help="sync into this store instead (default: the launch's own)")
    p.set_defaults(func=cmd_sync)

    from vptsearch.search._monitor import add_command as add_monitor

    add_monitor(sub)  # monitor: a local Prometheus scraping the launch's Ray metrics


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--space", help="search space YAML: its latest launch")
    g.add_argument("--run-dir", help="a launch folder (runs/<name>/<stamp>)")


def _run_dir(args: argparse.Namespace) -> Path:
    from vptsearch.search._rundir import RESULTS_FILE, latest_run_dir
    from vptsearch.spec import load_spec

    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        found = latest_run_dir(load_spec(args.space))
        if found is None:
            raise ConfigError(
                f"no launch of {args.space!r} found; run `vptsearch launch --space {args.space}`"
            )
        run_dir = found
    if not (run_dir / RESULTS_FILE).is_file():
        raise ConfigError(f"{str(run_dir)!r} has no {RESULTS_FILE}: the launch did not finish (try --resume)")
    return run_dir


def cmd_launch(args: argparse.Namespace) -> int:
    from vptsearch.search._driver import LaunchInterrupted, launch
    from vptsearch.spec import load_spec

    spec = load_spec(args.space, overrides=args.set, smoke=args.smoke)
    try:
        summary = launch(spec, address=args.address, tracking_uri=args.tracking_uri, resume=args.resume,
                         dashboard=not args.no_dashboard, storage=args.storage)  # fmt: skip
    except LaunchInterrupted as exc:
        exc.space = args.space  # the resume hint names the file this launch was given
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
    from vptsearch.search._tracking import sync

    c = sync(args.run_dir, args.tracking_uri)
    print(
        f"synced {c.get('records', 0)} MLflow write(s) to {c['uri']}: "
        f"{c.get('runs_created', 0)} run(s) created, {c.get('runs_found', 0)} found, "
        f"{c.get('metrics', 0)} metric value(s) ({c.get('metrics_skipped', 0)} already there), "
        f"{c.get('params', 0)} param(s), {c.get('tags', 0)} tag(s), {c.get('artifacts', 0)} artifact(s); "
        f"{c['left']} left"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from vptsearch.search._rundir import RESULTS_FILE

    run_dir = _run_dir(args)
    res = json.loads((run_dir / RESULTS_FILE).read_text())
    table = Table(title=f"vptsearch launch {res['launch_id']}")
    for col in ("task", "group", "method", "p", "init", "tuned %", "val", "test mean ± std", "ensemble test",
                "probe val / test", "c/p/d/f"):  # fmt: skip
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
            "/".join(str(r[k]) for k in ("completed", "pruned", "diverged", "failed")),
        )  # fmt: skip
    console = Console(width=None if sys.stdout.isatty() else 160)  # pipes get the full table
    console.print(table)
    if res.get("error"):
        console.print(f"the launch failed after its search: {res['error']}", soft_wrap=True)
    where = res.get("bundles_dir")
    console.print(f"bundles: {where} (this launch's; <suite>__<task> folders)" if where else
                  "bundles: none exported by this launch", soft_wrap=True)  # fmt: skip
    for task, t in res["tasks"].items():
        inits = ", ".join(f"{k} {100 * v['val_acc']:.2f}" for k, v in t["per_init"].items())
        console.print(f"{task}: best val per init strategy: {inits or '-'}", soft_wrap=True)
    if args.trials:
        import pandas as pd

        console.print(pd.read_parquet(run_dir / "report" / "trials.parquet").to_string(index=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vptsearch.search._export import export_bundles
    from vptsearch.search._results import LaunchResults

    run_dir = _run_dir(args)
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
    from vptsearch.search import predict

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


# --- ui -------------------------------------------------------------------------------------------
def _ui_uri(args: argparse.Namespace) -> str:
    """``--tracking-uri``, else the store the space's latest launch recorded, else
    ``$MLFLOW_TRACKING_URI``, else the space's ``tracking.uri``, else ``sqlite:///mlflow.db`` (the
    launch's own order, with what a launch actually used first)."""
    from vptsearch.search._tracking import check_tracking_uri

    if args.tracking_uri:
        return check_tracking_uri(args.tracking_uri)
    if args.space:
        from vptsearch.search._rundir import latest_run_dir
        from vptsearch.spec import load_spec

        run_dir = latest_run_dir(load_spec(args.space))
        if run_dir is not None and (run_dir / "tracking.json").is_file():
            return str(json.loads((run_dir / "tracking.json").read_text())["uri"])
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    if args.space:
        from vptsearch.spec import load_spec

        return check_tracking_uri(load_spec(args.space).tracking.uri)
    return check_tracking_uri("sqlite:///mlflow.db")


def _ui_page(url: str, uri: str, args: argparse.Namespace) -> str:
    """The page to open: the launch's runs table in MLflow's model-training view.

    MLflow 3's UI opens experiments in its GenAI (traces) view by default, where task and trial runs
    are not listed; ``workflowType=machine_learning`` on the runs page selects the runs table.
    """
    listing = f"{url}/#/experiments?workflowType=machine_learning"
    name = args.experiment
    if name is None and args.space:
        from vptsearch.spec import load_spec

        name = load_spec(args.space).experiment
    try:
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        if name is not None:
            exp = client.get_experiment_by_name(name)
        else:  # a store with a single experiment of ours: open it directly
            ours = [e for e in client.search_experiments() if e.name != "Default"]
            exp = ours[0] if len(ours) == 1 else None
    except Exception:  # the UI itself is up; a failed lookup only loses the deep link
        return listing
    if exp is None:
        return listing
    return f"{url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _stop(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the UI's process group (the server and its workers), SIGKILL it if it lingers."""
    if not _alive(pid):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap it when this process started it
            os.waitpid(pid, os.WNOHANG)
        if not _alive(pid):
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Refuse a port something already listens on (another MLflow server answering /health used
    to pass for ours while ours had failed to bind)."""
    import errno
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} is in use on {host}; pass --port with a free port "
                    "(or stop what listens there)"
                ) from None
            raise ConfigError(f"--port {port}: cannot bind {host}:{port} ({exc.strerror})") from None


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP ``port`` (Linux /proc/net/tcp*; None where there is none)."""
    found, tables = set(), [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return None
    for table in tables:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(f[9])
    return found


def _group_pids(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (our `mlflow ui` and the server workers it starts)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                # field 5 of /proc/PID/stat, counted after the parenthesised command name
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def bound_by(port: int, pgid: int) -> bool | None:
    """Whether a process of group ``pgid`` holds the socket listening on ``port`` (None: unknown,
    no /proc)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for pid in _group_pids(pgid):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    return True
            except OSError:
                continue
    return False


def _wait_for_ui(proc: subprocess.Popen, port: int, url: str, timeout: float) -> None:
    """Until our server answers /health while alive and bound to ``port``; else one ConfigError."""
    log = UI_STATE.with_suffix(".log")
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ConfigError(f"mlflow ui exited with status {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                pass
        except OSError:
            pass
        else:
            ours = bound_by(port, proc.pid)
            if proc.poll() is None and ours is not False:
                return
            if ours is False and time.monotonic() > deadline - timeout + 5:  # answered, not by us
                raise ConfigError(f"port {port} is in use by another server; pass --port with a free port")
        if time.monotonic() > deadline:
            raise ConfigError(f"mlflow ui did not answer on {url} within {timeout:.0f} s; see {log}")
        time.sleep(0.5)


def cmd_ui(args: argparse.Namespace) -> int:
    if args.stop:
        if not UI_STATE.is_file():
            print("no vptsearch ui is running from this folder")
            return 0
        state = json.loads(UI_STATE.read_text())
        _stop(state["pid"])
        UI_STATE.unlink()
        print(f"stopped the MLflow UI (pid {state['pid']})")
        return 0
    uri = _ui_uri(args)
    url = f"http://127.0.0.1:{args.port}"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port), "--workers", "1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if args.foreground:
        check_port_free(args.port)
        print(f"MLflow UI: {_ui_page(url, uri, args)}\n  (store {uri}); Ctrl-C stops it")
        return subprocess.call(cmd, env=env)
    UI_STATE.parent.mkdir(exist_ok=True)
    if UI_STATE.is_file() and _alive(json.loads(UI_STATE.read_text())["pid"]):
        raise ConfigError(
            f"a vptsearch ui is already running ({UI_STATE}); stop it with `vptsearch ui --stop`"
        )
    check_port_free(args.port)
    with open(UI_STATE.with_suffix(".log"), "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    UI_STATE.write_text(json.dumps({"pid": proc.pid, "url": url, "uri": uri}))
    try:
        _wait_for_ui(proc, args.port, url, timeout=60.0)
    except BaseException:
        _stop(proc.pid)
        UI_STATE.unlink(missing_ok=True)
        raise
    page = _ui_page(url, uri, args)
    print(f"MLflow UI: {page}\n  (store {uri}, pid {proc.pid}); stop it with `vptsearch ui --stop`")
    return 0


# --- doctor ---------------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    problems = 0

    def line(ok: bool | None, what: str, detail: str = "") -> None:
        nonlocal problems
        mark = {True: "ok  ", False: "FAIL", None: "note"}[ok]
        problems += ok is False
        print(f"[{mark}] {what}{': ' + detail if detail else ''}")

    import importlib.metadata as md
    import platform

    line(True, "python", platform.python_version())
    for pkg in ("torch", "timm", "ray", "optuna", "mlflow", "webdataset", "safetensors"):
        try:
            line(True, pkg, md.version(pkg))
        except md.PackageNotFoundError:
            line(False, pkg, "not installed")
    line(True, "cpu cores", str(os.cpu_count()))
    try:
        import torch

        line(None, "cuda", "available" if torch.cuda.is_available() else "not available (CPU run)")
    except ImportError:
        pass
    from vptsearch.data import built_tasks, data_root

    root = data_root(args.root)
    built = built_tasks(root)
    line(bool(built) or None, "data root", f"{root}: {len(built)} task(s) built"
         + ("" if built else "; build the offline suite with `vptsearch data build-mini`"))  # fmt: skip
    try:
        from vptsearch.models import list_backbones

        line(True, "backbones", ", ".join(list_backbones()))
    except (ImportError, AttributeError) as exc:
        line(False, "backbones", str(exc))
    token = Path.home() / ".ray" / "auth_token"
    line(
        None,
        "ray auth token",
        f"{token} ({'present' if token.is_file() else 'absent: created on first start'})",
    )
    from vptsearch.search import _monitor

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
    import dataclasses

    from vptsearch.data import data_root, resolve_tasks
    from vptsearch.search._preflight import check_data
    from vptsearch.spec import load_spec
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
    from vptsearch.search._tracking import check_tracking_uri, tracking_uri_for

    uri = tracking_uri_for(flag, spec_uri or "sqlite:///mlflow.db")
    source = ("--tracking-uri" if flag else "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
              else "the space's tracking.uri" if spec_uri else "default")  # fmt: skip
    try:
        line(True, "tracking", f"{check_tracking_uri(uri)} (from {source})")
    except VptsearchError as exc:
        line(False, "tracking", f"{exc} (from {source})")
