"""MLflow writes survive an unreachable tracking store: the spool, its replay, and `vptsearch sync`.

Fast unit tests use real sqlite MLflow stores (no MLflow mocks). The end-to-end test kills a real
`mlflow server` mid-launch, restarts it, and syncs (see mlflow_server in test_mlflow_server.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vptsearch.search._records import run_ref
from vptsearch.search._spool import POS_FILE, SPOOL_FILE, Spool, read_records, unsynced
from vptsearch.search._tracking import Tracker, sync


def _write_launch(run_dir: Path, uri: str, epochs: int = 3, trials: int = 2, **tracker: bool) -> Tracker:
    """What a launch writes for one task: launch run, task run, trial runs with per-epoch metrics."""
    t = Tracker(uri, "exp", None, "exp/1", run_dir=run_dir, **tracker)
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


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty sqlite MLflow store: copies of it skip MLflow's ~2 s schema set-up."""
    path = tmp_path_factory.mktemp("store") / "empty.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def stores(tmp_path: Path, empty_store: Path) -> tuple[Path, str, str]:
    import shutil

    for name in ("a.db", "b.db"):
        shutil.copy(empty_store, tmp_path / name)
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


def test_writes_do_not_wait_for_a_locked_store_and_catch_up(stores) -> None:
    """Another process holds the sqlite store's write lock: logging returns at once (the records
    wait on disk), and the writer catches up when the lock goes, with nothing lost or doubled."""
    import sqlite3

    run_dir, a, _ = stores
    t = Tracker(a, "exp", None, "exp/1", run_dir=run_dir)
    task = t.task_run("mini/digits", "natural")
    deadline = time.monotonic() + 30
    while t.writer.backlog and time.monotonic() < deadline:  # the task run is in the store
        time.sleep(0.05)
    con = sqlite3.connect(a[len("sqlite:///") :], timeout=30, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")  # the store is now unwritable for everyone else
    try:
        ref = t.run("trial-0", {"kind": "trial"}, {"trial_id": "exp/1/search/0"}, parent=task, new=True)
        for epoch in range(1, 51):
            t.log(ref, metrics={"val_acc": epoch / 100}, step=epoch)
        t.end(ref)
        time.sleep(1.0)
        assert t.writer.backlog == 52 and unsynced(run_dir, a) == 52  # all on disk, none applied
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert t.close() == 0 and unsynced(run_dir, a) == 0
    got = _content(a)
    assert set(got) == {"mini/digits", "trial-0"} and got["trial-0"]["status"] == "FINISHED"
    assert got["trial-0"]["metrics"]["val_acc"] == [(e, e / 100) for e in range(1, 51)]


def test_unreachable_server_leaves_the_tail_for_sync(stores) -> None:
    """A server that refuses connections: the writer retries, gives up at close with a count,
    and `sync --tracking-uri` replays every record elsewhere."""
    from vptsearch.search._spool import Applier, Spool, Writer
    from vptsearch.search._tracking import client

    from .test_mlflow_server import free_port

    run_dir, a, b = stores
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    writer = Writer(Spool(run_dir), Applier(client(dead), "exp", None), dead, interval_s=0.0)
    writer.start()
    records = [rec for _, rec in read_records(_spool_of(run_dir, a))]
    for rec in records:
        writer.submit(rec)
    left = writer.close(drain_s=30, down_grace_s=0.5)
    assert left == len(records) and writer.last_error
    assert unsynced(run_dir, dead) == left
    c = sync(run_dir, tracking_uri=b)
    assert c["runs_created"] == 4 and c["left"] == 0
    assert set(_content(b)) == {"exp/1", "mini/digits", "trial-0", "trial-1"}


def _spool_of(tmp: Path, uri: str) -> Path:
    """A launch's spool written elsewhere (to copy its records)."""
    other = tmp.parent / "other"
    other.mkdir()
    _write_launch(other, uri).close()
    return other / SPOOL_FILE


@pytest.mark.slow
def test_server_killed_mid_launch_then_sync(base_raw, tmp_path) -> None:
    """The tracking server dies after the first trial: the launch finishes and says how to sync;
    once the server is back, `vptsearch sync` completes the store; a second sync writes nothing."""
    import os
    import re
    import signal
    import subprocess
    import sys

    import yaml

    from .test_mlflow_server import free_port, launch_runs, start_mlflow_server, stop_mlflow_server, tiny_raw

    port, root = free_port(), tmp_path / "server"
    uri = f"http://127.0.0.1:{port}"
    raw = tiny_raw(base_raw)
    raw["search"]["trials_per_task"] = 3
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    server = start_mlflow_server(root, port)
    cmd = [sys.executable, "-m", "vptsearch.cli", "launch", "--space", str(space), "--no-dashboard",
           "--tracking-uri", uri]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a Ray of its own, not another running cluster
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env=env)  # fmt: skip
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if "[search 1/" in line:
                stop_mlflow_server(server, signal.SIGKILL)  # gone, mid-run
                break
        out.append(proc.communicate(timeout=600)[0])
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_mlflow_server(server, signal.SIGKILL)
    text = "".join(out)
    assert proc.returncode == 0, text[-3000:]
    line = r"(\d+) MLflow writes not synced \(server (\S+) unreachable.*run `vptsearch sync (\S+)`"
    m = re.search(line, text)
    assert m is not None and int(m[1]) > 0 and m[2] == uri, text[-3000:]
    run_dir = Path(m[3])
    results = json.loads((run_dir / "results.json").read_text())  # nothing lost on disk
    assert (tmp_path / "exports" / run_dir.name / "mini__digits" / "prompts.safetensors").is_file()
    assert unsynced(run_dir, uri) == int(m[1])

    server = start_mlflow_server(root, port)  # back, same port and backend
    try:
        sync1 = subprocess.run([sys.executable, "-m", "vptsearch.cli", "sync", str(run_dir)],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        assert sync1.returncode == 0 and f"synced {m[1]} MLflow write(s)" in sync1.stdout, sync1.stdout
        assert unsynced(run_dir, uri) == 0
        runs = launch_runs(uri)
        kinds = [r.data.tags["vptsearch.kind"] for r in runs]
        assert sorted(kinds) == ["launch", "task", "trial", "trial", "trial", "trial"]  # 3 search + 1 final
        trials = [r for r in runs if r.data.tags["vptsearch.kind"] == "trial"]
        assert len({r.data.tags["vptsearch.trial_id"] for r in trials}) == 4
        assert all(r.info.status == "FINISHED" for r in runs)
        search = [r for r in trials if r.data.tags["vptsearch.phase"] == "search"]
        statuses = [r.data.tags["vptsearch.status"] for r in search]
        counts = results["tasks"]["mini/digits"]["counts"]
        assert {s: statuses.count(s) for s in set(statuses)} == {k: v for k, v in counts.items() if v}
        from mlflow.tracking import MlflowClient

        c = MlflowClient(uri)
        for r in trials:
            steps = sorted(x.step for x in c.get_metric_history(r.info.run_id, "train_loss"))
            assert steps == list(range(1, len(steps) + 1)) and steps
        (task,) = [r for r in runs if r.data.tags["vptsearch.kind"] == "task"]
        assert task.data.metrics["best_val_acc"] == results["tasks"]["mini/digits"]["best"]["val_acc"]
        assert "bundle/prompts.safetensors" in {a.path for a in c.list_artifacts(task.info.run_id, "bundle")}
        sync2 = subprocess.run([sys.executable, "-m", "vptsearch.cli", "sync", str(run_dir)],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        assert sync2.returncode == 0 and "synced 0 MLflow write(s)" in sync2.stdout, sync2.stdout
        assert len(launch_runs(uri)) == len(runs)
    finally:
        stop_mlflow_server(server)


def test_the_writer_is_a_process_of_its_own_and_equals_the_thread(stores, tmp_path: Path) -> None:
    """With writer_process=True the store work runs in a child process (off the driver's GIL); the
    store ends up with exactly what the thread writer (the default) writes."""
    import shutil

    from vptsearch.search._spool_process import WriterProcess

    run_dir, a, b = stores
    t = _write_launch(run_dir, a, writer_process=True)
    assert isinstance(t.writer, WriterProcess) and t.writer.is_alive()
    assert t.writer.proc.pid != os.getpid()
    assert t.close() == 0 and not t.writer.is_alive() and unsynced(run_dir, a) == 0
    other = tmp_path / "thread"
    other.mkdir()
    shutil.copy(run_dir / "tracking.json", other / "tracking.json")
    thread = _write_launch(other, b, writer_process=False)
    assert not isinstance(thread.writer, WriterProcess)
    assert thread.close() == 0
    assert _content(a) == _content(b)


def test_a_killed_driver_leaves_its_writer_to_drain_the_spool(stores) -> None:
    """The driver dies without closing its Tracker (SIGKILL, OOM): the writer process sees the pipe
    close, applies everything the driver appended, records the position, and exits."""
    import subprocess
    import sys
    import textwrap

    run_dir, a, _ = stores
    driver = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_tracking_faults import _write_launch
        from pathlib import Path
        t = _write_launch(Path({str(run_dir)!r}), {a!r}, epochs=5, trials=3, writer_process=True)
        print(t.writer.proc.pid, flush=True)
        os._exit(0)  # no close(): what a killed driver does
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=120, check=True
    )
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 60
    while unsynced(run_dir, a) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert unsynced(run_dir, a) == 0
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child)
    got = _content(a)
    assert {f"trial-{i}" for i in range(3)} <= set(got)
    assert got["trial-2"]["metrics"]["val_acc"] == [(e, e / 10 + 2) for e in range(1, 6)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is not a writer: its exit status is waiting
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False
