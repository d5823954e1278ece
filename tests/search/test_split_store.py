"""The launch's decoded-split store: its index (claims, waiting for a decode in progress, a failed
decode, the byte bound) without Ray, then the actor with real Ray workers: one decode for the
workers of a launch, objects that outlive the worker that decoded them, a local decode when the
store is gone, and a launch whose trials share their splits."""

from __future__ import annotations

import threading
import time

import pytest

from vptsearch.search._split_store import DecodedSplits

from .conftest import own_ray


# --- the actor's index, without Ray -----------------------------------------------------------------
def test_a_second_claimer_waits_for_the_first_decode_and_gets_its_object():
    index = DecodedSplits(capacity_bytes=1000)
    assert index.claim("k") is None  # the first caller decodes
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(index.claim("k", wait_s=10)))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive() and got == []  # waiting, not decoding too
    index.put("k", ["ref"], 100)
    waiter.join(5)
    assert got == [["ref"]]
    assert index.summary() == {
        "decoded": 1,
        "shared": 1,
        "too_large": 0,
        "evicted": 0,
        "abandoned": 0,
        "splits": 1,
        "bytes": 100,
    }


def test_a_failed_decode_hands_the_claim_to_a_waiter():
    index = DecodedSplits(capacity_bytes=1000)
    assert index.claim("k") is None
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(index.claim("k", wait_s=10)))
    waiter.start()
    time.sleep(0.1)
    index.abandon("k")
    waiter.join(5)
    assert got == [None]  # the waiter decodes it now
    assert index.summary()["abandoned"] == 1


def test_a_split_too_large_to_share_is_claimed_by_every_worker_at_once():
    index = DecodedSplits(capacity_bytes=1000)
    assert index.claim("big") is None
    index.abandon("big", too_large=True)
    t0 = time.monotonic()
    assert index.claim("big", wait_s=5) is None and index.claim("big", wait_s=5) is None
    assert time.monotonic() - t0 < 1 and "big" not in index.decoding  # nobody waits on a decode


def test_a_claimer_that_never_answers_stalls_others_only_for_the_wait():
    index = DecodedSplits(capacity_bytes=1000)
    assert index.claim("k") is None
    t0 = time.monotonic()
    assert index.claim("k", wait_s=0.3) is None
    assert 0.25 < time.monotonic() - t0 < 3


def test_the_index_holds_at_most_its_capacity_dropping_the_least_recently_fetched():
    index = DecodedSplits(capacity_bytes=250)
    for key in ("a", "b"):
        index.claim(key)
        index.put(key, [key], 100)
    assert index.claim("a") == ["a"]  # "a" fetched again: "b" is now the oldest
    index.claim("c")
    index.put("c", ["c"], 100)
    assert set(index.refs) == {"a", "c"} and index.summary()["evicted"] == 1
    assert index.claim("b") is None  # dropped: decoded again


# --- with Ray ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    with own_ray():
        yield


def _load_in_a_fresh_worker(task: str, split: str, root: str, store) -> tuple[int, int, bool]:
    """(the worker's pid, the split's pixel sum, whether this worker decoded it)."""
    import os

    from vptsearch.data import load_split
    from vptsearch.data._shared_splits import sharing_splits

    decoded: list[bool] = []

    class Spy:  # counts this worker's decodes, passes everything else to the real store
        def fetch(self, key, decode):
            return store.fetch(key, lambda: decoded.append(True) or decode())

    with sharing_splits(Spy()):
        x, _ = load_split(task, split, root)
    return os.getpid(), int(x.sum()), bool(decoded)


