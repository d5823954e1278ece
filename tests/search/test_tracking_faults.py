"""MLflow writes survive an unreachable tracking store: the spool, its replay, and `vptsearch sync`.

Fast unit tests use real sqlite MLflow stores (no MLflow mocks). The end-to-end test kills a real
`mlflow server` mid-launch, restarts it, and syncs (see mlflow_server in test_mlflow_server.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vptsearch.search._spool import POS_FILE, SPOOL_FILE, Spool, read_records, run_ref, unsynced
from vptsearch.search._tracking import Tracker, sync


def _write_launch(run_dir: Path, uri: str, epochs: int = 3, trials: int = 2) -> Tracker:
    """What a launch writes for one task: launch run, task run, trial runs with per-epoch metrics."""
    t = Tracker(uri, "exp", None, "exp/1", run_dir=run_dir)
    launch = t.launch_run("exp/1")
    task = t.task_run("mini/digits", "natural")
    for i in range(trials):
        ref = t.run(f"trial-{i}", {"kind": "trial"}, {"trial_id": f"exp/1/search/{i}"}, parent=task, new=True)
        t.log(ref, params={"optim.base_lr": 0.5 * (i + 1), "prompt.length": 4})
        for epoch in range(1, epochs + 1):
            t.log(ref, metrics={"val_acc": epoch / 10 + i, "train_loss": 1.0 / epoch}, step=epoch)
        t.log(ref, tags={"vptsearch.status": "completed"})
        t.end(ref)
    t.log(task, params={"best.trial_id": "0"}, metrics={"best_val_acc": 0.3}, tags={"best.init": "random"})
    t.end(task)
    t.log_artifact(launch, run_dir / "tracking.json")
    t.end(launch)
    return t


def _content(uri: str) -> dict[str, dict]:
    """Per run name: status, parent name, params, and the full metric histories as (step, value)."""
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("exp")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    names = {r.info.run_id: r.info.run_name for r in runs}
    out = {}
    for r in runs:
        assert r.info.run_name not in out, f"duplicate run {r.info.run_name}"
        out[r.info.run_name] = {
            "status": r.info.status,
            "parent": names.get(r.data.tags.get("mlflow.parentRunId")),
            "params": dict(r.data.params),
            "metrics": {
                k: sorted((m.step, m.value) for m in c.get_metric_history(r.info.run_id, k))
                for k in r.data.metrics
            },
            "artifacts": sorted(a.path for a in c.list_artifacts(r.info.run_id)),
        }
    return out


@pytest.fixture()
def stores(tmp_path: Path) -> tuple[Path, str, str]:
    (tmp_path / "run").mkdir()
    info = {"uri": f"sqlite:///{tmp_path / 'a.db'}", "experiment": "exp", "launch_id": "exp/1",
            "artifact_location": (tmp_path / "art").as_uri()}  # fmt: skip
    (tmp_path / "run" / "tracking.json").write_text(json.dumps(info))
    return tmp_path / "run", f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"


def test_writer_drains_the_spool_and_replay_is_idempotent(stores) -> None:
    run_dir, a, b = stores
    t = _write_launch(run_dir, a)
    assert t.close() == 0 and unsynced(run_dir, a) == 0
    clean = _content(a)
    assert set(clean) == {"exp/1", "mini/digits", "trial-0", "trial-1"}
    assert clean["trial-1"]["parent"] == "mini/digits" and clean["trial-1"]["status"] == "FINISHED"
    assert clean["trial-1"]["metrics"]["val_acc"] == [(1, 1.1), (2, 1.2), (3, 1.3)]
    assert clean["exp/1"]["artifacts"] == ["tracking.json"]

    first = sync(run_dir)  # the launch's own store is up to date: nothing to do
    assert first["left"] == 0 and first.get("records", 0) == 0

    # Into another store: everything, once; a full replay again (positions forgotten) adds nothing.
    c1 = sync(run_dir, tracking_uri=b)
    assert c1["runs_created"] == 4 and c1["metrics"] == 2 * 3 * 2 + 1 and c1["left"] == 0
    pos = json.loads((run_dir / POS_FILE).read_text())
    del pos[b]
    (run_dir / POS_FILE).write_text(json.dumps(pos))
    c2 = sync(run_dir, tracking_uri=b)
    assert c2.get("runs_created", 0) == 0 and c2["runs_found"] == 4
    assert c2.get("metrics", 0) == 0 and c2["metrics_skipped"] == 13 and c2.get("params", 0) == 0
    assert _content(b) == {k: {**v, "artifacts": v["artifacts"]} for k, v in clean.items()}


def test_torn_last_line_is_ignored_and_cut_on_reopen(stores) -> None:
    run_dir, a, _ = stores
    _write_launch(run_dir, a).close()
    spool = run_dir / SPOOL_FILE
    n = len(list(read_records(spool)))
    with open(spool, "ab") as fh:  # a driver killed in the middle of an append
        fh.write(b'{"op":"log","ref":"{\\"vptsearch.kind\\":')
    assert len(list(read_records(spool))) == n
    assert sync(run_dir).get("records", 0) == 0
    s = Spool(run_dir)  # reopening (--resume) cuts the torn line, so appends start on a clean line
    s.append({"op": "end", "ref": run_ref({"vptsearch.kind": "launch", "vptsearch.launch": "exp/1"}),
              "status": "FAILED"})  # fmt: skip
    s.close()
    assert len(list(read_records(spool))) == n + 1
    assert unsynced(run_dir, a) == 1
    c = sync(run_dir)
    assert c["records"] == 1 and c["ends"] == 1 and c["left"] == 0
    assert _content(a)["exp/1"]["status"] == "FAILED"


def test_positions_make_sync_incremental(stores) -> None:
    run_dir, a, b = stores
    _write_launch(run_dir, a, trials=1).close()
    c1 = sync(run_dir, tracking_uri=b)
    assert c1["runs_created"] == 3
    # A resumed launch appends to the same spool: only its new records go to `b` on the next sync.
    t = Tracker(a, "exp", None, "exp/1", run_dir=run_dir)
    task = t.task_run("mini/digits", "natural")
    ref = t.run("trial-9", {"kind": "trial"}, {"trial_id": "exp/1/search/9"}, parent=task)
    t.log(ref, metrics={"val_acc": 0.9}, step=1)
    t.end(ref)
    assert t.close() == 0
    c2 = sync(run_dir, tracking_uri=b)
    assert c2["records"] == 4 and c2["runs_created"] == 1 and c2["runs_found"] == 1 and c2["metrics"] == 1
    assert sync(run_dir, tracking_uri=b).get("records", 0) == 0
    assert set(_content(b)) == set(_content(a)) == {"exp/1", "mini/digits", "trial-0", "trial-9"}


def test_sync_bad_run_dir(tmp_path) -> None:
    from vptsearch._errors import ConfigError

    with pytest.raises(ConfigError, match="not a launch folder"):
        sync(tmp_path)
