"""A launch against a real `mlflow server` (sqlite backend, proxied artifact store) on 127.0.0.1.

The helpers start and stop the server by its own process group id; test_tracking_faults.py uses
them to kill the server mid-launch and bring it back on the same port and backend.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a server start (~6 s) plus a launch (Ray start, trials)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, port: int, timeout: float = 90.0) -> subprocess.Popen:
    """`mlflow server` of this venv on 127.0.0.1:port, backend and artifacts under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "artifacts")]  # fmt: skip
    log = open(root / f"server-{time.time_ns()}.log", "wb")  # noqa: SIM115 - the server's own log
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {Path(log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    stop_mlflow_server(proc)
    raise RuntimeError(f"mlflow server not healthy after {timeout} s: {Path(log.name).read_text()[-2000:]}")


def stop_mlflow_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop the server we started: its own process group (uvicorn workers included), by id."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def tiny_raw(base_raw: dict) -> dict:
    """1 task, 2 search trials of 2 epochs, 1 final seed: the smallest full launch."""
    return {
        **base_raw,
        "suite": ["mini/digits"],
        "params": {**base_raw["params"], "optim.base_lr": {"choice": [1.0, 5.0]}},
        "search": {**base_raw["search"], "trials_per_task": 2, "max_concurrent": 1, "n_startup_trials": 2},
        "training": {"epochs": 2, "warmup_epochs": 0, "batch_size": 64},
        "protocol": {"final_seeds": [0]},
    }


def launch_runs(uri: str, experiment: str = "smoke") -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], max_results=1000) if exp else []


def test_launch_against_a_real_mlflow_server(base_raw, tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from vptsearch.search import launch
    from vptsearch.spec import spec_from_dict

    monkeypatch.setenv("RAY_ADDRESS", "local")  # a Ray of its own, not another running cluster
    port = free_port()
    server = start_mlflow_server(tmp_path / "server", port)
    uri = f"http://127.0.0.1:{port}"
    try:
        lines: list[str] = []
        summary = launch(spec_from_dict(tiny_raw(base_raw)), tracking_uri=uri, dashboard=False,
                         say=lines.append)  # fmt: skip
        assert summary.unsynced == 0 and summary.tracking_uri == uri
        assert f"{uri}/#/experiments/" in "\n".join(lines)
        runs = launch_runs(uri)
        c = MlflowClient(uri)
        by_kind: dict[str, list] = {}
        for r in runs:
            by_kind.setdefault(r.data.tags["vptsearch.kind"], []).append(r)
        assert {k: len(v) for k, v in by_kind.items()} == {"launch": 1, "task": 1, "trial": 3}
        (task,) = by_kind["task"]
        assert task.info.status == "FINISHED" and "best_val_acc" in task.data.metrics
        for t in by_kind["trial"]:
            assert t.data.tags["mlflow.parentRunId"] == task.info.run_id and t.info.status == "FINISHED"
            history = c.get_metric_history(t.info.run_id, "train_loss")  # one value per epoch
            steps, status = sorted(m.step for m in history), t.data.tags["vptsearch.status"]
            assert steps == list(range(1, len(steps) + 1)) and (len(steps) == 2 or status != "completed")
        bundle = {a.path for a in c.list_artifacts(task.info.run_id, "bundle")}
        assert {"bundle/bundle.json", "bundle/prompts.safetensors"} <= bundle
        # proxied artifacts land in the server's --artifacts-destination
        assert list((tmp_path / "server" / "artifacts").rglob("prompts.safetensors"))
        (launch_run,) = by_kind["launch"]
        names = {a.path for a in c.list_artifacts(launch_run.info.run_id)}
        assert {"spec.yaml", "results.json", "summary.md"} <= names
    finally:
        stop_mlflow_server(server)
