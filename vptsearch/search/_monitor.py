"""Watching a launch: the Ray dashboard's token, and Prometheus scraping vptsearch's Ray metrics.

* **Dashboard token**: Ray 2.60 turns token authentication on for every ``ray.init`` cluster, so
  the dashboard opens on an "Authentication Token Required" dialog. :func:`token_hint` says which
  token to paste and where this process found it (Ray's own order: ``$RAY_AUTH_TOKEN``, the file
  ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``); ``ray get-auth-token`` prints that same token.
* **Prometheus**: the Ray dashboard writes a Prometheus file-based service discovery file listing
  every alive node's metrics export address (the head's ``reporter`` module), and Ray generates a
  ``prometheus.yml`` that reads it (``metrics/prometheus/prometheus.yml`` in the session dir).
  :func:`prometheus_config` starts from that same template (Ray's ``PROMETHEUS_YML_TEMPLATE``) and
  points it at the discovery file in Ray's *temp dir* rather than the session dir: Ray keeps that
  path as a link to the newest session, so one Prometheus follows every launch's fresh local Ray.
  ``vptsearch monitor`` runs a Prometheus binary with that config on 127.0.0.1 and prints links
  into its UI (built in :mod:`vptsearch.search._prometheus_links`).
* **Grafana**: :func:`write_ray_dashboards` writes the default dashboards Ray generates (the ones
  the Ray dashboard embeds) for a Grafana that is not on the head node (deploy/k8s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vptsearch._errors import ConfigError
from vptsearch.search._processes import refuse_if_running, stop_group, stop_recorded, write_state
from vptsearch.search._prometheus_links import (
    graph_url,
    graph_window,
    prometheus_version,
    targets_url,
    ui_prefix,
)

STATE = Path(".vptsearch") / "monitor.json"  # our own Prometheus, so --stop ends only that one
DEFAULT_PORT = 9090  # the Ray dashboard looks for Prometheus here unless RAY_PROMETHEUS_HOST says
# Ray's Grafana factory functions, generate_<name>_grafana_dashboard (the set its dashboard writes).
RAY_DASHBOARDS = ("default", "serve", "serve_deployment", "serve_llm", "serve_llm_sglang", "data",
                  "data_llm", "train")  # fmt: skip


# --- the dashboard's token ------------------------------------------------------------------------
def token_auth_enabled() -> bool:
    """Whether this process's Ray uses token authentication (after ``ray.init`` set it up)."""
    from vptsearch.search._compat import token_auth_enabled as ask_ray  # Ray internals live there

    return ask_ray()


def token_source() -> str:
    """Where Ray reads this machine's token from, in Ray's own order of precedence."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"the file {os.environ['RAY_AUTH_TOKEN_PATH']} ($RAY_AUTH_TOKEN_PATH)"
    return str(Path.home() / ".ray" / "auth_token")


def joined_cluster() -> bool:
    """Whether this driver joined a running cluster (``ray.init`` made no head node of its own)."""
    from vptsearch.search._compat import joined_cluster as ask_ray  # Ray internals live there

    return ask_ray()


def token_hint(joined: bool | None = None) -> str:
    """One line for the launch banner: how to get past the dashboard's token dialog.

    ``joined``: the launch joined a running cluster (default: ask Ray); else it started its own
    local Ray, whose token Ray keeps in ~/.ray/auth_token unless one was set in the environment.
    """
    where, ray = token_source(), ray_command()
    if not (joined_cluster() if joined is None else joined):
        return f"token: paste the output of `{ray} get-auth-token` (the token in {where})"
    # Joining worked, so this driver holds the cluster's token: the same one every node was given.
    return (
        f"token: the cluster's own, which this driver read from {where} "
        f"(compose: RAY_AUTH_TOKEN in docker/.env); `{ray} get-auth-token` prints it"
    )


def ray_command() -> str:
    """The ``ray`` CLI of this Python: beside ``sys.executable`` (a venv's ``bin/``, which is on no
    PATH unless the venv is activated), else ``ray`` on PATH, else plain ``ray``.

    ``sys.executable`` is not resolved: a venv's python is a link to the system one, whose folder
    holds no ``ray``.
    """
    beside = Path(sys.executable).parent / "ray"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("ray") or "ray"


# --- Prometheus -----------------------------------------------------------------------------------
def ray_temp_dir(path: str | Path | None = None) -> Path:
    """Ray's temp dir (``$RAY_TMPDIR``/ray, else /tmp/ray), where the discovery link lives."""
    if path is not None:
        return Path(path)
    from vptsearch.search._compat import default_ray_temp_dir  # Ray internals live there

    return Path(default_ray_temp_dir())


def discovery_file(temp_dir: str | Path | None = None) -> Path:
    from vptsearch.search._compat import prometheus_discovery_file_name  # Ray internals live there

    return ray_temp_dir(temp_dir) / prometheus_discovery_file_name()


