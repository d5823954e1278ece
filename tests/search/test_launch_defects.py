"""Defects found breaking `vptsearch launch` on purpose (issue 15): each test failed before its fix.

Fast: no launch here starts Ray except the module's one local Ray session for the Tune-level tests.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from vptsearch._errors import ConfigError
from vptsearch.cli import main
from vptsearch.spec import spec_from_dict

from .conftest import own_ray
from .test_bad_input import _launch_error, _write

TASK = "mini/digits"


# --- defect 1: two launches in the same second -----------------------------------------------------
def test_launches_in_the_same_second_get_their_own_run_dir_and_launch_id(base_raw, monkeypatch) -> None:
    from vptsearch.search import _rundir

    spec = spec_from_dict(base_raw)
    monkeypatch.setattr(_rundir.time, "strftime", lambda fmt, *a: "20261202-120000")  # one second
    first, _, _ = _rundir.prepare_run_dir(spec, resume=False)
    second, _, _ = _rundir.prepare_run_dir(spec, resume=False)
    assert first.is_dir() and second.is_dir()  # claimed at once, not ~20 s later after preflight
    assert first != second and second.name == "20261202-120000-1"
    assert f"{spec.name}/{first.name}" != f"{spec.name}/{second.name}"  # the launch ids


def test_run_dir_allocation_is_atomic_under_concurrency(tmp_path) -> None:
    from vptsearch.search._rundir import allocate_run_dir

    got: list[Path] = []
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        got.append(allocate_run_dir(tmp_path / "runs" / "smoke", "20261202-120000"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name for p in got}) == 8
    assert sorted(p.name for p in (tmp_path / "runs" / "smoke").iterdir()) == sorted(p.name for p in got)


def test_latest_run_dir_orders_suffixed_stamps_chronologically(base_raw) -> None:
    from vptsearch.search._rundir import SPEC_FILE, latest_run_dir

    spec = spec_from_dict(base_raw)
    base = Path(spec.run_dir) / spec.name
    for name in ("20261202-120000", "20261202-120000-2", "20261202-120000-10"):
        (base / name).mkdir(parents=True)
        (base / name / SPEC_FILE).write_text("name: smoke\n")
    latest = latest_run_dir(spec)
    assert latest is not None and latest.name == "20261202-120000-10"


def test_a_launch_refused_in_preflight_leaves_no_run_dir(base_raw, tmp_path, capsys) -> None:
    raw = {**base_raw, "export": {"dir": str(tmp_path / "a-file")}}
    (tmp_path / "a-file").write_text("not a folder")
    _launch_error(capsys, ["--space", _write(tmp_path, raw)])
    assert not (tmp_path / "runs").exists()


_OPEN_STORE = """
import sys, time
from pathlib import Path
from vptsearch.search._tracking import Tracker
ready = Path(sys.argv[2])
(ready / sys.argv[3]).touch()  # imports done: wait for the other process, then open at once
while len(list(ready.iterdir())) < 2:
    time.sleep(0.002)
Tracker(sys.argv[1], "smoke", None, "smoke/" + sys.argv[3]).task_run("mini/digits", "natural")
print("ok")
"""


def test_two_processes_open_a_fresh_sqlite_store_at_once(tmp_path) -> None:
    """Both create the store and its tables (MLflow's alembic migrations) at the same moment: the
    second used to die mid-migration with a traceback; opening is serialised now."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen([sys.executable, "-c", _OPEN_STORE, uri, str(ready), str(i)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
        assert "Traceback" not in err, err[-2000:]
    from mlflow import MlflowClient

    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("smoke").experiment_id])
    assert len(runs) == 2  # each process's task run, in one store


# --- defect 2: corrupt shards fail preflight --------------------------------------------------------
def _copy_task(mini_root: Path, dest: Path) -> Path:
    shutil.copytree(mini_root / TASK, dest / TASK)
    return dest / TASK


def _rewrite_manifest(folder: Path, shard: str, **changes: object) -> None:
    import pyarrow.parquet as pq

    path = folder / "manifest.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    for row in rows:
        if row["shard"] == shard:
            row.update(changes)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def _truncate(folder: Path) -> str:
    p = folder / "val200-000000.tar"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p.name


def _random_bytes(folder: Path) -> str:
    p = folder / "train800-000000.tar"
    p.write_bytes(os.urandom(p.stat().st_size))
    return p.name


