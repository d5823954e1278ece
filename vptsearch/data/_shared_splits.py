"""Decoded splits shared between the processes of a node, behind a tiny interface.

``load_split`` decodes a split once per process. On a GPU node with 16 trial workers that is 16
decodes of every task's splits and 16 copies of them in host memory (a VTAB-1k task's train800 +
val200 at 224 px is ~150 MB, so 19 tasks ~2.9 GB per worker). A :class:`SplitStore` lets the
first process that needs a split decode it and the others map the same copy. The data layer only
defines the interface; the launch provides one backed by Ray's object store
(``vptsearch.search._split_store``) and turns it on around each trial with :func:`sharing_splits`.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray]  # images uint8 [N, 3, H, W], labels int64 [N]


class SplitStore(Protocol):
    """Where decoded splits are shared; ``fetch`` returns the split under ``key``, calling
    ``decode`` (at most once across the store's users) when nobody has stored it yet.

    The arrays it returns may be read-only (mapped from shared memory): callers never write them.
    A store that cannot serve (its service gone) decodes locally rather than fail the caller.
    """

    def fetch(self, key: str, decode: Callable[[], Arrays]) -> Arrays: ...


_STORE: contextvars.ContextVar[SplitStore | None] = contextvars.ContextVar("split_store", default=None)


@contextlib.contextmanager
def sharing_splits(store: SplitStore | None) -> Iterator[None]:
    """``load_split`` calls made inside go through ``store`` (None: each process decodes its own)."""
    token = _STORE.set(store)
    try:
        yield
    finally:
        _STORE.reset(token)


def current_store() -> SplitStore | None:
    return _STORE.get()


def split_key(task: str, split: str, size: int | None, shard_hashes: tuple[str, ...]) -> str:
    """Names a decoded split by content, not by path: nodes may mount the data root elsewhere."""
    text = "\n".join([task, split, str(size), *shard_hashes])
    return f"{task}/{split}@{size or 'stored'}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"
