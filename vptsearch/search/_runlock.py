"""One launch per run dir at a time: an exclusive ``flock`` on ``<run dir>/launch.lock``.

Two ``launch --resume`` of one run dir started together used to both run: one Optuna journal got
the trials of two searchers, the MLflow runs the steps of two drivers. A launch (fresh or
resumed) now takes this lock right after it claims its run dir and holds it until it ends; a
second one is refused at once, before it writes anything there. The kernel drops the lock when
the process dies (SIGKILL, OOM), so a crashed launch never blocks its own resume: the lock is
the state, the file's content only says who holds it (pid, host, start time, command) for the
messages. ``vptsearch report``/``export``/``sync`` ask :func:`holder` before they read the dir.

Caveats: a child that ``fork``\\ s without ``exec`` (a DataLoader worker) shares the lock while it
lives; the file descriptor is close-on-exec, so processes Ray or the launch start do not. On NFS
Linux maps ``flock`` to POSIX locks, which work across machines but are per process: so this
module never opens the lock file of a run dir its own process holds (closing it would drop it).
Nothing here imports Ray, torch or vptsearch's spec: the report command uses it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from vptsearch._errors import ConfigError, VptsearchError

LOCK_FILE = "launch.lock"

# run dir (resolved) -> (fd holding the lock, what the file says): the locks this process holds
_held: dict[Path, tuple[int, dict[str, Any]]] = {}


class LaunchRunning(VptsearchError):
    """The run dir is held by a launch that is still running."""


def hold(run_dir: Path) -> None:
    """Take the run dir's lock for this process, or raise :class:`LaunchRunning` naming its holder.

    A refused launch changes nothing in the run dir: the lock file already exists when another
    launch holds it, and it is only read.
    """
    key = Path(run_dir).resolve()
    if key in _held:  # a second launch of the same run dir in this process
        raise LaunchRunning(_refusal(key, _held[key][1]))
    path = key / LOCK_FILE
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"run dir {key}: cannot open its lock file {LOCK_FILE} ({exc.strerror}); "
                "accepted: a writable launch folder"
            ) from None
        if not _lock(fd, fcntl.LOCK_EX):
            info = _read(fd)
            os.close(fd)
            raise LaunchRunning(_refusal(key, info))
        if _same_file(fd, path):
            break
        # a refused fresh launch removed the file (and its folder) between our open and lock
        os.close(fd)
    else:
        raise LaunchRunning(f"run dir {key}: its lock file {LOCK_FILE} keeps being removed; try again")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": _command()}  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _held[key] = (fd, info)


def release(run_dir: Path) -> None:
    """Let go of the run dir's lock if this process holds it (the file stays: removing a lock
    file another process may be opening is how two holders happen)."""
    held = _held.pop(Path(run_dir).resolve(), None)
    if held is not None:
        os.close(held[0])


def holder(run_dir: Path) -> dict[str, Any] | None:
    """Who holds the run dir's lock (``{}`` when it is just being taken), or None when no launch does.

    Asks with a shared lock taken and dropped at once; a launch starting in that instant retries
    (see :func:`_lock`), so asking never refuses a launch.
    """
    key = Path(run_dir).resolve()
    if key in _held:
        return dict(_held[key][1])
    try:
        fd = os.open(key / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: no launch of this version ever held it
    try:
        if _lock(fd, fcntl.LOCK_SH, tries=1):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _read(fd)
    finally:
        os.close(fd)


def holder_text(info: dict[str, Any]) -> str:
    """``pid 123 on HOST, since 2026-12-07 10:15:03: vptsearch launch ...`` (what is known)."""
    if not info.get("pid"):
        return "pid not recorded yet: it is just starting"
    text = f"pid {info['pid']}"
    if info.get("host") and info["host"] != socket.gethostname():
        text += f" on {info['host']}"
    if info.get("started"):
        text += f", since {info['started']}"
    if info.get("command"):
        text += f": {info['command']}"
    return text


def _refusal(run_dir: Path, info: dict[str, Any]) -> str:
    return (
        f"run dir {run_dir} is in use by another launch ({holder_text(info)}); nothing was changed "
        "there: wait for it to end (or stop it), then run this again"
    )


def _lock(fd: int, kind: int, tries: int = 5) -> bool:
    """``flock`` without blocking; a few short retries ride over a :func:`holder` probe's instant."""
    for i in range(tries):
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if i + 1 < tries:
            time.sleep(0.05)
    return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except ValueError:  # being written right now, or not ours
        return {}
    return info if isinstance(info, dict) else {}


def _command() -> str:
    """This process's command line, short and on one line (for the holder's description)."""
    argv = list(sys.argv) or ["python"]
    if Path(argv[0]).name in ("cli.py", "__main__.py", "vptsearch"):
        argv[0] = "vptsearch"
    text = " ".join(shlex.quote(a) for a in argv).replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."