def _more_samples_claimed(folder: Path) -> str:
    import pyarrow.parquet as pq

    name = "val200-000000.tar"
    rows = pq.read_table(folder / "manifest.parquet").to_pylist()
    n = next(r["num_samples"] for r in rows if r["shard"] == name)
    _rewrite_manifest(folder, name, num_samples=n + 5)
    return name


def _undecodable_png(folder: Path) -> str:
    """One image's bytes replaced by garbage, the manifest's size and sha256 updated to match: only
    decoding finds it."""
    import hashlib

    name = "val200-000000.tar"
    path = folder / name
    buf = io.BytesIO()
    with tarfile.open(path) as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        bad_done = False
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name.endswith(".png") and not bad_done:
                data, bad_done = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, True
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    path.chmod(0o644)
    path.write_bytes(buf.getvalue())
    _rewrite_manifest(folder, name, size_bytes=len(buf.getvalue()),
                      sha256=hashlib.sha256(buf.getvalue()).hexdigest())  # fmt: skip
    return name


@pytest.mark.parametrize("corrupt", [_truncate, _random_bytes, _more_samples_claimed, _undecodable_png])
def test_corrupt_shard_fails_preflight_with_one_line(corrupt, base_raw, mini_root, tmp_path, capsys) -> None:
    folder = _copy_task(mini_root, tmp_path / "shards")
    for p in folder.glob("*.tar"):
        p.chmod(0o644)
    (folder / ".verified.json").unlink(missing_ok=True)
    shard = corrupt(folder)
    raw = {**base_raw, "suite": [TASK], "data_root": str(tmp_path / "shards")}
    t0 = time.monotonic()
    err = _launch_error(capsys, ["--space", _write(tmp_path, raw)])  # exit 2, one line, Ray never started
    assert shard in err and "rebuild" in err, err
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "runs").exists()


def test_verification_is_cached_per_manifest(base_raw, mini_root, tmp_path) -> None:
    from vptsearch.search._preflight import verify_data

    _copy_task(mini_root, tmp_path / "shards")
    spec = spec_from_dict({**base_raw, "suite": [TASK], "data_root": str(tmp_path / "shards")})
    said: list[str] = []
    verify_data(spec, [TASK], said.append)
    assert said and "verified" in said[0]
    said.clear()
    verify_data(spec, [TASK], said.append)
    assert said == []  # the second launch reads no shard


def _summary(rows: list[dict], bundles: dict, tmp_path: Path):
    from vptsearch.search._driver import LaunchSummary

    return LaunchSummary("smoke/20261202-120000", tmp_path, "sqlite:///x.db", "smoke", rows, bundles)


def _row(task: str, completed: int, failed: int = 0, val: float | None = 0.5) -> dict:
    return {"task": task, "group": "mini", "val_acc": val, "completed": completed, "pruned": 0,
            "diverged": 0, "failed": failed}  # fmt: skip


def test_launch_exits_1_when_a_task_has_no_result(base_raw, tmp_path, monkeypatch, capsys) -> None:
    from vptsearch.search import _driver

    space = _write(tmp_path, base_raw)
    cases = [
        # (rows, bundles, rc, words in the one line)
        ([_row(TASK, 0, failed=4, val=None), _row("mini/textures", 2)], {"mini/textures": tmp_path},
         1, ["mini/digits has no completed trial", "4 failed"]),
        ([_row(TASK, 2), _row("mini/textures", 2)], {}, 1, ["nothing was exported"]),
        ([_row(TASK, 2)], {TASK: tmp_path}, 0, []),
    ]  # fmt: skip
    for rows, bundles, rc, words in cases:
        monkeypatch.setattr(_driver, "launch", lambda spec, r=rows, b=bundles, **kw: _summary(r, b, tmp_path))
        assert main(["launch", "--no-dashboard", "--space", space]) == rc
        err = capsys.readouterr().err.strip()
        if rc:
            assert err.startswith("vptsearch: error: ") and "\n" not in err
            assert all(w in err for w in words), err
        else:
            assert err == ""