def test_workers_of_a_launch_decode_a_split_once_and_it_outlives_the_decoding_worker(local_ray, mini_root):
    import ray

    from vptsearch.data import clear_cache, load_split
    from vptsearch.search._split_store import start_split_store

    clear_cache()
    expected = int(load_split("mini/digits", "val200", mini_root)[0].sum())
    store = start_split_store()
    # max_calls=1: each call in a new worker process, which exits after it (the decoder included)
    load = ray.remote(num_cpus=1, max_calls=1)(_load_in_a_fresh_worker)
    first = ray.get(load.remote("mini/digits", "val200", str(mini_root), store))
    later = ray.get([load.remote("mini/digits", "val200", str(mini_root), store) for _ in range(3)])
    assert first[1:] == (expected, True)
    assert [r[1:] for r in later] == [(expected, False)] * 3
    assert len({first[0], *(r[0] for r in later)}) == 4  # four processes
    summary = store.summary()
    assert summary["decoded"] == 1 and summary["shared"] == 3 and summary["splits"] == 1
    assert summary["bytes"] > 0


def test_a_split_too_large_to_share_is_decoded_by_each_worker(local_ray, mini_root):
    import ray

    from vptsearch.search._split_store import start_split_store

    store = start_split_store(capacity_bytes=1000)  # a quarter: 250 bytes, less than any split
    load = ray.remote(num_cpus=1, max_calls=1)(_load_in_a_fresh_worker)
    runs = ray.get([load.remote("mini/digits", "val200", str(mini_root), store) for _ in range(2)])
    assert [r[2] for r in runs] == [True, True]
    assert store.summary()["too_large"] == 2 and store.summary()["splits"] == 0


def test_a_store_whose_actor_is_gone_decodes_locally(local_ray, mini_root):
    import ray

    from vptsearch.data import clear_cache, load_split
    from vptsearch.data._shared_splits import sharing_splits
    from vptsearch.search._split_store import start_split_store

    store = start_split_store()
    ray.kill(store.actor)
    clear_cache()
    with sharing_splits(store):
        x, y = load_split("mini/digits", "val200", mini_root)
    clear_cache()
    assert x.shape[0] == y.shape[0] == len(load_split("mini/digits", "val200", mini_root)[1])


def test_trials_of_a_tuner_share_their_task_splits(local_ray, base_raw, tmp_path):
    from ray import tune

    from vptsearch.search._split_store import start_split_store
    from vptsearch.search._trainable import make_trainable
    from vptsearch.spec import spec_from_dict

    raw = {
        **base_raw,
        "suite": ["mini/digits"],
        "training": {"epochs": 1, "warmup_epochs": 0, "batch_size": 64},
    }
    spec = spec_from_dict(raw)
    store = start_split_store()
    config = {
        "task": "mini/digits",
        "phase": "search",
        "seed": tune.grid_search([0, 1, 2]),
        "method": "linear",
        "optim.base_lr": 0.1,
    }
    tuner = tune.Tuner(
        make_trainable(spec, splits=store),
        param_space=config,
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", reuse_actors=False),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="t", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors and len(results) == 3
    summary = store.summary()
    # train800 and val200, each decoded by one of the three trials' processes
    assert summary["decoded"] == 2 and summary["shared"] == 4, summary


def test_a_launch_on_a_running_cluster_leaves_no_split_store_behind(local_ray, base_raw, tmp_path):
    """The store's actor owns the decoded splits: on a cluster that outlives the launch they would
    stay pinned in the object store until the caller's process exits."""
    import ray
    from ray.util import list_named_actors

    import vptsearch.search as search
    from vptsearch.spec import spec_from_dict

    raw = {**base_raw, "suite": ["mini/digits"], "params": {**base_raw["params"], "optim.base_lr": 1.0},
           "search": {**base_raw["search"], "trials_per_task": 1, "n_startup_trials": 1},
           "training": {"epochs": 1, "warmup_epochs": 0, "batch_size": 64},
           "protocol": {"final_seeds": [0], "probe": False}}  # fmt: skip
    before = set(list_named_actors())  # the stores this module's other tests started
    search.launch(spec_from_dict(raw), dashboard=False, say=lambda *_: None)
    assert ray.is_initialized()  # the caller's cluster is left running
    assert not [a for a in set(list_named_actors()) - before if a.startswith("vptsearch-splits-")]
