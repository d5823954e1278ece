"""``manifest.parquet``: one row per shard (split, shard, sample count, sha256, bytes) plus the
task's description (class names, how it was built) in the parquet schema metadata.

This module writes and parses manifests and indexes the tasks built under a root; opening a task's
manifest by name (:func:`vptsearch.data._lookup.read_manifest`) sits above it, with the lookups that
resolve bare names, so the lookups can read the index without importing back into themselves.

A task folder counts as built only when its manifest exists: the writer renames the whole folder
into place after the manifest is written, so a half-written task is never taken for a whole one.

pyarrow is imported where a manifest is written or parsed, not with this module: the lookups
import it, and consulting the registry (the CLI's help, a registered task's info) stays light.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vptsearch._errors import DataError
from vptsearch.data._tasks import GROUPS, PREPROCESSING, TASKS, TaskInfo, data_root, task_dir

MANIFEST = "manifest.parquet"
FORMAT_VERSION = 1
_META_KEY = b"vptsearch"


@dataclass(frozen=True)
class ShardInfo:
    split: str
    name: str  # file name inside the task folder, e.g. "train800-000000.tar"
    num_samples: int
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Manifest:
    """A built task: its info, class names, shards per split, and how it was built."""

    task: TaskInfo
    class_names: tuple[str, ...]
    shards: tuple[ShardInfo, ...]
    location: Path | str  # the task folder (a URL string for remote roots)
    builder: str = ""
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    image_size: int | None = None  # side of the stored square images, None when sizes vary
    version: int = FORMAT_VERSION

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(s.split for s in self.shards))

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shards:
            out[s.split] = out.get(s.split, 0) + s.num_samples
        return out

    def split_shards(self, split: str) -> list[ShardInfo]:
        shards = [s for s in self.shards if s.split == split]
        if not shards:
            raise DataError(
                f"task {self.task.name!r} has no split {split!r} at {self.location}; "
                f"accepted: {', '.join(self.splits)}"
            )
        return shards

    def shard_location(self, shard: ShardInfo) -> Path | str:
        loc = self.location
        return f"{loc}/{shard.name}" if isinstance(loc, str) else loc / shard.name


def write_manifest(
    folder: Path,
    task: TaskInfo,
    class_names: list[str],
    shards: list[ShardInfo],
    *,
    builder: str,
    params: Mapping[str, Any],
    image_size: int | None,
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("split", pa.string()),
            ("shard", pa.string()),
            ("num_samples", pa.int64()),
            ("sha256", pa.string()),
            ("size_bytes", pa.int64()),
        ]
    )
    table = pa.table(
        {
            "split": [s.split for s in shards],
            "shard": [s.name for s in shards],
            "num_samples": [s.num_samples for s in shards],
            "sha256": [s.sha256 for s in shards],
            "size_bytes": [s.size_bytes for s in shards],
        },
        schema=schema,
    )
    meta = {
        "version": FORMAT_VERSION,
        "task": task.name,
        "suite": task.suite,
        "group": task.group,
        "num_classes": task.num_classes,
        "class_names": list(class_names),
        "splits": list(task.splits),
        "search_splits": list(task.search_splits),
        "final_splits": list(task.final_splits),
        "preprocessing": task.preprocessing,
        "build_hint": task.build_hint,
        "builder": builder,
        "params": dict(params),
        "image_size": image_size,
    }
    # sort_keys + no timestamps: the same inputs give byte-identical manifests
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    path = folder / MANIFEST
    pq.write_table(table, path, compression="zstd")
    return path


def _fetch(url: str) -> bytes:
    """Read a remote file through the same pipes the shard reader uses (curl / aws s3 cp)."""
    cmd = ["aws", "s3", "cp", url, "-"] if url.startswith("s3://") else ["curl", "-s", "-L", "--fail", url]
    try:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"cannot fetch {url} with `{' '.join(cmd[:3])} ...`: {exc}") from None
    return out.stdout


def _bad(location: Path | str, why: str) -> DataError:
    return DataError(
        f"manifest {location}/{MANIFEST} is not a vptsearch manifest ({why}); "
        "accepted: a manifest.parquet written by `vptsearch data ...`; rebuild or re-import the task"
    )


def _field(meta: Mapping[str, Any], key: str, kind: type | tuple[type, ...], location: Path | str) -> Any:
    """``meta[key]`` checked against ``kind``: hand-edited or foreign manifests fail in one line."""
    if key not in meta:
        raise _bad(location, f"its metadata lacks {key!r}")
    value = meta[key]
    if (isinstance(value, bool) and kind is int) or not isinstance(value, kind):
        raise _bad(location, f"{key!r} is {value!r}")
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise _bad(location, f"{key!r} must be a list of strings, got {value!r}")
    return value


def _task_info(meta: Mapping[str, Any], location: Path | str) -> TaskInfo:
    name = _field(meta, "task", str, location)
    if name in TASKS:
        return TASKS.get(name)
    suite = _field(meta, "suite", str, location)
    num_classes = _field(meta, "num_classes", int, location)
    splits = tuple(_field(meta, "splits", list, location))
    search = tuple(_field(meta, "search_splits", list, location))
    final = tuple(_field(meta, "final_splits", list, location))
    group = _field(meta, "group", str, location)
    preprocessing = _field(meta, "preprocessing", str, location)
    if name != f"{suite}/{name.split('/', 1)[-1]}" or num_classes < 2:
        raise _bad(location, f"task {name!r} of suite {suite!r} with {num_classes} classes")
    if len(search) != 2 or len(final) != 2 or not set(search + final) <= set(splits):
        raise _bad(
            location, f"search splits {list(search)} / final splits {list(final)} not in {list(splits)}"
        )
    if group not in GROUPS or preprocessing not in PREPROCESSING:
        raise _bad(location, f"group {group!r} / preprocessing {preprocessing!r}")
    return TaskInfo(
        name=name,
        suite=suite,
        group=group,
        num_classes=num_classes,
        splits=splits,
        search_splits=(search[0], search[1]),
        final_splits=(final[0], final[1]),
        preprocessing=preprocessing,
        build_hint=str(meta.get("build_hint", "")),
        description=str(meta.get("description", "")),
    )


# A shard name is a plain file name in the task folder: never a path that leaves it.
_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")


def _parse(data: bytes | Path, location: Path | str, expected: str | None = None) -> Manifest:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(data if isinstance(data, Path) else io.BytesIO(data))
        meta = json.loads((table.schema.metadata or {})[_META_KEY])
        cols = table.to_pydict()
        rows = list(
            zip(
                cols["split"],
                cols["shard"],
                cols["num_samples"],
                cols["sha256"],
                cols["size_bytes"],
                strict=True,
            )
        )
    except (pa.ArrowException, KeyError, ValueError, OSError, TypeError) as exc:
        raise _bad(
            location, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None
    if not isinstance(meta, dict):
        raise _bad(location, "its metadata is not a JSON object")
    info = _task_info(meta, location)
    if expected is not None and info.name != expected:
        raise DataError(
            f"manifest {location}/{MANIFEST} describes task {info.name!r}, not {expected!r} (a renamed or "
            f"copied task folder?); accepted: the folder <root>/{info.name}; re-import it under the new name"
        )
    class_names = tuple(_field(meta, "class_names", list, location))
    if len(class_names) != info.num_classes:
        raise _bad(
            location, f"{len(class_names)} class names for {info.num_classes} classes of {info.name!r}"
        )
    shards = []
    for split, shard, n, sha, size in rows:
        if split not in info.splits or not isinstance(shard, str) or not _SHARD_NAME.fullmatch(shard):
            raise _bad(location, f"shard row {split!r} {shard!r}")
        if (
            not isinstance(n, int)
            or n < 1
            or not isinstance(size, int)
            or size < 0
            or not isinstance(sha, str)
        ):
            raise _bad(location, f"shard {shard!r} has num_samples {n!r}, size_bytes {size!r}")
        shards.append(ShardInfo(split, shard, n, sha, size))
    missing = [s for s in info.splits if s not in {sh.split for sh in shards}]
    if missing:
        raise _bad(location, f"no shards for split(s) {', '.join(missing)} of {info.name!r}")
    image_size = meta.get("image_size")
    return Manifest(
        task=info,
        class_names=class_names,
        shards=tuple(shards),
        location=location,
        builder=str(meta.get("builder", "")),
        params=meta.get("params", {}) if isinstance(meta.get("params"), dict) else {},
        image_size=image_size if isinstance(image_size, int) and not isinstance(image_size, bool) else None,
        version=int(meta["version"]) if isinstance(meta.get("version"), int) else 0,
    )


# Parsed local manifests, keyed by path and stat: get_task / resolve_tasks consult them often, and a
# rebuilt or edited manifest (new mtime / size / inode) is read again.
_PARSED: dict[Path, tuple[tuple[int, ...], Manifest]] = {}
_PARSED_LOCK = threading.Lock()


def file_signature(path: Path) -> tuple[int, ...]:
    """What tells a changed file from an unchanged one without reading it: size, mtime, ctime, inode."""
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _parse_local(path: Path, expected: str | None) -> Manifest:
    try:
        sig = file_signature(path)
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    with _PARSED_LOCK:
        hit = _PARSED.get(path)
    if hit is not None and hit[0] == sig:
        manifest = hit[1]
    else:
        manifest = _parse(path, path.parent)
        with _PARSED_LOCK:
            _PARSED[path] = (sig, manifest)
    if expected is not None and manifest.task.name != expected:
        _parse(path, path.parent, expected)  # raises the one-line "describes task ..." error
    return manifest


def manifest_at(location: Path | str, name: str) -> Manifest:
    """The manifest in the task folder ``location`` (a URL string for remote roots), which must
    describe task ``name``. Local manifests are parsed once per version of the file; remote ones are
    fetched on every call."""
    if isinstance(location, str):
        return _parse(_fetch(f"{location}/{MANIFEST}"), location, name)
    return _parse_local(location / MANIFEST, name)


_REMOTE_INFO: dict[str, TaskInfo | None] = {}


def task_info_from_disk(name: str, root: str | os.PathLike | None) -> TaskInfo | None:
    """TaskInfo of an unregistered task (e.g. an imported image folder) from its manifest, if built.

    A manifest that exists but is malformed raises its one-line DataError (it is not "unknown").
    """
    if "/" not in name:
        return None
    location = task_dir(name, root)
    if isinstance(location, str):  # remote root: fetched once per process
        if name not in _REMOTE_INFO:
            try:
                _REMOTE_INFO[name] = manifest_at(location, name).task
            except DataError:
                _REMOTE_INFO[name] = None
        return _REMOTE_INFO[name]
    if not (location / MANIFEST).is_file():
        return None
    return manifest_at(location, name).task


def disk_tasks(root: str | os.PathLike | None = None) -> dict[str, TaskInfo]:
    """The unregistered tasks built under a local root (imported folders), by name.

    A task whose manifest does not parse is left out here (so one broken folder does not hide
    the others); reading it by name raises its error. Remote roots cannot be listed: {}.
    """
    out: dict[str, TaskInfo] = {}
    for name in built_tasks(root):
        if name in TASKS:
            continue
        try:
            out[name] = manifest_at(Path(task_dir(name, root)), name).task
        except DataError:
            continue
    return out


def built_tasks(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the tasks with a manifest under a local root."""
    base = data_root(root)
    if isinstance(base, str) or not base.is_dir():
        return []
    # hidden folders are the writer's temporary / replaced builds, never tasks
    return sorted(
        f"{p.parent.parent.name}/{p.parent.name}"
        for p in base.glob(f"*/*/{MANIFEST}")
        if not p.parent.name.startswith(".") and not p.parent.parent.name.startswith(".")
    )
