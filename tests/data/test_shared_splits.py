"""``load_split`` through a SplitStore: one decode for every process that shares the store, the
same arrays as a local decode, read-only memory the loaders can use, errors unchanged.
The Ray-backed store is tested in tests/search/test_split_store.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vptsearch._errors import DataError
from vptsearch.data import clear_cache, load_split, make_loader
from vptsearch.data._shared_splits import sharing_splits, split_key


class DictStore:
    """A SplitStore in one process: what a node's workers would share, with a decode counter."""

    def __init__(self) -> None:
        self.arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.decodes: list[str] = []

    def fetch(self, key, decode):
        if key not in self.arrays:
            self.decodes.append(key)
            images, labels = decode()
            images.setflags(write=False)  # as the object store hands them out
            self.arrays[key] = (images, labels)
        return self.arrays[key]


def test_processes_sharing_a_store_decode_a_split_once_and_see_the_local_decode(tiny_root):
    local_x, local_y = load_split("test/tiny", "train800")
    store = DictStore()
    for _ in range(3):  # three "processes": each starts with an empty per-process cache
        clear_cache()
        with sharing_splits(store):
            x, y = load_split("test/tiny", "train800")
        assert torch.equal(x, local_x) and torch.equal(y, local_y)
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape == local_x.shape
    assert len(store.decodes) == 1
    clear_cache()
    with sharing_splits(store):  # another size is another split
        load_split("test/tiny", "train800", size=16)
    assert len(store.decodes) == 2 and store.decodes[1] != store.decodes[0]


def test_outside_the_context_nothing_is_shared(tiny_root):
    store = DictStore()
    with sharing_splits(store):
        pass
    load_split("test/tiny", "val200")
    assert store.decodes == []


def test_a_read_only_shared_split_trains_and_evaluates_through_the_loaders(tiny_root):
    store = DictStore()
    with sharing_splits(store):
        loaders = [
            make_loader(
                "test/tiny",
                "train800",
                batch_size=8,
                image_size=8,
                mean=[0.5] * 3,
                std=[0.2] * 3,
                train=train,
            )
            for train in (True, False)
        ]
    for loader in loaders:
        xs = [x for x, _ in loader]
        assert sum(len(x) for x in xs) == 40 and all(x.dtype == torch.float32 for x in xs)


def test_a_bad_shard_still_fails_with_its_one_line_error_through_a_store(tiny_root):
    shard = next(tiny_root.joinpath("test", "tiny").glob("train800-*.tar"))
    shard.write_bytes(shard.read_bytes()[:100])
    with sharing_splits(DictStore()), pytest.raises(DataError, match="does not match its manifest sha256"):
        load_split("test/tiny", "train800")


def test_keys_name_content_not_paths():
    a = split_key("vtab1k/dtd", "train800", 224, ("aa", "bb"))
    assert a == split_key("vtab1k/dtd", "train800", 224, ("aa", "bb"))
    assert a.startswith("vtab1k/dtd/train800@224:")
    assert (
        len(
            {
                a,
                split_key("vtab1k/dtd", "train800", 224, ("aa", "bc")),
                split_key("vtab1k/dtd", "val200", 224, ("aa", "bb")),
                split_key("vtab1k/dtd", "train800", None, ("aa", "bb")),
            }
        )
        == 4
    )
