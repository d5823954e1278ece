"""A backbone's cache of SPT initial prompts.

SPT initialisers are deterministic given (backbone, images, prompt shape, seed), and a search proposes
the same (task, p, init) many times: a worker process keeps the last results instead of re-running the
backbone over the init images and k-means for every trial (see ``benchmarks/bench_spt_init.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch

INIT_CACHE_SIZE = 32


class PromptInitCache:
    """The initial prompts (and init info) computed on ONE backbone, least recently used first out.

    Keys name the images and the prompt shape but not the backbone: a cache belongs to its backbone
    and lives as long as it does (``vptsearch.train`` keeps one per backbone, weakly keyed), so a key
    never outlives the object it was computed on, and the cache never keeps a dropped backbone alive.
    """

    def __init__(self, size: int = INIT_CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError(f"PromptInitCache size must be >= 1, got {size!r}")
        self.size = size
        self._entries: OrderedDict[Hashable, tuple[torch.Tensor, dict[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> tuple[torch.Tensor, dict[str, Any]] | None:
        """``(prompts, init info)`` stored under ``key``, or None; a hit becomes the newest entry."""
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def put(self, key: Hashable, prompts: torch.Tensor, info: dict[str, Any]) -> None:
        """Keep copies of ``prompts`` and ``info`` (the trial goes on training its own) under ``key``."""
        self._entries[key] = (prompts.detach().clone(), dict(info))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
