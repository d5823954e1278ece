"""``vptsearch ui``: the MLflow UI on 127.0.0.1 for a launch's tracking store, started and stopped.

A background UI is our own ``mlflow ui`` process group, recorded in ``.vptsearch/ui.json`` (pid,
start time, command line) so ``--stop`` ends only that one. Library imports sit inside the
functions: the CLI starts without MLflow, Ray or torch.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vptsearch._errors import ConfigError
from vptsearch.search._processes import refuse_if_running, stop_group, stop_recorded, write_state
from vptsearch.search._rundir import latest_run_dir
from vptsearch.spec import load_spec

UI_STATE = Path(".vptsearch") / "ui.json"  # our own `mlflow ui` process, so --stop ends only that one


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for a launch's tracking store")
    p.add_argument("--space", help="search space YAML: use its latest launch's tracking URI")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the space's latest launch's, "
                   "else $MLFLOW_TRACKING_URI, else the space's tracking.uri, else sqlite:///mlflow.db)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--experiment", help="experiment whose runs page to print (default: the space's)")
    p.add_argument("--stop", action="store_true", help="stop the UI this command started")
    p.add_argument("--foreground", action="store_true", help="run in the foreground until Ctrl-C")
    p.set_defaults(func=cmd_ui)


def _ui_uri(args: argparse.Namespace) -> str:
    """``--tracking-uri``, else the store the space's latest launch recorded, else
    ``$MLFLOW_TRACKING_URI``, else the space's ``tracking.uri``, else ``sqlite:///mlflow.db`` (the
    launch's own order, with what a launch actually used first)."""
    from vptsearch.search._tracking import check_tracking_uri  # import cost: Ray Tune

    if args.tracking_uri:
        return check_tracking_uri(args.tracking_uri)
    if args.space:
        run_dir = latest_run_dir(load_spec(args.space))
        if run_dir is not None and (run_dir / "tracking.json").is_file():
            return str(json.loads((run_dir / "tracking.json").read_text())["uri"])
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    if args.space:
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
        name = load_spec(args.space).experiment
    try:
        from mlflow import MlflowClient  # import cost: seconds, only for the deep link

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


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Refuse a port something already listens on (another MLflow server answering /health used
    to pass for ours while ours had failed to bind)."""
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
        stop_recorded(UI_STATE, "the MLflow UI", "ui")
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
    refuse_if_running(UI_STATE, "ui")
    check_port_free(args.port)
    with open(UI_STATE.with_suffix(".log"), "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # the pid with its start time and command line: --stop signals nothing else (pids are reused)
    write_state(UI_STATE, proc.pid, url=url, uri=uri)
    try:
        _wait_for_ui(proc, args.port, url, timeout=60.0)
    except BaseException:
        stop_group(proc.pid)
        UI_STATE.unlink(missing_ok=True)
        raise
    page = _ui_page(url, uri, args)
    print(f"MLflow UI: {page}\n  (store {uri}, pid {proc.pid}); stop it with `vptsearch ui --stop`")
    return 0