def test_interrupted_launch_names_the_space_file_in_its_resume_hint(base_raw, tmp_path, monkeypatch, capsys):
    from vptsearch.search import _driver

    def interrupted(spec, **kw):
        raise _driver.LaunchInterrupted("search", 3, 8)

    space = _write(tmp_path, base_raw)
    monkeypatch.setattr(_driver, "launch", interrupted)
    assert main(["launch", "--no-dashboard", "--space", space]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("vptsearch: interrupted: ") and "\n" not in err
    assert "3/8 trials finished" in err and f"--space {space} --no-dashboard --resume" in err
    assert "..." not in err


def test_a_ctrl_c_before_a_trial_reported_ends_as_an_interrupted_search(tmp_path) -> None:
    """Tune returns the results of trials it had started but that never reported (no metrics, so no
    config): the search's records leave them out (they were a TypeError, a traceback instead of the
    interrupted launch's one line), and the trials that did report are still selected on."""
    from ray.tune import Result

    from vptsearch.search._phases import final_runs, trial_records

    cfg = {"task": "mini/digits", "phase": "search", "method": "linear", "optim.base_lr": 1.0}
    last = {"config": cfg, "trial_id": "a", "epoch": 2, "val_acc": 0.5, "done": True}
    reported = Result(metrics=last, checkpoint=None, error=None, path=str(tmp_path / "a"))
    never = Result(metrics={}, checkpoint=None, error=None, path=str(tmp_path / "b"))
    assert never.config is None
    (record,) = trial_records([never, reported], max_epochs=2)
    assert record.trial_id == "a" and record.status == "completed" and record.val_acc == 0.5
    assert final_runs([never], tmp_path, max_epochs=2) == {}


# --- Tune-level: a local Ray per test ---------------------------------------------------------------
# Not module-scoped: the preflight tests below assert that a refused launch never started Ray.
@pytest.fixture
def local_ray():
    with own_ray():
        yield


def test_a_trial_meeting_bad_data_fails_once_with_its_error_in_mlflow(
    local_ray, base_raw, mini_root, tmp_path
) -> None:
    """Preflight is bypassed (the shard goes bad after it): the trial ends at once with a result
    naming the DataError, Tune does not retry it (max_failures=2), MLflow gets status failed and
    the error tag."""
    from mlflow import MlflowClient
    from ray import tune

    from vptsearch.search._tracking import PREFIX, ProgressCallback, Tracker, TrackingCallback
    from vptsearch.search._trainable import make_trainable

    folder = _copy_task(mini_root, tmp_path / "shards")
    for p in folder.glob("*.tar"):
        p.chmod(0o644)
    _truncate(folder)
    raw = {**base_raw, "suite": [TASK], "data_root": str(tmp_path / "shards"),
           "training": {"epochs": 2, "warmup_epochs": 0, "batch_size": 64}}  # fmt: skip
    spec = spec_from_dict(raw)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = Tracker(uri, "smoke", None, "smoke/1").task_run(TASK, "natural")
    config = {"task": TASK, "phase": "search", "seed": 0, "method": "vpt", "prompt.length": 1,
              "prompt.init": "random", "optim.base_lr": 1.0}  # fmt: skip
    tuner = tune.Tuner(
        make_trainable(spec),
        param_space=config,
        tune_config=tune.TuneConfig(metric="val_acc", mode="max"),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray"), name="t", verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),
            callbacks=[TrackingCallback(uri, "smoke", None, "smoke/1", {TASK: parent}, 2, resume=False),
                       ProgressCallback(1, 2, "search")],
        ),
    )  # fmt: skip
    result = tuner.fit()[0]
    assert result.error is None  # ended normally: nothing for Tune to retry
    error = result.metrics["error"]
    assert error.startswith("DataError: ") and "val200-000000.tar" in error
    analysis = tune.ExperimentAnalysis(str(tmp_path / "ray" / "t"))
    assert [t.run_metadata.num_failures for t in analysis.trials] == [0]
    assert len(analysis.trial_dataframes[analysis.trials[0].trial_id]) == 1  # reported once

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke").experiment_id
    (run,) = client.search_runs([exp], f"tags.`{PREFIX}kind` = 'trial'")
    assert run.data.tags[PREFIX + "status"] == "failed" and run.info.status == "FAILED"
    assert run.data.tags[PREFIX + "error"] == error[:500]


def _slow_trial(config: dict) -> None:
    from ray import tune

    for epoch in range(1, config["epochs"] + 1):
        time.sleep(config["sleep"])
        tune.report({"epoch": epoch})


