"""Issue 31 W5/W6: one launch per run dir at a time, and a resume that says what it ignores.

- A launch holds ``<run dir>/launch.lock`` (``flock``) from the moment its run dir is claimed until it
  ends; a second launch/resume is refused in one line naming the run dir and the holder's pid, exit
  2, and writes nothing there. The kernel drops the lock of a killed process: its resume proceeds.
- ``--resume`` compares the spec given now with the saved ``spec.yaml``: a changed key is refused
  naming it (saved vs given), a key of the allow-list is applied in one line; a different
  ``--tracking-uri`` than ``tracking.json``'s is refused.
- ``report``/``export``/``sync`` on a launch still running say so in one line (pid, progress).

The fast tests use a saved launch made by the real ``Launch.checked`` (its normalised spec and
tracking URI written as ``_open_tracker`` writes them) and a child process holding the real lock;
one slow test runs a real tiny launch and tries the second launch and the report while it runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from vptsearch.cli import main
from vptsearch.search import _runlock
from vptsearch.search._rundir import SPEC_FILE
from vptsearch.spec import load_spec

TASK = "mini/digits"
HOLD = """
import sys, time
from vptsearch.search import _runlock
_runlock.hold(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def _space(tmp_path: Path, raw: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _raw(base_raw: dict) -> dict:
    return {**base_raw, "suite": [TASK]}


def _saved_launch(space: Path, *, overrides: tuple[str, ...] = (), smoke: bool = False) -> Path:
    """A launch of ``space`` that got as far as its spec.yaml and tracking.json (nothing ran)."""
    from vptsearch.search._driver import Launch

    run = Launch.checked(load_spec(space, overrides, smoke), resume=False, tracking_uri=None, address=None,
                         storage=None, say=lambda *_: None)  # fmt: skip
    run.spec.dump(run.run_dir / SPEC_FILE)  # as Launch._open_tracker writes them
    (run.run_dir / "tracking.json").write_text(
        json.dumps({"uri": run.uri, "experiment": run.spec.experiment})
    )
    _runlock.release(run.run_dir)
    return run.run_dir


def _snapshot(run_dir: Path, lock: bool = True) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime (``lock=False``: but the lock file's record of its last holder)."""
    files = [p for p in sorted(run_dir.rglob("*")) if p.is_file() and (lock or p.name != _runlock.LOCK_FILE)]
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def _holder_process(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("vptsearch: error: ") and "\n" not in err, err
    return err


def _interrupt_at_ray(monkeypatch, seen: list) -> None:
    """The launch gets past its checks (lock, resume comparison, preflight) and stops where Ray
    would start, as a Ctrl-C there would stop it; ``seen`` gets the lock's holder at that moment."""
    from vptsearch.search import _driver

    def stop(self, address, dashboard):
        seen.append(_runlock.holder(self.run_dir))
        raise _driver.LaunchInterrupted("search", 0, 4)

    monkeypatch.setattr(_driver.Launch, "_join_cluster", stop)


# --- W5: the lock ------------------------------------------------------------------------------------
def test_a_second_launch_of_a_held_run_dir_is_refused_and_a_killed_holder_frees_it(
    base_raw, tmp_path, capsys, monkeypatch
) -> None:
    space = _space(tmp_path, _raw(base_raw))
    run_dir = _saved_launch(space)
    holder = _holder_process(run_dir)
    try:
        before = _snapshot(run_dir)
        assert main(["launch", "--no-dashboard", "--space", str(space), "--resume"]) == 2
        err = _one_line_error(capsys)
        assert str(run_dir) in err and f"pid {holder.pid}" in err and "in use by another launch" in err
        assert _snapshot(run_dir) == before  # no spec rewrite, no spool, no journal: nothing touched
        assert not (tmp_path / "mlflow.db").exists()  # no MLflow run either
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a crashed launch: no clean-up of any kind
        holder.wait(timeout=30)
    assert _runlock.holder(run_dir) is None
    seen: list = []
    _interrupt_at_ray(monkeypatch, seen)
    assert main(["launch", "--no-dashboard", "--space", str(space), "--resume"]) == 130  # it ran
    assert seen and seen[0]["pid"] == os.getpid()  # it held the run dir while it ran
    assert _runlock.holder(run_dir) is None  # and let go when it stopped


@pytest.mark.parametrize("outcome", ["finished", "failed", "interrupted"])
def test_the_lock_is_released_when_the_launch_ends(outcome, base_raw, tmp_path, monkeypatch) -> None:
    from vptsearch.search import _driver

    run = _driver.Launch.checked(load_spec(_space(tmp_path, _raw(base_raw))), resume=False, tracking_uri=None,
                                 address=None, storage=None, say=lambda *_: None)  # fmt: skip
    assert (_runlock.holder(run.run_dir) or {}).get("pid") == os.getpid()  # held from the claim on

    summary = SimpleNamespace(unsynced=None)

    def phases(self):
        if outcome == "failed":
            raise RuntimeError("the final phase broke")
        if outcome == "interrupted":
            raise KeyboardInterrupt
        return summary

    for step in ("_join_cluster", "_open_tracker", "_start_runs", "_close_tracker"):
        monkeypatch.setattr(_driver.Launch, step, lambda self, *a, **kw: 0)
    monkeypatch.setattr(_driver.Launch, "_run_phases", phases)
    if outcome == "finished":
        assert run.run(None, False) is summary
    else:
        with pytest.raises((RuntimeError, KeyboardInterrupt)):
            run.run(None, False)
    assert _runlock.holder(run.run_dir) is None
    _runlock.hold(run.run_dir)  # free for the next launch, which would be a --resume
    _runlock.release(run.run_dir)


def test_a_refused_fresh_launch_leaves_no_run_dir_or_lock_file(base_raw, tmp_path, capsys) -> None:
    raw = {**_raw(base_raw), "export": {"dir": str(tmp_path / "a-file")}}
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["launch", "--no-dashboard", "--space", str(_space(tmp_path, raw))]) == 2
    assert "export" in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists()  # the lock file did not keep the empty folder alive


# --- W6: what a resume compares ------------------------------------------------------------------------
def test_resume_refuses_an_edited_space_naming_the_key(base_raw, tmp_path, capsys) -> None:
    raw = _raw(base_raw)
    space = _space(tmp_path, raw)
    run_dir = _saved_launch(space)
    before = _snapshot(run_dir, lock=False)  # the refused resume held the lock while it compared
    _space(tmp_path, {**raw, "search": {**raw["search"], "trials_per_task": 6}})  # edited after the launch
    assert main(["launch", "--no-dashboard", "--space", str(space), "--resume"]) == 2
    err = _one_line_error(capsys)
    assert "search.trials_per_task is 6 in the spec given now but 4 in" in err and str(run_dir) in err
    assert "drop the change" in err and "start a new launch" in err
    _space(tmp_path, raw)  # the file as launched, a --set that changes the space
    assert main(["launch", "--no-dashboard", "--space", str(space), "--resume",
                 "--set", "params.prompt.length={choice: [1, 8]}"]) == 2  # fmt: skip
    assert 'params.prompt.length is {"choice": [1, 8]} in the spec given now but {"choice": [1, 4]}' in (
        _one_line_error(capsys)
    )
    assert _snapshot(run_dir, lock=False) == before
    assert _runlock.holder(run_dir) is None  # a refused resume does not keep the lock


def test_resume_applies_a_safe_key_and_says_so_in_one_line(base_raw, tmp_path) -> None:
    from vptsearch.search._driver import Launch

    space = _space(tmp_path, _raw(base_raw))
    run_dir = _saved_launch(space)
    said: list[str] = []
    given = load_spec(space, ["training.report_every_s=1", "export.dir=" + str(tmp_path / "elsewhere")])
    run = Launch.checked(given, resume=True, tracking_uri=None, address=None, storage=None, say=said.append)
    _runlock.release(run_dir)
    assert run.run_dir == run_dir
    assert run.spec.training.report_every_s == 1.0 and run.spec.export.dir == str(tmp_path / "elsewhere")
    assert run.spec.search == load_spec(space).search  # everything else as saved
    applied = [s for s in said if s.startswith("resume: applying")]
    assert (
        len(applied) == 1 and "training.report_every_s 5.0 -> 1" in applied[0] and "export.dir" in applied[0]
    )


def test_resume_as_its_hint_says_needs_none_of_the_launchs_flags(base_raw, tmp_path) -> None:
    """A --smoke launch resumed without --smoke, and without --storage: nothing differs."""
    from vptsearch.search._driver import Launch

    space = _space(tmp_path, {**_raw(base_raw), "training": {"epochs": 8, "batch_size": 64}})
    run_dir = _saved_launch(space, smoke=True)
    said: list[str] = []
    run = Launch.checked(load_spec(space), resume=True, tracking_uri=None, address=None, storage=None,
                         say=said.append)  # fmt: skip
    _runlock.release(run_dir)
    assert run.spec.smoke and run.spec.training.epochs == 3 and not [s for s in said if "resume" in s]


def test_resume_refuses_another_tracking_uri_and_keeps_the_saved_one(base_raw, tmp_path, capsys, monkeypatch):
    from vptsearch.search._driver import Launch

    space = _space(tmp_path, _raw(base_raw))
    run_dir = _saved_launch(space)
    saved_uri = json.loads((run_dir / "tracking.json").read_text())["uri"]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert main(["launch", "--no-dashboard", "--space", str(space), "--resume", "--tracking-uri", other]) == 2
    err = _one_line_error(capsys)
    assert other in err and saved_uri in err and "drop --tracking-uri" in err
    assert f"vptsearch sync {run_dir} --tracking-uri {other}" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)  # ambient: the resume keeps the launch's store
    said: list[str] = []
    run = Launch.checked(load_spec(space), resume=True, tracking_uri=None, address=None, storage=None,
                         say=said.append)  # fmt: skip
    _runlock.release(run_dir)
    assert run.uri == saved_uri and any("not $MLFLOW_TRACKING_URI" in s for s in said)


# --- report / export / sync while it runs ----------------------------------------------------------------
def test_report_export_and_sync_of_a_running_launch_say_so(base_raw, tmp_path, capsys) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    space = _space(tmp_path, {**base_raw})
    run_dir = _saved_launch(space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as the launch sets it (build_searcher)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    for task, ended in (("mini/digits", 3), ("mini/textures", 1)):
        study = optuna.create_study(study_name=task, storage=storage, direction="maximize")
        for i in range(ended + 1):  # one still running
            trial = study.ask()
            if i < ended:
                study.tell(trial, 0.5)
    holder = _holder_process(run_dir)
    try:
        assert main(["report", "--space", str(space)]) == 2
        err = _one_line_error(capsys)
        assert f"launch smoke/{run_dir.name} is still running (pid {holder.pid}" in err
        assert "search trials ended so far: mini/digits 3/4, mini/textures 1/4" in err
        assert "once it ends" in err
        assert main(["export", "--run-dir", str(run_dir)]) == 2
        assert "still running" in _one_line_error(capsys)
        assert main(["sync", str(run_dir)]) == 2
        assert "run `vptsearch sync` once it has ended" in _one_line_error(capsys)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    assert main(["report", "--space", str(space)]) == 2  # ended without results: as before
    assert "did not finish" in _one_line_error(capsys)


def test_report_finds_a_launch_still_in_its_checks(base_raw, tmp_path, capsys) -> None:
    """Before spec.yaml exists (preflight, Ray start) the launch is found by its held lock."""
    raw = {**_raw(base_raw), "run_dir": str(tmp_path / "runs")}
    run_dir = tmp_path / "runs" / "smoke" / "20261207-120000"
    run_dir.mkdir(parents=True)
    holder = _holder_process(run_dir)
    try:
        assert main(["report", "--space", str(_space(tmp_path, raw))]) == 2
        err = _one_line_error(capsys)
        assert "is still running" in err and "no search trial has ended yet" in err
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)


# --- the real thing ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_resume_while_the_launch_runs_is_refused_and_the_budget_holds(base_raw, tmp_path) -> None:
    """The issue's case: a real launch is running; `launch --resume` of it is refused (one line, its
    pid) and `report` says it is running; the launch ends with exactly its budget of trials."""
    raw = {**_raw(base_raw), "search": {**base_raw["search"], "trials_per_task": 3, "max_concurrent": 1},
           "training": {"epochs": 2, "warmup_epochs": 0, "batch_size": 64}, "scheduler": {"type": "none"},
           "protocol": {"final_seeds": [0], "probe": False}}  # fmt: skip
    space = _space(tmp_path, raw)
    env = {**os.environ, "RAY_ADDRESS": "local"}
    cmd = [sys.executable, "-m", "vptsearch.cli", "launch", "--space", str(space), "--no-dashboard"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                             env=env)  # fmt: skip
    assert first.stdout is not None
    seen = []
    for line in first.stdout:  # the first trial ended: the run dir has its spec.yaml and journal
        seen.append(line)
        if "[search 1/3" in line:
            break
    assert first.poll() is None, "".join(seen)[-3000:]
    (run_dir,) = (tmp_path / "runs" / "smoke").iterdir()
    second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=120)  # fmt: skip
    report = subprocess.run([sys.executable, "-m", "vptsearch.cli", "report", "--space", str(space)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)  # fmt: skip
    rest = first.communicate(timeout=600)[0]
    assert first.returncode == 0, ("".join(seen) + rest)[-3000:]
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"pid {first.pid}" in second.stderr and str(run_dir) in second.stderr
    assert report.returncode == 2 and "is still running" in report.stderr and "mini/digits" in report.stderr
    from vptsearch.search._journal import load_studies

    trials = load_studies(run_dir / "optuna.journal")[TASK].trials
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)  # the budget, once
    assert _runlock.holder(run_dir) is None


def test_the_resume_hint_repeats_every_option_that_shaped_the_spec(
    base_raw: dict, tmp_path: Path, monkeypatch, capfd
) -> None:
    """A resume compares its spec with the saved one: a hint without ``--smoke`` (or the storage it
    ran on) would be refused as a changed spec, or restore from the wrong place."""
    from vptsearch.search import _driver

    def interrupted(*args, **kwargs):
        raise _driver.LaunchInterrupted("search", 1, 4)

    monkeypatch.setattr(_driver, "launch", interrupted)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**base_raw, "suite": [TASK]}))
    store = tmp_path / "st"
    argv = ["launch", "--space", str(space), "--smoke", "--set", f"suite=[{TASK}]", "--storage", str(store)]
    capfd.readouterr()
    assert main(argv) == 130
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        "vptsearch: interrupted: the search phase stopped with 1/4 trials finished; continue with "
        f"`vptsearch launch --space {space} --set 'suite=[{TASK}]' --smoke --storage {store} --resume`"
    ]
