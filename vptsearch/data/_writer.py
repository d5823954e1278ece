"""Write a task's splits as WebDataset shards plus ``manifest.parquet``, atomically.

Everything is written into a hidden temporary folder next to the destination; the folder is
renamed into place only after every shard and the manifest are complete, so readers never see a
half-written task. Tar headers use a fixed mtime/owner and images a fixed PNG encoder, so the same
inputs give byte-identical shards (rebuilding is idempotent).
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from vptsearch._errors import DataError
from vptsearch._hashing import sha256_file
from vptsearch.data._codec import encode_png, normalise_encoded, safe_key
from vptsearch.data._lookup import get_task
from vptsearch.data._manifest import MANIFEST, ShardInfo, write_manifest
from vptsearch.data._tasks import ENV_ROOT, TaskInfo, data_root

SHARD_PATTERN = "{split}-%06d.tar"
DEFAULT_MAXCOUNT = 500  # samples per shard: several shards per split so 2 workers can share a split
_TAR_MTIME = 0  # fixed header fields -> reproducible tar bytes
# control characters and line/paragraph separators: `predict` prints "image<TAB>class<TAB>prob" lines
_BAD_NAME_CHARS = ("Cc", "Zl", "Zp")


@dataclass(frozen=True)
class Sample:
    """One sample to write: ``image`` is a uint8 array (encoded as PNG) or encoded image bytes."""

    key: str
    image: np.ndarray | bytes
    label: int
    source: str = ""  # where it came from (a file path), used in error messages


def check_class_names(names: list[str], source: str) -> None:
    """Class names are one printable line each, non-empty and distinct (label i = names[i]).

    ``predict`` prints one ``image<TAB>class<TAB>prob`` line per image and classes.txt holds one
    name per line: a newline, tab or other control character in a name would break both.
    """
    accepted = "accepted: distinct, non-empty names without newlines, tabs or other control characters"
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"class name {name!r} of label {i} ({source}) is empty; {accepted}")
        bad = next((c for c in name if unicodedata.category(c) in _BAD_NAME_CHARS), None)
        if bad is not None:
            raise DataError(
                f"class name {name!r} of label {i} ({source}) contains control character {bad!r}; {accepted}"
            )
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise DataError(
                f"class name {name!r} ({source}) is given to labels {first[name]} and {i}; {accepted}"
            )
        first[name] = i


def _encode(sample: Sample, split: str, task: TaskInfo) -> tuple[dict[str, Any], tuple[int, int]]:
    where = sample.source or f"sample {sample.key!r} of split {split!r}"
    label = sample.label
    if (
        isinstance(label, bool)
        or not isinstance(label, int | np.integer)
        or not 0 <= label < task.num_classes
    ):
        raise DataError(
            f"label {label!r} of {where} is out of range for task {task.name!r}; "
            f"accepted: integers 0..{task.num_classes - 1}"
        )
    if isinstance(sample.image, bytes | bytearray):
        try:
            data, ext, size = normalise_encoded(bytes(sample.image))
        except ValueError as exc:
            raise DataError(f"image {where} does not decode: {exc}") from None
    else:
        arr = np.asarray(sample.image)
        try:
            data, ext, size = encode_png(arr), "png", (int(arr.shape[0]), int(arr.shape[1]))
        except ValueError as exc:
            raise DataError(f"image {where}: {exc}") from None
    return {"__key__": sample.key, ext: data, "cls": str(int(label)).encode()}, size


def _count_samples(path: Path) -> int:
    with tarfile.open(path, "r:") as tar:
        return len({m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()})


def write_task(
    task: TaskInfo | str,
    splits: Mapping[str, Iterable[Sample]],
    *,
    class_names: list[str],
    builder: str,
    params: Mapping[str, Any] | None = None,
    root: str | os.PathLike | None = None,
    maxcount: int = DEFAULT_MAXCOUNT,
    overwrite: bool = True,
) -> Path:
    """Write every split of ``task`` under ``<root>/<suite>/<task>`` and return that folder.

    ``splits`` maps each of the task's split names to its samples. Bad input (label out of range,
    duplicate key within a split, undecodable image) raises :class:`DataError` and leaves nothing
    behind; an existing build of the task is replaced only once the new one is complete, and with
    ``overwrite=False`` not at all (DataError: importers refuse to replace a task unless asked).
    """
    info = task if isinstance(task, TaskInfo) else get_task(task)
    base = data_root(root)
    if isinstance(base, str):
        raise DataError(f"cannot write to remote root {base}; build locally, then copy (e.g. `aws s3 sync`)")
    if sorted(splits) != sorted(info.splits):
        raise DataError(f"task {info.name!r} needs splits {', '.join(info.splits)}; got {', '.join(splits)}")
    if len(class_names) != info.num_classes:
        raise DataError(
            f"task {info.name!r} has {info.num_classes} classes but {len(class_names)} class names"
        )
    check_class_names(list(class_names), f"task {info.name!r}")
    dest = base / info.name
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:  # a read-only HOME (the default root is under it), a file in the way
        raise unwritable_root(base, exc) from None
    try:
        shards: list[ShardInfo] = []
        sizes: set[tuple[int, int]] = set()
        for split in info.splits:
            shards.extend(_write_split(tmp, info, split, splits[split], maxcount, sizes))
        image_size = next(iter(sizes))[0] if len(sizes) == 1 and len(set(next(iter(sizes)))) == 1 else None
        write_manifest(
            tmp, info, list(class_names), shards, builder=builder, params=params or {}, image_size=image_size
        )
        if not overwrite and (dest / MANIFEST).exists():  # built meanwhile by another process
            raise already_built(info.name, dest)
        _swap_into_place(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:  # the old build, if any, is intact
            raise unwritable_root(base, exc) from None
        raise
    return dest


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def unwritable_root(base: Path, exc: OSError) -> DataError:
    """The one line for a data root that cannot be written (the default one lives under HOME)."""
    full = "free space there or " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return DataError(
        f"cannot write shards under data root {base} ({exc.strerror}: {exc.filename}); {full}point "
        f"${ENV_ROOT} (or the spec's data_root, or --root) at a writable folder"
    )


def already_built(name: str, dest: Path) -> DataError:
    """The refusal to replace an existing build without ``--overwrite``."""
    return DataError(
        f"task {name!r} is already built at {dest}; pass --overwrite to replace it (the old build "
        f"stays until the new one is complete), or import under another --task name"
    )


def _write_split(
    tmp: Path, info: TaskInfo, split: str, samples: Iterable[Sample], maxcount: int, sizes: set
) -> list[ShardInfo]:
    pattern = str(tmp / SHARD_PATTERN.format(split=split))
    seen: set[str] = set()
    with wds.ShardWriter(
        pattern, maxcount=maxcount, maxsize=float("inf"), verbose=0, encoder=False, mtime=_TAR_MTIME
    ) as sink:
        for sample in samples:
            if not sample.key or safe_key(sample.key) != sample.key:
                raise DataError(f"sample key {sample.key!r} in split {split!r} must match [A-Za-z0-9_-]+")
            if sample.key in seen:
                raise DataError(f"duplicate sample key {sample.key!r} in split {split!r} of {info.name!r}")
            seen.add(sample.key)
            record, size = _encode(sample, split, info)
            sizes.add(size)
            sink.write(record)
    if not seen:
        raise DataError(f"split {split!r} of task {info.name!r} is empty")
    out = []
    for path in sorted(tmp.glob(f"{split}-*.tar")):
        out.append(ShardInfo(split, path.name, _count_samples(path), sha256_file(path), path.stat().st_size))
    return out


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished folder into place; an older build is moved aside first, then removed."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_built(task: TaskInfo | str, root: str | os.PathLike | None = None) -> bool:
    info = task if isinstance(task, TaskInfo) else get_task(task)
    base = data_root(root)
    return not isinstance(base, str) and (base / info.name / MANIFEST).is_file()