def test_ctrl_c_counts_only_finished_trials_and_hides_tunes_restore_hint(local_ray, tmp_path) -> None:
    import logging
    import signal

    from ray import tune

    from vptsearch.search._phases import _quiet_tune_restore_hint, finished_trials

    tuner = tune.Tuner(
        _slow_trial,
        param_space={"epochs": 3, "sleep": tune.grid_search([0.01, 60.0])},  # one finishes, one never
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="t", verbose=0),
    )

    def ctrl_c() -> None:
        trials = tmp_path / "ray" / "t"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the quick trial's last epoch is on disk
            if any('"epoch": 3' in p.read_text() for p in trials.rglob("result.json")):
                break
            time.sleep(0.2)
        time.sleep(2)
        os.kill(os.getpid(), signal.SIGINT)

    class Records(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    seen = Records()  # on Tune's own logger: the "ray" logger does not propagate to pytest's
    tune_log = logging.getLogger("ray.tune.tune")
    level = tune_log.level
    tune_log.setLevel(logging.WARNING)  # the fixture's Ray logs errors only
    tune_log.addHandler(seen)
    threading.Thread(target=ctrl_c, daemon=True).start()
    try:
        with _quiet_tune_restore_hint():
            results = tuner.fit()
    finally:
        tune_log.removeHandler(seen)
        tune_log.setLevel(level)
    assert results.num_terminated == 2  # what the old message counted: the interrupted one too
    assert finished_trials(results, max_epochs=3) == 1
    assert any("Stop signal received" in line for line in seen.lines)  # Tune's other lines stay
    assert not any("Tuner.restore(" in line for line in seen.lines), seen.lines


def test_a_restored_trial_that_trained_every_epoch_counts_as_finished_without_tunes_done() -> None:
    """Ray keeps ``done`` of a trial whose function returned in memory only: an experiment restored
    from its snapshot (S3 storage) has finished trials whose last result lacks it. Ended by their
    own last result: every epoch trained, diverged, a recorded failure. Not: an interrupted one."""
    from types import SimpleNamespace

    from vptsearch.search._phases import finished_trials

    def result(**last: object) -> SimpleNamespace:
        return SimpleNamespace(metrics={"trial_id": "t", "done": False, **last}, error=None)

    assert finished_trials([result(epoch=5)], max_epochs=5) == 1  # completed, snapshot without done
    assert finished_trials([result(epoch=2, diverged=1)], max_epochs=5) == 1
    assert finished_trials([result(epoch=1, error="bad image")], max_epochs=5) == 1
    assert finished_trials([result(epoch=3, done=True)], max_epochs=5) == 1  # stopped by ASHA
    assert finished_trials([result(epoch=3)], max_epochs=5) == 0  # interrupted mid-run
    assert finished_trials([SimpleNamespace(metrics={}, error=None)], max_epochs=5) == 0  # never reported


# --- defect 3: ui on a port in use ------------------------------------------------------------------
def test_ui_on_a_port_in_use_says_so_and_starts_nothing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--port", str(port)]) == 2
        assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err.strip()
    assert err == f"vptsearch: error: port {port} is in use on 127.0.0.1; pass --port with a free port " \
        "(or stop what listens there)"  # fmt: skip
    assert not (tmp_path / ".vptsearch" / "ui.json").exists()


def test_bound_by_tells_our_listener_from_someone_elses() -> None:
    from vptsearch.search._ui_cli import bound_by

    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            assert bound_by(port, os.getpgrp()) is True
            assert bound_by(port, other.pid) is False  # alive, but not the one listening
    finally:
        other.kill()
        other.wait()


# --- defect 4: export.dir checked in preflight -------------------------------------------------------
def test_export_dir_that_is_a_file_fails_preflight(base_raw, tmp_path, capsys) -> None:
    (tmp_path / "exports").write_text("a file where the bundles would go")
    err = _launch_error(capsys, ["--space", _write(tmp_path, base_raw)])
    assert str(tmp_path / "exports") in err and "is a file" in err and "accepted:" in err
    assert (tmp_path / "exports").read_text() == "a file where the bundles would go"
    nested = {**base_raw, "export": {"dir": str(tmp_path / "exports" / "deeper")}}
    err = _launch_error(capsys, ["--space", _write(tmp_path, nested)])
    assert "is a file" in err and str(tmp_path / "exports") in err


def test_preflight_creates_no_export_dir(tmp_path) -> None:
    from vptsearch.search._exports import check_export_dir

    check_export_dir(tmp_path / "a" / "b", create=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="is a file"):
        (tmp_path / "f").write_text("")
        check_export_dir(tmp_path / "f" / "b", create=False)


# --- item 5: doctor --tracking-uri, $MLFLOW_TRACKING_URI for doctor and ui ----------------------------
def test_doctor_checks_the_tracking_uri_of_flag_and_environment(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["doctor", "--root", str(tmp_path), "--tracking-uri", "http://127.0.0.1:9"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "tracking" in x and "FAIL" in x)
    assert "http://127.0.0.1:9" in line and "unreachable" in line and "--tracking-uri" in line
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    main(["doctor", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("[ok  ] tracking"))
    assert str(tmp_path / "env.db") in line and "$MLFLOW_TRACKING_URI" in line


def test_ui_honours_mlflow_tracking_uri(tmp_path, monkeypatch) -> None:
    import argparse

    from vptsearch.search._ui_cli import _ui_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    args = argparse.Namespace(tracking_uri=None, space=None)
    assert _ui_uri(args) == f"sqlite:///{tmp_path / 'env.db'}"
    args.tracking_uri = f"sqlite:///{tmp_path / 'flag.db'}"
    assert _ui_uri(args) == f"sqlite:///{tmp_path / 'flag.db'}"  # the flag wins, as for launch


# --- report: probe, ensemble and bundles columns ----------------------------------------------------
def test_report_shows_probe_ensemble_and_where_the_bundles_are(base_raw, tmp_path, capsys) -> None:
    run_dir = tmp_path / "runs" / "smoke" / "20261202-120000"
    run_dir.mkdir(parents=True)
    spec_from_dict(base_raw).dump(run_dir / "spec.yaml")
    bundles = str(tmp_path / "exports" / "20261202-120000")
    row = {"task": TASK, "group": "natural", "method": "vpt", "p": 4, "init": "spt-mean",
           "tuned_percent": 1.234, "val_acc": 0.61, "test_mean": 0.55, "test_std": 0.01,
           "ensemble_test": 0.5725, "probe_val": 0.4825, "probe_test": 0.4675,
           "completed": 3, "pruned": 1, "diverged": 0, "failed": 0}  # fmt: skip
    res = {"launch_id": "smoke/20261202-120000", "rows": [row], "bundles_dir": bundles,
           "tasks": {TASK: {"per_init": {"spt-mean": {"val_acc": 0.61}}}}}  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(res))
    assert main(["report", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "ensemble test" in out and "probe val / test" in out
    line = next(x for x in out.splitlines() if TASK in x and "±" in x)
    assert "57.25" in line and "48.25 / 46.75" in line and "55.00 ± 1.00" in line
    assert f"bundles: {bundles}" in out


# --- defect 4: a failure after the search ends the runs FAILED and still writes the report ----------
def test_failure_after_the_search_ends_runs_failed_and_keeps_the_report(base_raw, tmp_path) -> None:
    """The export dir turns into a file while the launch runs (past preflight): the launch raises
    one line, results.json and the report are written, MLflow's launch and task runs are FAILED
    with the error (they stayed RUNNING forever), the trial runs keep their own status."""
    from mlflow import MlflowClient

    from vptsearch.search import launch
    from vptsearch.search._driver import LaunchFailed
    from vptsearch.search._tracking import PREFIX

    raw = {**base_raw, "suite": [TASK],
           "search": {**base_raw["search"], "trials_per_task": 1, "max_concurrent": 1},
           "params": {"prompt.length": 1, "optim.base_lr": 1.0},
           "training": {"epochs": 1, "warmup_epochs": 0, "batch_size": 64},
           "protocol": {"final_seeds": [0], "probe": False}}  # fmt: skip
    export_dir = tmp_path / "exports"

    def say(line: str) -> None:
        if line.lstrip().startswith("Tune storage"):  # preflight passed: break the export dir now
            export_dir.write_text("a file now")

    with pytest.raises(LaunchFailed) as exc:
        launch(spec_from_dict(raw), dashboard=False, say=say)
    msg = str(exc.value)
    assert "\n" not in msg and str(export_dir) in msg and "is a file" in msg and "report" in msg
    (run_dir,) = (tmp_path / "runs" / "smoke").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert "is a file" in results["error"] and results["tasks"][TASK]["test_accs"]  # the final ran
    assert (run_dir / "report" / "summary.md").is_file() and (run_dir / "report" / "trials.parquet").is_file()
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name("smoke").experiment_id
    for kind in ("launch", "task"):
        (run,) = client.search_runs([exp], f"tags.`{PREFIX}kind` = '{kind}'")
        assert run.info.status == "FAILED", (kind, run.info.status)
        assert "is a file" in run.data.tags[PREFIX + "error"]
    trials = client.search_runs([exp], f"tags.`{PREFIX}kind` = 'trial'")
    assert trials and all(r.info.status == "FINISHED" for r in trials)
