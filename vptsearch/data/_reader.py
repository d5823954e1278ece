"""Reading shards: a checked local reader for decode-once splits, and the streaming WebDataset path.

``load_split`` decodes a split once per process and keeps uint8 ``[N, 3, H, W]`` tensors in memory
(VTAB-1k-size splits fit easily); it verifies each local shard's sha256 against the manifest first.
``make_webdataset`` is the streaming path: shard shuffle, a sample shuffle buffer, splitting by node
and by DataLoader worker, for plain paths, ``file://``, ``s3://`` and ``http(s)://`` shards.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from webdataset.tariterators import url_opener

from vptsearch._errors import DataError
from vptsearch._hashing import sha256_file
from vptsearch.data._codec import IMAGE_EXTS, decode_image
from vptsearch.data._lookup import read_manifest
from vptsearch.data._manifest import Manifest, ShardInfo
from vptsearch.data._shared_splits import current_store, split_key
from vptsearch.data._tarstream import tar_samples
from vptsearch.data._tasks import TaskInfo, hint_for

_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget the decoded splits kept by :func:`load_split` in this process."""
    with _CACHE_LOCK:
        _CACHE.clear()


def iter_shard(path: Path, num_classes: int, data: bytes | None = None) -> Iterator[tuple[str, bytes, int]]:
    """Yield ``(key, encoded image, label)`` from one local shard, with errors naming shard and key.

    ``data``: the shard's bytes when the caller has already read them (to hash them), read once.
    """
    last_key: str | None = None
    current: dict[str, Any] = {}

    def finish(sample: dict[str, Any]) -> tuple[str, bytes, int]:
        key = sample["__key__"]
        where = f"sample {key!r} of shard {path}"
        image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        if image is None or "cls" not in sample:
            raise DataError(f"{where} lacks an image (.png/.jpg) or a label (.cls); the shard is corrupt")
        try:
            label = int(sample["cls"])
        except ValueError:
            raise DataError(f"{where} has a non-integer label {sample['cls'][:20]!r}") from None
        if not 0 <= label < num_classes:
            raise DataError(f"{where} has label {label}, out of range 0..{num_classes - 1}")
        return key, image, label

    try:
        source: dict[str, Any] = {"fileobj": io.BytesIO(data)} if data is not None else {"name": path}
        with tarfile.open(mode="r:", **source) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if current and key != current["__key__"]:
                    yield finish(current)
                    last_key, current = current["__key__"], {}
                if not current:
                    current["__key__"] = key
                if ext in current:
                    raise DataError(f"duplicate file {member.name!r} in shard {path}")
                fobj = tar.extractfile(member)
                current[ext] = fobj.read() if fobj is not None else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        after = f" after sample {last_key!r}" if last_key else " at its first sample"
        key = f" while reading sample {current['__key__']!r}" if current else ""
        raise DataError(f"corrupt or truncated shard {path}{key}{after}: {exc}") from None
    if current:
        yield finish(current)


def _verify(manifest: Manifest, shard: ShardInfo, path: Path) -> None:
    hint = rebuild_hint(manifest)
    if not path.is_file():
        raise DataError(f"shard {path} listed in the manifest is missing; rebuild with {hint}")
    if path.stat().st_size != shard.size_bytes or sha256_file(path) != shard.sha256:
        raise DataError(
            f"shard {path} does not match its manifest sha256 (truncated or modified); "
            f"rebuild the task with {hint}"
        )


def rebuild_hint(manifest: Manifest) -> str:
    """The build command with ``--root`` when the task lives under a non-default data root."""
    location = Path(manifest.location)
    root = location.parents[len(manifest.task.name.split("/")) - 1]
    return hint_for(manifest.task, root)


def _decode_resized(data: bytes, size: int | None, where: str) -> np.ndarray:
    try:
        arr = decode_image(data)
    except ValueError as exc:
        raise DataError(f"image of {where} does not decode: {exc}") from None
    if size is not None and arr.shape[:2] != (size, size):
        t = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        arr = t[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return arr


def load_split(
    task: TaskInfo | str,
    split: str,
    root: str | os.PathLike | None = None,
    *,
    size: int | None = None,
    verify: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a split once and keep it: ``(images uint8 [N, 3, H, W], labels int64 [N])``.

    ``size`` resizes every image to ``size x size`` while decoding (needed when stored sizes vary).
    Results are cached per process (keyed by the manifest's shard hashes); treat them as read-only.
    Inside :func:`~vptsearch.data._shared_splits.sharing_splits` the decode goes through the given
    store, so the processes of a node decode a split once and share one copy of it.
    """
    manifest = read_manifest(task, root)
    shards = manifest.split_shards(split)
    hashes = tuple(s.sha256 for s in shards)
    cache_key = (str(manifest.location), split, size, hashes)
    with _CACHE_LOCK:
        hit = _CACHE.get(cache_key)
    if hit is not None:
        return hit
    store = current_store()
    if store is None:
        images, labels = _decode_split(manifest, shards, split, size, verify)
    else:
        key = split_key(manifest.task.name, split, size, hashes)
        images, labels = store.fetch(key, lambda: _decode_split(manifest, shards, split, size, verify))
    with warnings.catch_warnings():  # a shared split is read-only memory; the loaders only index it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
    with _CACHE_LOCK:
        _CACHE[cache_key] = (x, y)
    return x, y


def _decode_split(
    manifest: Manifest, shards: list[ShardInfo], split: str, size: int | None, verify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The split's images ``uint8 [N, 3, H, W]`` and labels ``int64 [N]``, decoded and checked."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    for shard in shards:
        loc = manifest.shard_location(shard)
        if isinstance(loc, str):  # remote: stream through the WebDataset pipes
            stream = _iter_remote(loc, manifest.task.num_classes)
        else:
            if verify:
                _verify(manifest, shard, loc)
            stream = iter_shard(loc, manifest.task.num_classes)
        for key, data, label in stream:
            images.append(_decode_resized(data, size, f"sample {key!r} of shard {loc}"))
            labels.append(label)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(
            f"images of {manifest.task.name!r}/{split} have different sizes ({len(shapes)} shapes, e.g. "
            f"{sorted(shapes)[:2]}); pass size= to load_split, or import with --resize"
        )
    expected = sum(s.num_samples for s in shards)
    if len(labels) != expected:
        raise DataError(
            f"split {split!r} of {manifest.task.name!r} has {len(labels)} samples, manifest says {expected}"
        )
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)), np.asarray(labels, dtype=np.int64)


# --- streaming -------------------------------------------------------------------------------


def shard_url(location: Path | str) -> str:
    """A WebDataset URL for a shard: local paths as they are, s3/http(s) through pipes."""
    loc = str(location)
    if loc.startswith("s3://"):
        return f"pipe:aws s3 cp {loc} -"
    if loc.startswith(("http://", "https://")):
        return f"pipe:curl -s -L --fail {loc}"
    if loc.startswith("file://"):
        return loc[len("file://") :]
    return loc


def shard_urls(task: TaskInfo | str, split: str, root: str | os.PathLike | None = None) -> list[str]:
    """The WebDataset URLs of a split's shards."""
    manifest = read_manifest(task, root)
    return [shard_url(manifest.shard_location(s)) for s in manifest.split_shards(split)]


def _raise_data_error(exn: Exception) -> bool:
    """WebDataset handler: turn any reading error into a one-line DataError naming the shard."""
    if isinstance(exn, DataError):
        raise exn
    urls = [a for a in exn.args[1:] if isinstance(a, str)]
    where = f" in shard {urls[-1]}" if urls else ""
    raise DataError(f"corrupt or truncated shard{where}: {exn.args[0] if exn.args else exn!r}") from None


def _iter_remote(location: str, num_classes: int) -> Iterator[tuple[str, bytes, int]]:
    ds = wds.WebDataset(
        shard_url(location),
        shardshuffle=False,
        handler=_raise_data_error,
        nodesplitter=None,
        workersplitter=None,
        empty_check=False,
    )
    for sample in ds:
        key = sample["__key__"]
        image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        if image is None or "cls" not in sample:
            raise DataError(f"sample {key!r} of shard {location} lacks an image or a label")
        label = int(sample["cls"])
        if not 0 <= label < num_classes:
            raise DataError(f"sample {key!r} of shard {location} has label {label}, out of range")
        yield key, image, label


def _decoder(num_classes: int, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> Callable:
    def decode(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
        key, url = sample.get("__key__"), sample.get("__url__")
        where = f"sample {key!r} of shard {url}"
        image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        if image is None or "cls" not in sample:
            raise DataError(f"{where} lacks an image (.png/.jpg) or a label (.cls)")
        try:
            label = int(sample["cls"])
        except ValueError:
            raise DataError(f"{where} has a non-integer label") from None
        if not 0 <= label < num_classes:
            raise DataError(f"{where} has label {label}, out of range 0..{num_classes - 1}")
        x = torch.from_numpy(_decode_resized(image, None, where)).permute(2, 0, 1).contiguous()
        return (transform(x) if transform is not None else x), label

    return decode


def _check_counts(expected: dict[str, int]) -> Callable:
    """Pipeline stage: a shard that ends early (truncated) is an error, not a silently shorter epoch."""

    def check(url: str, n: int) -> None:
        if url in expected and n != expected[url]:
            raise DataError(f"corrupt or truncated shard {url}: read {n} of {expected[url]} samples")

    def stage(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        url, n = None, 0
        for sample in src:
            if sample.get("__url__") != url:
                if url is not None:
                    check(url, n)
                url, n = sample.get("__url__"), 0
            n += 1
            yield sample
        if url is not None:
            check(url, n)

    return stage


def make_webdataset(
    task: TaskInfo | str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shuffle: int = 0,
    seed: int = 0,
    batch_size: int | None = None,
    drop_last: bool = False,
    reader: str = "lean",
) -> wds.DataPipeline:
    """A streaming WebDataset pipeline of ``(image, label)`` (uint8 ``[3, H, W]`` unless ``transform``).

    ``shuffle > 0`` shuffles the shard order (reproducibly from ``seed``) and samples through a
    buffer of that size. Shards are split by node (``torch.distributed`` rank) and by DataLoader
    worker, so ``DataLoader(ds, batch_size=None, num_workers=k)`` sees every sample exactly once per
    epoch. With ``batch_size`` the pipeline yields collated batches. ``reader="webdataset"`` uses
    the stock ``wds.WebDataset`` (Python ``tarfile``); the default ``"lean"`` runs the same stages
    with :func:`~vptsearch.data._tarstream.tar_samples`, about twice as fast for small images.
    A shard that ends early raises DataError naming it.
    """
    if reader not in ("lean", "webdataset"):
        raise DataError(f"unknown shard reader {reader!r}; accepted: lean, webdataset")
    manifest = read_manifest(task, root)
    shards = manifest.split_shards(split)
    urls = [shard_url(manifest.shard_location(s)) for s in shards]
    counts = _check_counts({u: s.num_samples for u, s in zip(urls, shards, strict=True)})
    if reader == "webdataset":
        ds = wds.WebDataset(
            urls,
            handler=_raise_data_error,
            shardshuffle=len(urls) if shuffle else False,
            detshuffle=True,
            seed=seed,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            empty_check=False,  # a worker may get no shard when shards < workers; that is fine
        ).compose(counts)
    else:
        stages: list[Any] = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker]
        if shuffle:
            stages.append(wds.detshuffle(len(urls), seed=seed))
        stages += [functools.partial(url_opener, handler=_raise_data_error), tar_samples, counts]
        ds = wds.DataPipeline(*stages)
    if shuffle:
        ds = ds.compose(wds.shuffle(shuffle, seed=seed))
    ds = ds.compose(wds.map(_decoder(manifest.task.num_classes, transform), handler=_raise_data_error))
    if batch_size is not None:
        ds = ds.compose(wds.batched(batch_size, partial=not drop_last))
    return ds
