"""What every importer shares: the names an imported task may take, the refusals checked before
any image is read (names, images outside the source folder), and reading one image file into a
:class:`Sample`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from vptsearch._errors import ConfigError, DataError
from vptsearch.data._codec import resized_jpeg, safe_key
from vptsearch.data._manifest import MANIFEST
from vptsearch.data._tasks import CUSTOM_SUITE, TASKS, data_root, reserved_suites
from vptsearch.data._writer import Sample, already_built

# folder names used by the common VTAB-1k extraction (e.g. NOAH / VPT releases) -> our task names
VTAB_FOLDER_ALIASES = {"cifar": "cifar100"}
MINI_SUITE = "mini"  # built from packaged data only (build-mini): never an import target
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a suite or task name is one safe folder name


def target_name(requested: str) -> str:
    """``dtd`` / ``cifar`` -> ``vtab1k/...``; other bare names -> ``custom/<name>``; ``suite/name`` as is."""
    if "/" not in requested:
        vtab = f"vtab1k/{VTAB_FOLDER_ALIASES.get(requested, requested)}"
        return vtab if vtab in TASKS else f"{CUSTOM_SUITE}/{requested}"
    if requested in TASKS:
        return requested
    suite, _, short = requested.partition("/")
    if suite in reserved_suites():
        raise ConfigError(
            f"task {requested!r} is not one of the registered {suite} tasks, and {suite}/ holds only those; "
            f"accepted: a registered name, or your own name such as {CUSTOM_SUITE}/{short}"
        )
    return requested


def check_name(name: str, folder: Path) -> None:
    """``name`` is ``suite/task``, each part one safe folder name."""
    parts = name.split("/")
    if len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts):
        raise ConfigError(
            f"task name {name!r} (for {folder}) is not a valid name; accepted: <name> or <suite>/<name> "
            "made of letters, digits, '_', '-', '.' (e.g. flowers or custom/flowers); pass --task"
        )


def refuse_mini(name: str, src: Path) -> None:
    """The mini suite is built from packaged data: importing other images under its names is refused."""
    if name in TASKS and TASKS.get(name).suite == MINI_SUITE:
        raise ConfigError(
            f"task {name!r} is built by `vptsearch data build-mini` from packaged data, not imported "
            f"(from {src}); accepted: your own name such as --task {CUSTOM_SUITE}/{name.split('/')[1]}"
        )


def refuse_rebuild(name: str, root: str | os.PathLike | None, overwrite: bool) -> None:
    """Checked before any image is read: replacing a built task takes ``--overwrite``."""
    base = data_root(root)
    if not overwrite and not isinstance(base, str) and (base / name / MANIFEST).exists():
        raise already_built(name, base / name)


def image_inside(base: Path, rel: str, where: str) -> Path:
    """``base / rel`` with every symlink resolved, refused unless it stays inside ``base``.

    A list file naming ``../../etc/passwd``, an absolute path, or a symlink leading out of the
    folder would copy files from elsewhere on the machine into shards that are shared and published
    with results; ``where`` says where ``rel`` was listed (``train.txt:3``).
    """
    accepted = f"accepted: paths relative to {base}, staying inside it (no '..' out, no symlink out)"
    if Path(rel).is_absolute():
        raise DataError(f"image {rel!r} ({where}) is an absolute path; {accepted}")
    try:
        root, target = base.resolve(), (base / rel).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte in the name
        raise DataError(f"image {rel!r} ({where}) cannot be resolved ({exc}); {accepted}") from None
    if not target.is_relative_to(root):
        raise DataError(f"image {rel!r} ({where}) resolves to {str(target)!r}, outside {root}; {accepted}")
    return target


def image_sample(path: Path, key: str, label: int, resize: int | None) -> Sample:
    """One image file as a sample: its bytes as they are, or a ``resize x resize`` JPEG."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if resize:
        try:
            data = resized_jpeg(data, resize)
        except ValueError as exc:
            raise DataError(f"image {path} does not decode: {exc}") from None
    return Sample(safe_key(key), data, label, source=str(path))
