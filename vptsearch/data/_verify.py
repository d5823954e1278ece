"""Check a task's shards against its manifest once, then remember that they passed.

What is checked, per shard of each requested split: the file exists, its size and sha256 are the
manifest's, its tar parses to exactly the manifest's number of samples, every label is in range and
(``decode=True``) every image decodes. That catches a truncated shard, random bytes, a manifest
claiming more samples than the tar holds and an undecodable image, before a launch spends trials
on them.

Decoding everything costs about a second for a mini task and minutes for a full VTAB-1k test
split, so a pass is recorded in ``<task folder>/.verified.json``, keyed by the stat signature
(size, mtime, ctime, inode) of the manifest and of every shard checked: a second launch reads no
shard, and any rewrite, truncation or copy of a file makes it check that file's split again. A
rebuild replaces the whole task folder, cache included. A read-only data root simply checks every
time. Remote roots (``s3://``, ``http(s)://``) are not verified here (that would download every
shard on every launch); their reader still checks sample counts while streaming.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vptsearch._errors import DataError
from vptsearch._hashing import sha256_bytes
from vptsearch.data._codec import decode_image
from vptsearch.data._lookup import read_manifest
from vptsearch.data._manifest import MANIFEST, Manifest, ShardInfo, file_signature
from vptsearch.data._reader import iter_shard, rebuild_hint
from vptsearch.data._tasks import TaskInfo

CACHE_FILE = ".verified.json"
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Verified:
    """The outcome of :func:`verify_task` (it raises on any problem, so this is always a pass)."""

    task: str
    splits: tuple[str, ...]
    samples: int  # samples in the requested splits
    checked: int  # samples read and checked now (0: every split came from the cache, or remote)
    seconds: float
    remote: bool = False


def _load_cache(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == _CACHE_VERSION else {}


def _save_cache(folder: Path, data: dict[str, Any]) -> None:
    tmp = folder / f"{CACHE_FILE}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, folder / CACHE_FILE)  # atomic: concurrent launches never read half a file
    except OSError:  # a read-only data root: verify again next time
        tmp.unlink(missing_ok=True)


def _shard_signatures(manifest: Manifest, shards: Sequence[ShardInfo]) -> dict[str, list[int]] | None:
    out: dict[str, list[int]] = {}
    for shard in shards:
        try:
            out[shard.name] = list(file_signature(Path(manifest.shard_location(shard))))
        except OSError:
            return None  # missing: not cached, and the check below names it
    return out


def verify_shard(manifest: Manifest, shard: ShardInfo, *, decode: bool = True) -> int:
    """Check one local shard against its manifest row; returns its sample count."""
    path = Path(manifest.shard_location(shard))
    hint = rebuild_hint(manifest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"shard {path} listed in the manifest is missing; rebuild with {hint}") from None
    except OSError as exc:
        raise DataError(f"cannot read shard {path}: {exc.strerror or exc}") from None
    if len(data) != shard.size_bytes:
        raise DataError(
            f"shard {path} is {len(data)} bytes but its manifest says {shard.size_bytes} "
            f"(truncated or modified); accepted: the shard as built; rebuild the task with {hint}"
        )
    if sha256_bytes(data) != shard.sha256:
        raise DataError(
            f"shard {path} does not match its manifest sha256 (truncated or modified); "
            f"accepted: the shard as built; rebuild the task with {hint}"
        )
    n = 0
    for key, image, _label in iter_shard(path, manifest.task.num_classes, data=data):
        n += 1
        if decode:
            try:
                decode_image(image)
            except ValueError as exc:
                raise DataError(
                    f"image of sample {key!r} of shard {path} does not decode: {exc}; "
                    f"accepted: PNG/JPEG images; rebuild the task with {hint}"
                ) from None
    if n != shard.num_samples:
        raise DataError(
            f"shard {path} holds {n} samples but its manifest says {shard.num_samples}; "
            f"accepted: a manifest written with its shards; rebuild the task with {hint}"
        )
    return n


def verify_task(
    task: TaskInfo | str,
    root: str | os.PathLike | None = None,
    splits: Iterable[str] | None = None,
    *,
    decode: bool = True,
    use_cache: bool = True,
) -> Verified:
    """Check ``splits`` (default: all) of a built task against its manifest; raise DataError if not.

    ``use_cache=False`` checks every shard even if an earlier pass is recorded (``data info --verify``);
    a pass is recorded either way.
    """
    start = time.perf_counter()
    manifest = read_manifest(task, root)
    wanted = list(dict.fromkeys(splits)) if splits is not None else manifest.splits
    by_split = {split: manifest.split_shards(split) for split in wanted}  # unknown split: DataError
    total = sum(s.num_samples for shards in by_split.values() for s in shards)
    name = manifest.task.name
    if isinstance(manifest.location, str):
        return Verified(name, tuple(wanted), total, 0, time.perf_counter() - start, remote=True)
    folder = manifest.location
    manifest_sig = list(file_signature(folder / MANIFEST))
    cache = _load_cache(folder)
    if cache.get("manifest") != manifest_sig:
        cache = {"version": _CACHE_VERSION, "manifest": manifest_sig, "splits": {}}
    done: dict[str, Any] = cache.setdefault("splits", {})
    checked = 0
    for split, shards in by_split.items():
        before = _shard_signatures(manifest, shards)
        entry = done.get(split)
        if (
            use_cache
            and before is not None
            and isinstance(entry, dict)
            and entry.get("shards") == before
            and (entry.get("decoded") or not decode)
        ):
            continue
        done.pop(split, None)
        checked += sum(verify_shard(manifest, shard, decode=decode) for shard in shards)
        after = _shard_signatures(manifest, shards)
        if after is not None and after == before:  # unchanged while we read it
            done[split] = {"shards": after, "decoded": decode}
    if checked:
        _save_cache(folder, cache)
    return Verified(name, tuple(wanted), total, checked, time.perf_counter() - start)


def verify_tasks(
    tasks: Iterable[str], root: str | os.PathLike | None = None, *, decode: bool = True
) -> list[Verified]:
    """:func:`verify_task` on the splits a launch reads (search and final) of each task."""
    out = []
    for task in tasks:
        info = read_manifest(task, root).task
        out.append(verify_task(task, root, (*info.search_splits, *info.final_splits), decode=decode))
    return out
