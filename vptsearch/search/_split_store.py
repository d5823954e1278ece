"""A launch's decoded splits in Ray's object store: each split decoded once, mapped by every worker.

Without it each trial worker decodes every split it trains on and keeps its own copy: on a node of
16 slots that is 16 decodes per split (0.45 ms per 224-px JPEG, on the CPU a GPU trial waits on)
and 16 copies in host memory. Here one actor per launch (no CPU reserved) keeps an index
``key -> ObjectRef``; the first worker that needs a split decodes it and puts it into the object
store through the actor, which owns it (so it outlives that worker), the others ``ray.get`` it: zero-copy,
read-only numpy arrays in shared memory (workers on another node pull one copy to theirs).
Workers that ask while a split is being decoded wait for it instead of decoding it again.

Bounded: the index keeps at most ``capacity_bytes`` (least recently fetched dropped first; a
worker that still maps one keeps it alive), and a split larger than a quarter of that is decoded
by each worker as before. Any failure of the store (actor gone, object lost) falls back to a local
decode: sharing is an optimisation, never a new way for a trial to fail.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from vptsearch.data._shared_splits import Arrays

log = logging.getLogger(__name__)
# how long a worker waits for another one's decode before doing it itself (a VTAB test split of
# 20k images decodes in ~10 s; a claimer killed mid-decode must not stall the others for long)
WAIT_S = 120.0
DEFAULT_SHARE = 0.25  # of a node's object store memory, as Ray reports it when the store starts


class DecodedSplits:
    """The actor's state (a plain class so tests can run it without Ray): which key is stored,
    which is being decoded, and the bytes held. Threaded actor: callers block in :meth:`claim`."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = int(capacity_bytes)
        self.refs: OrderedDict[str, tuple[list[Any], int]] = OrderedDict()
        self.decoding: set[str] = set()
        self.unshared: set[str] = set()  # too large to share: each worker decodes its own, at once
        self.stats = {"decoded": 0, "shared": 0, "too_large": 0, "evicted": 0, "abandoned": 0}
        self._cond = threading.Condition()

    def claim(self, key: str, wait_s: float = WAIT_S) -> list[Any] | None:
        """``[ref]`` when the split is stored (after waiting for a decode in progress), else None:
        the caller decodes it and then calls :meth:`put` or :meth:`abandon`."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            if key in self.unshared:
                return None
            while key in self.decoding and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            if key in self.refs:
                self.refs.move_to_end(key)
                self.stats["shared"] += 1
                return self.refs[key][0]
            self.decoding.add(key)
            return None

    def put(self, key: str, wrapped: list[Any], nbytes: int) -> None:
        with self._cond:
            self.decoding.discard(key)
            self.stats["decoded"] += 1
            self.refs[key] = (wrapped, int(nbytes))
            while sum(n for _, n in self.refs.values()) > self.capacity and len(self.refs) > 1:
                self.refs.popitem(last=False)
                self.stats["evicted"] += 1
            self._cond.notify_all()

    def abandon(self, key: str, too_large: bool = False) -> None:
        """The claimer will not put ``key`` (its decode failed, or the split is too large to share)."""
        with self._cond:
            self.decoding.discard(key)
            if too_large:  # nobody waits for it again: the others decode theirs in parallel
                self.unshared.add(key)
            self.stats["too_large" if too_large else "abandoned"] += 1
            self._cond.notify_all()

    def summary(self) -> dict[str, int]:
        with self._cond:
            return {**self.stats, "splits": len(self.refs), "bytes": sum(n for _, n in self.refs.values())}


class _SplitActor(DecodedSplits):
    def store(self, key: str, images: Any, labels: Any) -> list[Any]:
        """Put a decoded split into the object store as this actor's object (Ray 2.56 removed
        ``ray.put(_owner=...)``: an object put by the trial's worker would die with it); ``[ref]``."""
        wrapped = [ray.put((images, labels))]  # a copy: the arguments' objects belong to the caller
        self.put(key, wrapped, images.nbytes + labels.nbytes)
        return wrapped


_Actor = ray.remote(_SplitActor)


@dataclass(frozen=True)
class RaySplitStore:
    """The handle trials get (pickled into each trial): a ``SplitStore`` backed by the actor."""

    actor: Any
    capacity_bytes: int

    def fetch(self, key: str, decode: Callable[[], Arrays]) -> Arrays:
        try:
            wrapped = ray.get(self.actor.claim.remote(key))
            if wrapped is not None:
                return ray.get(wrapped[0])
        except ray.exceptions.RayError as exc:  # the actor or the object is gone: decode here
            log.debug("split store unavailable for %s (%s); decoding locally", key, type(exc).__name__)
            return decode()
        try:
            images, labels = decode()
        except BaseException:
            self._tell("abandon", key)
            raise
        nbytes = images.nbytes + labels.nbytes
        if nbytes > self.capacity_bytes // 4:
            self._tell("abandon", key, True)
            return images, labels
        try:
            wrapped = ray.get(self.actor.store.remote(key, images, labels))
            return ray.get(wrapped[0])  # the shared copy; this worker's own is dropped
        except ray.exceptions.RayError:
            return images, labels

    def summary(self) -> dict[str, int]:
        """What the store did so far: splits decoded, fetches it served, evictions, bytes held."""
        return ray.get(self.actor.summary.remote())

    def close(self) -> None:
        """End the store's actor, and with it the splits it owns: on a cluster that outlives the
        launch (``--address``, or a Ray the caller started) they would stay pinned in the object
        store until the driver exits (a second launch in the same process measured slower)."""
        with contextlib.suppress(Exception):
            ray.kill(self.actor)

    def _tell(self, method: str, *args: Any) -> None:
        with contextlib.suppress(ray.exceptions.RayError):
            getattr(self.actor, method).remote(*args)


def start_split_store(capacity_bytes: int | None = None) -> RaySplitStore:
    """Start the launch's store (call on the driver once Ray runs); it ends with the driver's job."""
    if capacity_bytes is None:  # of the smallest node's store: the copies live on the actor's node
        stores = [n["Resources"].get("object_store_memory", 0) for n in ray.nodes() if n.get("Alive")]
        capacity_bytes = int(min((s for s in stores if s > 0), default=2**31) * DEFAULT_SHARE)
    # threaded (callers block in claim while a split decodes), no CPU taken from the trials; not
    # restarted: a new actor would know no splits, and the workers fall back to decoding anyway
    actor = _Actor.options(
        name=f"vptsearch-splits-{uuid.uuid4().hex[:12]}", num_cpus=0, max_concurrency=256, max_restarts=0
    ).remote(capacity_bytes)
    return RaySplitStore(actor, capacity_bytes)
