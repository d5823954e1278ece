"""Where bundles go: ``<export dir>/<launch stamp>/<suite>__<task>/``, one folder per launch.

A second launch of a space must never overwrite the first one's bundles, so each launch exports
under its own stamp (the name of its run dir). ``<export dir>/LATEST`` (a one-line text file: the
stamp) names the newest launch that exported there; it works on object stores too, where there are
no symlinks. Local export dirs also get a ``latest -> <stamp>`` symlink for shells and plain
timm + safetensors users; :func:`resolve_bundle_dir` follows ``.../latest/...`` through ``LATEST``
when the symlink is absent (copied trees, filesystems without symlinks).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from vptsearch._atomic import probe_writable
from vptsearch._errors import ConfigError

LATEST_FILE, LATEST_LINK = "LATEST", "latest"
_STAMP = re.compile(r"^(\d{8}-\d{6})(?:-(\d+))?$")


def stamp_key(stamp: str) -> tuple[str, int, str]:
    """Chronological order of launch stamps (``20261202-081500`` < ``20261202-081500-2`` < ``...-10``)."""
    m = _STAMP.match(stamp)
    return (m.group(1), int(m.group(2) or 0), "") if m else ("", 0, stamp)


def check_export_dir(dest: str | os.PathLike[str], create: bool = True) -> Path:
    """A local export dir that exists as a folder (created if missing) and can be written; else one line.

    ``create=False`` (the launch's preflight) creates nothing: a missing folder passes when the
    nearest existing parent is a writable folder (export creates it later).
    """
    path = Path(dest).expanduser()
    accepted = "accepted: a writable folder (created if missing) or s3://BUCKET/PREFIX"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"export dir {str(path)!r} is a file, not a folder; {accepted}")
    if not create and not path.exists():
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(
                f"export dir {str(path)!r}: {str(parent)!r} is a file, not a folder; {accepted}"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(
                f"export dir {str(path)!r} cannot be created: {str(parent)!r} is not writable; {accepted}"
            )
        return path.absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"export dir {str(path)!r}: cannot create it ({exc.strerror}); {accepted}"
        ) from None
    try:
        probe_writable(path)
    except OSError as exc:
        raise ConfigError(f"export dir {str(path)!r} is not writable ({exc.strerror}); {accepted}") from None
    return path.resolve()


def _newer(stamp: str, current: str | None) -> bool:
    return current is None or stamp_key(stamp) >= stamp_key(current)


def point_latest(base: Path, stamp: str) -> bool:
    """Make ``base/LATEST`` (and the ``latest`` symlink) name ``stamp`` unless a newer launch is
    there already (re-exporting an old launch keeps ``latest`` on the newest). True if moved."""
    current_file = base / LATEST_FILE
    current = current_file.read_text().strip() if current_file.is_file() else None
    if not _newer(stamp, current or None):
        return False
    tmp = base / f".{LATEST_FILE}.{os.getpid()}"
    tmp.write_text(stamp + "\n")
    os.replace(tmp, current_file)
    link = base / LATEST_LINK
    if link.exists() and not link.is_symlink():  # the user's own folder named latest: leave it
        return True
    tmp_link = base / f".{LATEST_LINK}.{os.getpid()}"
    with contextlib.suppress(OSError):  # no symlinks here: LATEST alone is the pointer
        if tmp_link.is_symlink():
            tmp_link.unlink()
        tmp_link.symlink_to(stamp, target_is_directory=True)
        os.replace(tmp_link, link)
    return True


def point_latest_remote(fs: Any, path: str, stamp: str) -> bool:
    """``LATEST`` inside a pyarrow filesystem (S3...): the same rule as :func:`point_latest`."""
    target = f"{path.rstrip('/')}/{LATEST_FILE}"
    try:
        with fs.open_input_stream(target) as f:
            current = f.read().decode().strip() or None
    except (FileNotFoundError, OSError):
        current = None
    if not _newer(stamp, current):
        return False
    with fs.open_output_stream(target) as f:
        f.write((stamp + "\n").encode())
    return True


def resolve_bundle_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or with a ``latest`` component replaced by the stamp in the ``LATEST``
    file next to it (when no ``latest`` symlink exists there)."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    parts = p.parts
    out = Path(parts[0])
    for part in parts[1:]:
        if part == LATEST_LINK and not (out / part).exists() and (out / LATEST_FILE).is_file():
            part = (out / LATEST_FILE).read_text().strip() or part
        out = out / part
    return out
