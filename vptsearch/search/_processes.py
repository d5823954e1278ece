"""The process groups vptsearch starts for the user (its MLflow UI, its Prometheus): alive, stop.

Only processes vptsearch started are stopped, by the pid it recorded; each was started in its own
session, so the group is the server and the workers it forked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time


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
