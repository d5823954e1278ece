"""The process groups vptsearch starts for the user (its MLflow UI, its Prometheus): alive, stop.

Only processes vptsearch started are stopped, by the pid it recorded; each was started in its own
session, so the group is the server and the workers it forked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from vptsearch._errors import ConfigError


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group of ``pid`` (a server flushes its state), SIGKILL it if it lingers."""
    if not alive(pid):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap it when this process started it
            os.waitpid(pid, os.WNOHANG)
        if not alive(pid):
            return
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


def stop_recorded(state: Path, what: str, command: str) -> None:
    """``vptsearch COMMAND --stop``: end the server whose pid ``state`` recorded, and forget it."""
    if not state.is_file():
        print(f"no vptsearch {command} is running from this folder")
        return
    pid = json.loads(state.read_text())["pid"]
    stop_group(pid)
    state.unlink()
    print(f"stopped {what} (pid {pid})")


def refuse_if_running(state: Path, command: str) -> None:
    """One ConfigError when the server ``state`` recorded is alive (a second would fight for its port)."""
    if state.is_file() and alive(json.loads(state.read_text())["pid"]):
        raise ConfigError(
            f"a vptsearch {command} is already running ({state}); stop it with `vptsearch {command} --stop`"
        )
