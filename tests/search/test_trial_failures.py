"""A trial killed by Ray's memory monitor is retried from its checkpoint, or stops the launch in one line.

Real kills, no stand-in for Ray: a local Ray whose memory monitor threshold sits 4 GiB above the
machine's use when it starts (room for its own workers), and a trial that allocates memory at
epoch 2 until the monitor kills it (on as many attempts as the test says, counted in a file).
Without :mod:`vptsearch.search._trial_failures` Tune 2.60 raises
``RuntimeError: Caught unexpected exception: 1 worker(s) were killed ...`` out of ``Tuner.fit``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import pytest
import yaml

TASK = "mini/digits"
HEADROOM = 4 * 2**30  # the kill threshold's distance above the memory in use when Ray starts


def _threshold() -> float:
    """Ray's kill threshold (fraction of the node's memory) HEADROOM above what is in use now."""
    import psutil  # Ray's vendored copy: importable once Ray is (both callers imported it)

    vm = psutil.virtual_memory()
    if vm.available < 2.5 * HEADROOM:
        pytest.skip("needs ~10 GiB of free memory to cross Ray's kill threshold on purpose")
    return (vm.total - vm.available + HEADROOM) / vm.total


def _eat_memory_once(marker: Path, kills: int) -> None:
    """Allocate (and touch) memory until the memory monitor kills this worker (at most 2 x
    HEADROOM), while fewer than ``kills`` kills are counted in ``marker``."""
    done = int(marker.read_text() or 0) if marker.exists() else 0
    if done >= kills:
        return
    marker.write_text(str(done + 1))
    chunks = []
    while len(chunks) * 2**26 < 2 * HEADROOM:  # the monitor (every 0.1 s) kills it ~HEADROOM in
        chunk = bytearray(2**26)
        for i in range(0, len(chunk), 4096):
            chunk[i] = 1
        chunks.append(chunk)
    time.sleep(120)  # killed meanwhile


def _hungry_trial(config: dict, marker: str, kills: int, epochs: int) -> None:
    """A stand-in trial: an epoch a checkpoint (``epoch``), resumed from ``tune.get_checkpoint()``."""
    from ray import tune

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = json.loads((Path(d) / "state.json").read_text())["epoch"]
    for epoch in range(start + 1, epochs + 1):
        if epoch == 2:
            _eat_memory_once(Path(marker), kills)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "resumed_from": start}, checkpoint=tune.Checkpoint.from_directory(d))


@pytest.fixture(scope="module")
def memory_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    monitor = {"memory_usage_threshold": _threshold(), "memory_monitor_refresh_ms": 100}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             _system_config=monitor)  # fmt: skip
    yield
    ray.shutdown()


def _phase(tmp_path: Path, monkeypatch, *, kills: int, max_failures: int, resume: bool = False):
    """The final phase of a one-task launch (one seed, 3 epochs) with the hungry trial, through the
    launch's own run_tuner (FailureConfig, memory kills, LaunchInterrupted), tracked in MLflow."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from vptsearch.search import _trainable
    from vptsearch.search._phases import TuneSetup, run_tuner
    from vptsearch.search._searcher import MultiTaskSearcher
    from vptsearch.search._tracking import Tracker, TrackingCallback
    from vptsearch.spec import spec_from_dict

    spec = spec_from_dict(
        {"name": "oom", "suite": [TASK], "training": {"epochs": 3, "max_failures": max_failures}}
    )
    bound = tune.with_parameters(_hungry_trial, marker=str(tmp_path / "kills"), kills=kills, epochs=3)
    monkeypatch.setattr(_trainable, "make_trainable", lambda spec, backbone=None, splits=None: bound)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = Tracker(uri, "oom", None, "oom/1").task_run(TASK, "natural")
    tracking = TrackingCallback(uri, "oom", None, "oom/1", {TASK: parent}, 3, resume=resume)
    searcher = MultiTaskSearcher(
        None, {TASK: 1}, 1, fixed={TASK: [{"phase": "final", "seed": 0}]}, metric=None
    )
    setup = TuneSetup(spec, tmp_path / "run", resume=resume)
    return run_tuner(setup, "final", searcher, FIFOScheduler(), 1, [tracking]), uri


