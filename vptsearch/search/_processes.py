"""The process groups vptsearch starts for the user (its MLflow UI, its Prometheus): alive, stop.

Only processes vptsearch started are stopped. A pid alone does not say that: once the server has
exited, the kernel gives its number to the next process, and ``--stop`` used to kill whatever ran
under it. So the state file records what identifies the process (:func:`identity`: its start time
and command line, besides the pid) and :func:`stop_recorded` signals only a process that still has
all three; each was started in its own session, so the group is the server and the workers it forked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from vptsearch._errors import ConfigError, DataError


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def identity(pid: int) -> dict[str, Any] | None:
    """``{"pid", "started", "cmdline"}`` of a running process, or None when there is none.

    ``started``: the start time in clock ticks after boot (field 22 of /proc/PID/stat), which no
    later process with the same pid can have; psutil's create time where there is no /proc. With
    neither, ``started`` and ``cmdline`` are None and only the pid can be checked.
    """
    if not Path("/proc/self/stat").is_file():
        return _psutil_identity(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # exited
    # the fields after the parenthesised command name (which may hold spaces) start at field 3
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # exited, not yet reaped by its parent
    started = int(fields[19])
    cmdline = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return {"pid": pid, "started": started, "cmdline": cmdline}


def _psutil_identity(pid: int) -> dict[str, Any] | None:
    try:
        import psutil
    except ImportError:
        return {"pid": pid, "started": None, "cmdline": None} if alive(pid) else None
    try:
        p = psutil.Process(pid)
        return {"pid": pid, "started": p.create_time(), "cmdline": p.cmdline()}
    except psutil.Error:
        return None


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


def write_state(state: Path, pid: int, **extra: Any) -> None:
    """Record our server in ``state``: its :func:`identity` (what ``--stop`` checks) and ``extra``."""
    state.write_text(json.dumps({**(identity(pid) or {"pid": pid}), **extra}))


def _recorded(state: Path) -> tuple[dict[str, Any] | None, str]:
    """``(what the state file recorded, "")`` when it names the process that runs under its pid
    now; else ``(None, why it is stale)``."""
    try:
        rec = json.loads(state.read_text())
        pid = rec["pid"]
    except (OSError, ValueError, TypeError, KeyError):
        return None, "it is not the JSON object with a pid that vptsearch writes"
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        return None, f"its pid {pid!r} is not a process id"
    now = identity(pid)
    if now is None:
        return None, f"pid {pid} has exited"
    if "started" not in rec or "cmdline" not in rec:  # written before identities were recorded
        return None, f"it records no start time or command line to tell pid {pid} is still ours"
    if (now["started"], now["cmdline"]) != (rec["started"], rec["cmdline"]):
        return None, f"pid {pid} is now another process ({' '.join(now['cmdline'])[:120]!r})"
    return rec, ""


def stop_recorded(state: Path, what: str, command: str) -> None:
    """``vptsearch COMMAND --stop``: end the server ``state`` recorded, and forget it.

    A state file that no longer names our server (the pid exited, or now belongs to another
    process) is removed and nothing is signalled: one DataError says so.
    """
    if not state.is_file():
        print(f"no vptsearch {command} is running from this folder")
        return
    rec, stale = _recorded(state)
    if rec is None:
        state.unlink(missing_ok=True)
        raise DataError(
            f"{state} is stale ({stale}); removed it and stopped nothing; accepted: a state file "
            f"that `vptsearch {command}` wrote for a {what} that still runs"
        )
    stop_group(rec["pid"])
    state.unlink(missing_ok=True)
    print(f"stopped {what} (pid {rec['pid']})")


def refuse_if_running(state: Path, command: str) -> None:
    """One ConfigError when the server ``state`` recorded is alive (a second would fight for its
    port); a stale state file (see :func:`stop_recorded`) is removed, and starting goes on."""
    if not state.is_file():
        return
    rec, _ = _recorded(state)
    if rec is None:
        state.unlink(missing_ok=True)
        return
    raise ConfigError(
        f"a vptsearch {command} is already running ({state}); stop it with `vptsearch {command} --stop`"
    )
