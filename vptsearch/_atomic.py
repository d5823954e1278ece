"""Files written whole or not at all: the launch's own records survive a full disk or a kill.

A plain ``write_text`` truncates the file first; a write that then fails (ENOSPC, a SIGKILL) leaves
it empty or cut, and a ``--resume`` cannot read it. Here the bytes go to a temp file next to the
target, are fsynced, and replace it with one ``rename``. No third-party imports: the spec uses it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``path`` whole or not at all (temp file + fsync + rename); a failed write leaves the old
    file and no temp file, and raises the OSError naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    return path


def probe_writable(folder: str | Path, size: int = 0) -> None:
    """Create and remove a file of ``size`` bytes in ``folder``: raises the OSError of the first step
    that fails and leaves no probe behind. Permission bits do not tell (root passes them on a
    read-only mount or ``/proc``); only a write does."""
    probe = Path(folder) / f".vptsearch-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"\0" * size)
        probe.unlink()
    except OSError:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise
