"""``make_loader``: batches of normalised float images with the task's transforms.

The in-memory path (default) decodes a split once per process (``load_split``), resizes it once
to the size the transforms need and keeps it as uint8; each epoch then only indexes, augments
(FGVC train) and normalises batches. Trials iterate it every epoch, so it has to be cheap.
``device=`` keeps those uint8 tensors on the training device (moved once per process, like the
decode) and indexes, augments and normalises there: a batch never crosses the bus, and a 4x larger
float copy of it is never made on the host. The CPU path is the same code on the CPU.
The streaming path runs the WebDataset pipeline under a plain torch ``DataLoader``.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from vptsearch._errors import DataError
from vptsearch.data._lookup import read_manifest
from vptsearch.data._reader import load_split, make_webdataset
from vptsearch.data._tasks import TaskInfo
from vptsearch.data._transforms import (
    Normalise,
    center_crop,
    random_resized_crop_flip,
    sample_transform,
    stored_size,
)

Batch = tuple[torch.Tensor, torch.Tensor]

# Device copies of decoded splits, per process: trials of one worker train on the same tasks again
# and again, so the split crosses the bus once. Keyed by the host tensor's id (the entry keeps the
# host tensor, so the id cannot be reused meanwhile). A VTAB-1k split at 224 px is ~120 MB uint8.
DEVICE_CACHE_SIZE = 8
_DEVICE_CACHE: OrderedDict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
_DEVICE_LOCK = threading.Lock()


def _on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.device == device:
        return t
    key = (id(t), str(device))
    with _DEVICE_LOCK:
        hit = _DEVICE_CACHE.get(key)
        if hit is not None:
            _DEVICE_CACHE.move_to_end(key)
            return hit[1]
    moved = t.to(device)
    with _DEVICE_LOCK:
        _DEVICE_CACHE[key] = (t, moved)
        while len(_DEVICE_CACHE) > DEVICE_CACHE_SIZE:
            _DEVICE_CACHE.popitem(last=False)
    return moved


class InMemoryLoader:
    """Iterates ``(x float [B, 3, S, S], y int64 [B])``; a new shuffle (and augmentation) per epoch.

    Epochs are counted by ``__iter__``; call :meth:`set_epoch` to resume deterministically.
    ``device``: where the uint8 images live and batches are made (default: where ``images`` are);
    the shuffle order and augmentation parameters are drawn on the CPU either way, so every device
    yields the same batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        augment: bool,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else images.device
        self.images, self.labels = _on_device(images, self.device), _on_device(labels, self.device)
        self.batch_size, self.image_size = batch_size, image_size
        self.train, self.augment, self.seed, self.drop_last = train, augment, seed, drop_last
        self.normalise = Normalise(mean, std)
        self.normalise.scale = self.normalise.scale.to(self.device)
        self.normalise.shift = self.normalise.shift.to(self.device)
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def statistics_view(self, batch_size: int) -> _FixedOrder:
        """The same images (the same tensors: nothing copied) in one fixed shuffled order, without
        augmentation, every time it is iterated: what a trial's precise-BN pass reads. Shuffled
        because splits may be stored class by class, and a pass over a prefix would see few classes.
        """
        view = copy.copy(self)
        view.augment, view.train, view.drop_last, view.batch_size = False, True, False, batch_size
        return _FixedOrder(view)

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n = self.num_samples
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        order = order.to(self.device)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = random_resized_crop_flip(x, self.image_size, generator=gen)
            elif x.shape[-1] != self.image_size:
                x = center_crop(x, self.image_size)
            yield self.normalise(x), self.labels[idx]


class _FixedOrder:
    """Iterates an :class:`InMemoryLoader` always as its first epoch (see ``statistics_view``)."""

    def __init__(self, loader: InMemoryLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        self.loader.set_epoch(0)
        return iter(self.loader)


class StreamingLoader:
    """The WebDataset path: a fresh ``DataLoader`` over the shard pipeline each epoch."""

    def __init__(
        self,
        task: TaskInfo | str,
        split: str,
        *,
        root,
        batch_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        seed: int,
        num_workers: int,
        drop_last: bool,
        shuffle_buffer: int,
        reader: str = "lean",
    ) -> None:
        manifest = read_manifest(task, root)
        self.task, self.split, self.root = manifest.task, split, root
        self.num_samples = sum(s.num_samples for s in manifest.split_shards(split))
        self.transform = sample_transform(manifest.task.preprocessing, image_size, mean, std, train)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.num_workers, self.drop_last, self.shuffle_buffer = num_workers, drop_last, shuffle_buffer
        self.reader = reader
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        ds = make_webdataset(
            self.task,
            self.split,
            root=self.root,
            transform=self.transform,
            shuffle=self.shuffle_buffer if self.train else 0,
            seed=self.seed * 1_000_003 + self.epoch,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            reader=self.reader,
        )
        self.epoch += 1
        batches = iter(DataLoader(ds, batch_size=None, num_workers=self.num_workers))
        message = None
        try:
            yield from batches
        except DataError as exc:  # from a worker the message carries its traceback: keep the last line
            message = str(exc).strip().splitlines()[-1].removeprefix("vptsearch._errors.DataError: ")
        finally:
            # stop the workers now; an iterator kept alive by the traceback would be joined much later
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        if message is not None:
            raise DataError(message)


def make_loader(
    task: TaskInfo | str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    batch_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    in_memory: bool = True,
    drop_last: bool = False,
    shuffle_buffer: int = 1000,
    reader: str = "lean",
    device: torch.device | str | None = None,
) -> InMemoryLoader | StreamingLoader:
    """Batches ``(x float [B, 3, S, S], y int64 [B])`` of a split with the task's transforms.

    ``train=True`` shuffles (and, for FGVC-style tasks, random-resized-crops and flips).
    ``in_memory=True`` decodes once per process and keeps uint8 tensors (``num_workers`` unused);
    ``in_memory=False`` streams the shards through WebDataset with ``num_workers`` workers
    (``reader``: ``"lean"`` tar parsing or the stock ``"webdataset"`` one, see ``make_webdataset``).
    ``device`` (in-memory only): keep the uint8 split there and build the batches there.
    """
    if batch_size < 1 or image_size < 1:
        raise DataError(f"batch_size and image_size must be positive, got {batch_size} and {image_size}")
    if not in_memory:
        return StreamingLoader(
            task,
            split,
            root=root,
            batch_size=batch_size,
            image_size=image_size,
            mean=mean,
            std=std,
            train=train,
            seed=seed,
            num_workers=num_workers,
            drop_last=drop_last,
            shuffle_buffer=shuffle_buffer,
            reader=reader,
        )
    info = read_manifest(task, root).task
    images, labels = load_split(task, split, root, size=stored_size(info.preprocessing, image_size))
    return InMemoryLoader(
        images,
        labels,
        batch_size=batch_size,
        image_size=image_size,
        mean=mean,
        std=std,
        train=train,
        augment=train and info.preprocessing == "fgvc",
        seed=seed,
        drop_last=drop_last,
        device=device,
    )
