"""A simulated 2-node Ray cluster (``ray.cluster_utils.Cluster``): preflight checks, resources, the
backbone through the object store, ``--address`` handling. One cluster is shared by the module
(head with 0 CPUs, so every trial and task that needs a CPU lands on the worker node)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from vptsearch._errors import ConfigError, DataError
from vptsearch.cli import main
from vptsearch.spec import spec_from_dict

from .conftest import TASKS, TINY_KWARGS
from .test_bad_input import _write


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def _launch_error(capsys, args: list[str]) -> str:
    """Like test_bad_input's, but Ray stays up: these launches join the test's own cluster."""
    assert main(["launch", "--no-dashboard", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vptsearch: error: ") and "\n" not in err
    return err


# --- node loss (first: it needs its own 3-node cluster before the module's 2-node one starts) ------
@pytest.mark.slow
def test_losing_a_worker_node_mid_launch_loses_no_trial(base_raw, tmp_path) -> None:
    """Head (0 CPU) + 2 workers (1 CPU each). The fault is made deterministic: a thread waits until
    a trial has reported an early epoch (results carry ``node_id``; with a checkpoint every epoch
    that epoch's checkpoint is on the shared storage), then kills the worker node it ran on, so
    the fault never depends on where Ray placed the trials (in one run of six, all of them ran
    one after another on the same node). The launch finishes, every trial of the budget is
    accounted for, and that very trial was retried on the other node from its checkpoint (no
    epoch twice, none missing)."""
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster

    from vptsearch.search import launch

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = {n.node_id: n for n in (c.add_node(num_cpus=1), c.add_node(num_cpus=1))}
    storage = tmp_path / "nfs"
    epochs = 8  # killed at epoch 1 or 2: six epochs of margin for the kill to land before the trial ends
    raw = {**base_raw, "storage": {"path": str(storage), "shared": True},
           "search": {**base_raw["search"], "trials_per_task": 3},
           "params": {**base_raw["params"], "optim.base_lr": {"choice": [1.0, 5.0]}},
           "scheduler": {"type": "none"},  # no early stop: the killed trial had epochs left to run
           "training": {"epochs": epochs, "warmup_epochs": 1, "batch_size": 64, "checkpoint_every": 1},
           "protocol": {"final_seeds": [0], "probe": False}}  # fmt: skip
    killed: dict[str, object] = {}

    def kill_a_node_after_an_early_report() -> None:
        # The driver writes each result to its staging folder in the Ray session as it arrives
        # (the shared storage only gets periodic syncs).
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            for path in session.glob("artifacts/*/search/driver_artifacts/*/result.json"):
                try:
                    text = path.read_text()
                except OSError:  # Tune moved it between the glob and the read: a dead killer fails the test
                    continue
                for line in text.splitlines():
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue  # a line being written
                    if r.get("node_id") in workers and 1 <= r.get("epoch", 0) <= 2:
                        c.remove_node(workers[r["node_id"]], allow_graceful=False)  # raylet and workers die
                        killed.update(trial_id=r["trial_id"], epoch=r["epoch"], node_id=r["node_id"])
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_node_after_an_early_report, daemon=True)
    try:
        ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
        c.wait_for_nodes()
        killer.start()
        summary = launch(spec_from_dict(raw), address=c.address, dashboard=False, say=lambda *_: None)
        killer.join(timeout=5)
        assert killed, "no trial reported an early epoch from a worker node"
        results = json.loads((summary.run_dir / "results.json").read_text())
        for task in TASKS:
            counts = results["tasks"][task]["counts"]
            assert counts.get("failed", 0) == 0, counts
            assert sum(counts.get(k, 0) for k in ("completed", "pruned", "diverged")) == 3, counts
            assert results["tasks"][task]["test_accs"], "the final phase lost its trial"

        path = storage / "smoke" / summary.run_dir.name / "search"
        analysis = tune.ExperimentAnalysis(str(path))
        assert len(analysis.trials) == 6
        (trial,) = [t for t in analysis.trials if t.trial_id == killed["trial_id"]]
        assert trial.run_metadata.num_failures >= 1, "the trial on the removed node was not retried"
        df = analysis.trial_dataframes[trial.trial_id]
        assert list(df["epoch"]) == list(range(1, epochs + 1))  # resumed from its checkpoint
        # The node dies a moment after the killer saw its report: the trial may report one more
        # epoch there first. Every epoch after the doomed node's last report ran elsewhere.
        doomed = killed["node_id"]
        last_on_doomed = int(df["epoch"][df["node_id"] == doomed].max())
        assert killed["epoch"] <= last_on_doomed < epochs, (killed, last_on_doomed)
        after = set(df["node_id"][df["epoch"] > last_on_doomed])
        assert after and doomed not in after
        for t in analysis.trials:
            seen = list(analysis.trial_dataframes[t.trial_id]["epoch"])
            assert seen == sorted(set(seen)), (t, seen)  # resumed, never restarted
    finally:
        ray.shutdown()
        c.shutdown()


# --- no cluster needed ------------------------------------------------------------------------------
def test_fractional_gpu_reaches_tunes_placement(base_raw) -> None:
    from vptsearch.search._trainable import make_trainable

    spec = spec_from_dict({**base_raw, "resources": {"cpu": 2, "gpu": 0.25}})
    assert (spec.resources.cpu, spec.resources.gpu) == (2.0, 0.25)
    # What Tune's scheduler asks the trainable class (tune.with_resources) for each trial.
    pgf = make_trainable(spec).default_resource_request({})
    assert pgf.required_resources == {"CPU": 2.0, "GPU": 0.25}
    with pytest.raises(ConfigError, match=r"resources\.gpu"):
        spec_from_dict({**base_raw, "resources": {"gpu": 1.5}})


def test_unreachable_address_fails_fast_with_one_line(base_raw, tmp_path, capsys) -> None:
    for address in ("127.0.0.1:9", "ray://127.0.0.1:9"):
        t0 = time.monotonic()
        err = _launch_error(capsys, ["--space", _write(tmp_path, base_raw), "--address", address])
        assert time.monotonic() - t0 < 10
        assert address in err and "unreachable" in err
    err = _launch_error(capsys, ["--space", _write(tmp_path, base_raw), "--address", "headnode"])
    assert "HOST:PORT" in err


# --- on the 2-node cluster --------------------------------------------------------------------------
def test_local_storage_refused_on_two_nodes_before_any_trial(cluster, base_raw, tmp_path, capsys) -> None:
    err = _launch_error(capsys, ["--space", _write(tmp_path, base_raw), "--address", cluster.address])
    assert "2 alive nodes" in err and "s3://" in err and "storage.shared: true" in err
    runs = list((tmp_path / "runs").rglob("search"))
    assert runs == []  # no Tune experiment was started


def test_shared_storage_passes_and_every_node_is_checked_for_data(cluster, base_raw, tmp_path) -> None:
    from vptsearch.search import _cluster
    from vptsearch.search._storage import launch_storage

    raw = {**base_raw, "storage": {"path": str(tmp_path / "nfs"), "shared": True}}
    spec = spec_from_dict(raw)
    store = launch_storage(spec, tmp_path / "runs" / "smoke" / "stamp")
    assert store.shared and store.path == str(tmp_path / "nfs" / "smoke" / "stamp")
    said: list[str] = []
    assert _cluster.preflight(spec, store, list(TASKS), said.append) == 2
    assert "2 nodes (1 can host a trial)" in said[0]

    # a node whose data root lacks the tasks: one line naming the node, the root and the command
    empty = tmp_path / "empty"
    with pytest.raises(DataError) as exc:
        _cluster.check_nodes_data(list(TASKS), str(empty), _cluster.alive_nodes())
    msg = str(exc.value)
    assert "\n" not in msg and "node " in msg and str(empty) in msg
    assert "vptsearch data build-mini" in msg and TASKS[0] in msg


def test_resources_beyond_the_cluster_are_refused(cluster, base_raw, tmp_path, capsys) -> None:
    raw = {**base_raw, "storage": {"path": str(tmp_path / "nfs"), "shared": True}}
    for resources, key in (({"cpu": 4}, "resources.cpu"), ({"cpu": 1, "gpu": 0.5}, "resources.gpu")):
        space = _write(tmp_path, {**raw, "resources": resources})
        err = _launch_error(capsys, ["--space", space, "--address", cluster.address])
        assert key in err and "add nodes" in err


def test_trial_on_a_worker_builds_the_backbone_from_the_object_store(
    cluster, base_raw, tiny_backbone_file, tmp_path
) -> None:
    """The weights file exists only while the driver loads it; the trial (on the worker node, the
    head has no CPU) still trains, and the backbone it got carries the driver's sha256."""
    import ray
    import torch
    from ray import tune

    from vptsearch.models import load_backbone
    from vptsearch.search._cluster import SharedBackbone, share_backbone
    from vptsearch.search._trainable import make_trainable

    weights = tmp_path / "weights" / "tiny.safetensors"
    weights.parent.mkdir()
    shutil.copy(tiny_backbone_file, weights)
    driver = load_backbone(weights, architecture="vit_tiny_patch16_224", model_kwargs=TINY_KWARGS)
    shared = share_backbone(driver)
    shutil.rmtree(weights.parent)  # gone: nobody can read the file any more

    remote = ray.get(ray.remote(num_cpus=1)(SharedBackbone.get).remote(shared))
    assert remote.sha256 == driver.sha256 == shared.sha256
    assert remote.architecture == driver.architecture and remote.source == "local"
    for k, v in driver.model.state_dict().items():
        assert torch.equal(remote.model.state_dict()[k], v)

    raw = {**base_raw, "backbone": {**base_raw["backbone"], "name": str(weights)},
           "training": {"epochs": 1, "warmup_epochs": 0, "batch_size": 64}}  # fmt: skip
    spec = spec_from_dict(raw)
    config = {"task": TASKS[0], "phase": "search", "seed": 0, "method": "vpt", "prompt.length": 1,
              "optim.base_lr": 1.0}  # fmt: skip
    tuner = tune.Tuner(
        make_trainable(spec, shared),
        param_space=config,
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="t", verbose=0),
    )
    result = tuner.fit()[0]
    assert result.error is None, result.error
    assert result.metrics["epoch"] == 1 and 0.0 <= result.metrics["val_acc"] <= 1.0
    assert not weights.exists()


def test_shared_backbone_is_cached_per_process(cluster, tiny_backbone_file) -> None:
    from vptsearch.models import load_backbone
    from vptsearch.search._cluster import share_backbone

    shared = share_backbone(
        load_backbone(tiny_backbone_file, architecture="vit_tiny_patch16_224", model_kwargs=TINY_KWARGS)
    )
    first = shared.get()
    assert shared.get() is first  # one build per worker process, reused by every trial
    assert first.sha256 == shared.sha256 and first.model.training is False


def test_workers_on_another_node_than_the_split_store_share_its_splits(cluster, mini_root) -> None:
    """The store's actor takes no CPU, so it may sit on the head; trials run on the worker node
    (the head has no CPU) and fetch the split across: decoded once, served to the second."""
    import ray

    from vptsearch.search._split_store import start_split_store

    from .test_split_store import _load_in_a_fresh_worker

    store = start_split_store()
    load = ray.remote(num_cpus=1, max_calls=1)(_load_in_a_fresh_worker)
    first, second = (ray.get(load.remote(TASKS[0], "val200", str(mini_root), store)) for _ in range(2))
    assert first[2] is True and second[2] is False and first[1] == second[1]
    assert store.summary()["decoded"] == 1 and store.summary()["shared"] == 1