def prometheus_config(
    temp_dir: str | Path | None = None, scrape_interval: str = "10s", refresh_interval: str = "15s"
) -> dict[str, Any]:
    """Ray's generated Prometheus config, reading the discovery file of Ray's temp dir.

    ``refresh_interval``: the discovery file is a link Ray re-points at each new session and the
    session's file is replaced in place; Prometheus's file watch sees neither inside the link's
    target, so it re-reads on this period (its default is 5 minutes).
    """
    from ray.dashboard.modules.metrics.templates import PROMETHEUS_YML_TEMPLATE

    conf = yaml.safe_load(PROMETHEUS_YML_TEMPLATE.format(
        prom_metrics_service_discovery_file_path=str(discovery_file(temp_dir))
    ))  # fmt: skip
    conf["global"]["scrape_interval"] = scrape_interval
    conf["global"]["evaluation_interval"] = scrape_interval
    for job in conf["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["refresh_interval"] = refresh_interval
    return conf


def write_prometheus_config(path: Path, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "# Generated by vptsearch from Ray's prometheus.yml template (vptsearch monitor --print-config)\n"
    path.write_text(head + yaml.safe_dump(prometheus_config(**kwargs), sort_keys=False))
    return path


def find_prometheus(exe: str | None = None) -> str | None:
    """The Prometheus binary: ``exe``, ``$VPTSEARCH_PROMETHEUS``, else ``prometheus`` on PATH."""
    exe = exe or os.environ.get("VPTSEARCH_PROMETHEUS") or "prometheus"
    return shutil.which(exe)


@dataclass(frozen=True)
class Prometheus:
    pid: int
    url: str
    config: Path
    log: Path


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_prometheus(
    workdir: Path,
    port: int = DEFAULT_PORT,
    exe: str | None = None,
    timeout: float = 60.0,
    **config: Any,
) -> Prometheus:
    """Start Prometheus on 127.0.0.1:``port`` with :func:`prometheus_config`, in its own session
    (so it outlives this command and :func:`stop` ends exactly it); wait until it is ready."""
    binary = find_prometheus(exe)
    if binary is None:
        raise ConfigError(
            f"no Prometheus binary {exe or os.environ.get('VPTSEARCH_PROMETHEUS') or 'prometheus'!r} found; "
            "install one (Debian/Ubuntu: apt-get install prometheus, or a release from prometheus.io) "
            "or pass --prometheus PATH"
        )
    if not _free(port):
        raise ConfigError(f"--port {port}: 127.0.0.1:{port} is already in use; pick another port")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = write_prometheus_config(workdir / "prometheus.yml", **config)
    log = workdir / "prometheus.log"
    cmd = [binary, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=15d"]  # fmt: skip
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ConfigError(f"prometheus exited with status {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2):
                return Prometheus(proc.pid, url, cfg, log)
        except OSError:
            if time.monotonic() > deadline:
                stop_group(proc.pid)
                raise ConfigError(
                    f"prometheus did not become ready on {url} in {timeout:.0f} s; see {log}"
                ) from None
            time.sleep(0.3)


def query(url: str, promql: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API: the result vector."""
    full = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(full, timeout=timeout) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus query {promql!r} failed: {body}")
    return list(body["data"]["result"])


def launch_start(temp_dir: str | Path | None = None, fresh_s: float = 60.0) -> float | None:
    """When the running local Ray (a launch's) started: the newest session's start, which its
    folder's name records (``session_2026-01-02_08-15-00_123456_<pid>``, local time), if that
    session still runs (its dashboard rewrites the discovery file every few seconds); else None."""
    import re
    from datetime import datetime

    sd = discovery_file(temp_dir)
    try:
        target = sd.resolve(strict=True)
        if time.time() - target.stat().st_mtime > fresh_s:
            return None
    except OSError:
        return None
    m = re.fullmatch(r"session_(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d+)_\d+", target.parent.name)
    if m is None:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%d_%H-%M-%S_%f").timestamp()


def forget_targets(session_dir: str | Path, temp_dir: str | Path | None = None) -> bool:
    """Drop an ended launch's scrape targets: remove the discovery link of Ray's temp dir when it
    still points at ``session_dir``'s file (a newer launch's link is left alone); True if removed.

    Why: Ray re-points the link at each new session but never removes it, so after a launch its
    nodes stay listed, DOWN, until the next one. Prometheus's file discovery drops the targets of
    a file that is gone (a dangling link would not do: a file it cannot read keeps its targets).
    To be called by the process that started the local Ray, after ``ray.shutdown()``.
    """
    sd = discovery_file(temp_dir)
    ours = Path(session_dir) / sd.name
    try:
        if not sd.is_symlink() or (sd.parent / os.readlink(sd)).resolve() != ours.resolve():
            return False
        sd.unlink()
    except OSError:
        return False
    return True


def shutdown_ray() -> bool:
    """``ray.shutdown()``; when this process had started that Ray (a launch's local one), its scrape
    targets go with it (:func:`forget_targets`). A joined cluster's targets are the cluster's.
    True if targets were removed."""
    import ray

    from vptsearch.search._compat import own_session  # Ray internals live there

    own = own_session() if ray.is_initialized() else None
    ray.shutdown()  # waits for the dashboard, which would write the link again, to exit
    return own is not None and forget_targets(*own)


# --- Grafana --------------------------------------------------------------------------------------
def write_ray_dashboards(out_dir: Path) -> list[Path]:
    """Ray's generated Grafana dashboards (as its dashboard writes them into the session dir)."""
    from ray.dashboard.modules.metrics import grafana_dashboard_factory as factory

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in RAY_DASHBOARDS:
        make = getattr(factory, f"generate_{name}_grafana_dashboard", None)
        if make is None:  # a Ray version without this dashboard
            continue
        content, _uid = make()
        path = out_dir / f"{name}_grafana_dashboard.json"
        path.write_text(content)
        written.append(path)
    return written


# --- the `vptsearch monitor` command --------------------------------------------------------------
def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="start a local Prometheus on 127.0.0.1 that scrapes the local Ray")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Prometheus port (default {DEFAULT_PORT})")
    p.add_argument("--ray-temp-dir", help="Ray's temp dir (default: $RAY_TMPDIR/ray or /tmp/ray)")
    p.add_argument("--scrape-interval", default="10s", help="how often Prometheus scrapes (default 10s)")
    p.add_argument("--prometheus", metavar="PATH", help="Prometheus binary (default: $VPTSEARCH_PROMETHEUS "
                   "or prometheus on PATH)")  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the generated prometheus.yml and exit")
    p.add_argument("--grafana-dashboards", metavar="DIR",
                   help="write Ray's generated Grafana dashboards to DIR and exit")  # fmt: skip
    p.add_argument(
        "--graph-window",
        default="12h",
        metavar="DURATION",
        help="time range of the graph links, from the launch's start (default 12h)",
    )
    p.add_argument("--stop", action="store_true", help="stop the Prometheus this command started")
    p.set_defaults(func=cmd_monitor)


def _interval(value: str) -> str:
    import re

    if not re.fullmatch(r"[1-9][0-9]*(ms|s|m|h)", value):
        raise ConfigError(f"--scrape-interval {value!r}: expected a duration such as 5s, 10s or 1m")
    return value


def _print_banner(prom: Prometheus, args: argparse.Namespace, interval: str, window: str) -> None:
    from vptsearch.search._metrics import NAMES

    sd = discovery_file(args.ray_temp_dir)
    prefix, version = ui_prefix(prom.url), prometheus_version(prom.url)
    # a launch already running: from its start; else from now, before which this Prometheus
    # (just started) holds nothing of the launch started next
    start = launch_start(args.ray_temp_dir) or time.time()
    ui = "classic UI" if prefix else "UI"
    print(
        f"Prometheus: {prom.url} (pid {prom.pid}, {'version ' + version + ', ' if version else ''}"
        f"{ui}, 127.0.0.1 only); stop it with `vptsearch monitor --stop`"
    )
    print(f"  scrapes:    every {interval}, the Ray nodes listed in {sd} (the local Ray's dashboard writes)")
    print(f"  targets:    {targets_url(prom.url, prefix)}")
    for label, expr in (
        ("trials", f"sum by (task, phase) (ray_{NAMES['completed']})"),
        ("best val", f"max by (task) (ray_{NAMES['best_val_acc']})"),
    ):
        link = graph_url(prom.url, expr, start=start, window=window, prefix=prefix)
        print(f"  {label + ':':<11} {link}")
    print(
        f"  (graphs: {window} from {time.strftime('%Y-%m-%d %H:%M', time.localtime(start))}; "
        "--graph-window changes it)"
    )
    if args.port != DEFAULT_PORT:
        print(f"  Ray dashboard: launch with RAY_PROMETHEUS_HOST={prom.url} set, so it finds this Prometheus")
    print("  then run `vptsearch launch ...` (not --no-dashboard: the dashboard writes the target list)")


def cmd_monitor(args: argparse.Namespace) -> int:
    if args.grafana_dashboards:
        for path in write_ray_dashboards(Path(args.grafana_dashboards)):
            print(path)
        return 0
    interval = _interval(args.scrape_interval)
    if args.print_config:
        conf = prometheus_config(args.ray_temp_dir, scrape_interval=interval)
        sys.stdout.write(yaml.safe_dump(conf, sort_keys=False))
        return 0
    if args.stop:
        stop_recorded(STATE, "Prometheus", "monitor")
        return 0
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: expected 1..65535")
    window = graph_window(args.graph_window)
    refuse_if_running(STATE, "monitor")
    prom = start_prometheus(STATE.parent / "prometheus", args.port, args.prometheus,
                            temp_dir=args.ray_temp_dir, scrape_interval=interval)  # fmt: skip
    # the pid with its start time and command line: --stop signals nothing else (pids are reused)
    write_state(STATE, prom.pid, url=prom.url, config=str(prom.config))
    _print_banner(prom, args, interval, window)
    return 0