def _trial_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("oom").experiment_id
    return client.search_runs([exp], "tags.`vptsearch.kind` = 'trial'")


def test_a_trial_killed_for_memory_is_retried_from_its_checkpoint(memory_ray, tmp_path, monkeypatch) -> None:
    from ray import tune

    results, uri = _phase(tmp_path, monkeypatch, kills=1, max_failures=2)
    (result,) = list(results)
    assert (tmp_path / "kills").read_text() == "1"  # it was really killed once
    assert result.error is None and result.metrics["epoch"] == 3
    assert result.metrics["resumed_from"] == 1  # the retry went on from the epoch-1 checkpoint
    (trial,) = tune.ExperimentAnalysis(str(tmp_path / "run" / "ray" / "final")).trials
    assert trial.run_metadata.num_failures == 1
    (run,) = _trial_runs(uri)
    assert run.info.status == "FINISHED" and run.data.tags["vptsearch.status"] == "completed"


def test_spent_retries_stop_the_phase_in_one_line_and_resume_continues(
    memory_ray, tmp_path, monkeypatch
) -> None:
    from vptsearch.search._phases import LaunchInterrupted

    with pytest.raises(LaunchInterrupted) as stopped:
        _phase(tmp_path, monkeypatch, kills=1, max_failures=0)
    line = str(stopped.value)
    assert "\n" not in line and line.startswith("the final phase stopped with 0/1 trials finished: ")
    assert "1 trial was killed by Ray's memory monitor" in line and "training.max_failures: 0" in line
    assert "search.max_concurrent" in line and "RAY_memory_usage_threshold" in line
    assert line.endswith("then continue with `vptsearch launch --space SPACE.yaml --resume`")
    (run,) = _trial_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FAILED"  # not left RUNNING

    # nothing computed is lost: the resumed phase goes on from the trial's epoch-1 checkpoint
    results, uri = _phase(tmp_path, monkeypatch, kills=1, max_failures=0, resume=True)
    (result,) = list(results)
    assert result.error is None and result.metrics["epoch"] == 3 and result.metrics["resumed_from"] == 1
    (run,) = _trial_runs(uri)
    assert run.info.status == "FINISHED"


def test_a_tuner_that_raised_for_memory_is_one_line() -> None:
    """The fallback when Tune itself gave up (a Ray the retry hook does not fit): Tune 2.60's
    RuntimeError, caused by Ray's OutOfMemoryError, is named as a memory kill."""
    from ray.exceptions import OutOfMemoryError

    from vptsearch.search._trial_failures import crash_cause

    oom = OutOfMemoryError("2 worker(s) were killed due to the node running low on memory. Memory on ...")
    try:
        raise RuntimeError(f"Caught unexpected exception: {oom}") from oom
    except RuntimeError as exc:
        cause = crash_cause(exc)
    assert cause is not None and "memory monitor" in cause and "RAY_memory_usage_threshold" in cause
    assert crash_cause(RuntimeError("something else")) is None


# --- the whole launch, through the CLI ---------------------------------------------------------------
def _hungry_real_trial(config: dict, spec_json: str, backbone=None, splits=None) -> None:
    """The launch's own trainable, whose reporter eats memory at epoch 2 (``$OOM_TEST_MARKER``)."""
    from vptsearch.search import _trainable

    if not getattr(_trainable.TuneReporter.report, "hungry", False):  # once per worker process
        plain = _trainable.TuneReporter.report

        def report(self, metrics, state=None):
            if metrics.get("epoch") == 2:
                _eat_memory_once(Path(os.environ["OOM_TEST_MARKER"]), 1)
            return plain(self, metrics, state)

        report.hungry = True  # type: ignore[attr-defined]
        _trainable.TuneReporter.report = report
    _trainable.trainable(config, spec_json, backbone, splits)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.slow  # two real launches (~2 min)
def test_a_launch_stopped_for_memory_says_so_ends_its_runs_and_resumes(
    base_raw, tmp_path, monkeypatch, capsys
):
    import ray
    from mlflow import MlflowClient

    from vptsearch.cli import main
    from vptsearch.search import _trainable

    if ray.is_initialized():
        ray.shutdown()
    raw = {**base_raw, "name": "oomlaunch", "suite": [TASK],
           "params": {"prompt.length": 1, "optim.base_lr": 1.0},
           "search": {**base_raw["search"], "trials_per_task": 2, "max_concurrent": 1, "n_startup_trials": 2},
           "scheduler": {"type": "none"},
           "training": {"epochs": 3, "warmup_epochs": 0, "batch_size": 64, "checkpoint_every": 1,
                        "report_every_s": 0, "max_failures": 0},
           "protocol": {"final_seeds": [0], "probe": False}}  # fmt: skip
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("RAY_ADDRESS", "local")
    monkeypatch.setenv("RAY_memory_usage_threshold", str(_threshold()))  # the launch's own Ray reads them
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "100")
    monkeypatch.setenv("OOM_TEST_MARKER", str(tmp_path / "kills"))
    monkeypatch.setattr(_trainable, "trainable", _hungry_real_trial)  # make_trainable binds it by name

    tune_log = _Records()  # on Tune's controller logger: where Ray's logging sends it varies
    logging.getLogger("ray.tune.execution.tune_controller").addHandler(tune_log)
    try:
        assert main(["launch", "--space", str(space), "--no-dashboard"]) == 130
    finally:
        logging.getLogger("ray.tune.execution.tune_controller").removeHandler(tune_log)
    err = capsys.readouterr().err
    # the launch ends in one line; Tune's log of the kill is one line too (Ray's token notice aside)
    assert "Traceback" not in err and "Top 10 memory users" not in err, err
    (kill,) = [r for r in tune_log.records if r.getMessage().startswith("Trial task failed")]
    assert kill.exc_info is None and "\n" not in kill.getMessage()
    assert "worker(s) were killed due to the node running low on memory" in kill.getMessage()
    line = err.strip().splitlines()[-1]
    assert line.startswith("vptsearch: interrupted: the search phase stopped with 1/2 trials finished: "), (
        line
    )
    assert "killed by Ray's memory monitor" in line and f"--space {space} --no-dashboard --resume" in line
    client = MlflowClient(raw["tracking"]["uri"])
    exp = client.get_experiment_by_name("oomlaunch").experiment_id

    def statuses(kind: str) -> list[str]:
        return sorted(r.info.status for r in client.search_runs([exp], f"tags.`vptsearch.kind` = '{kind}'"))

    assert statuses("trial") == ["FAILED", "FINISHED"]
    assert statuses("task") == ["KILLED"] and statuses("launch") == ["KILLED"]

    assert main(["launch", "--space", str(space), "--no-dashboard", "--resume"]) == 0
    assert statuses("trial") == ["FINISHED"] * 3 and statuses("task") == ["FINISHED"]
    assert statuses("launch") == ["FINISHED"]
    for run in [
        r
        for kind in ("task", "launch")
        for r in client.search_runs([exp], f"tags.`vptsearch.kind` = '{kind}'")
    ]:
        assert not run.data.tags.get("vptsearch.error"), run.data.tags  # the stop's cause is gone
        assert run.data.tags["vptsearch.status"] in ("completed", "resumed")
    for run in client.search_runs([exp], "tags.`vptsearch.phase` = 'search'"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == [1, 2, 3], steps  # the killed trial went on from epoch 1, nothing twice
