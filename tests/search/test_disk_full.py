"""A full disk ends a launch in one line and loses nothing; ``--resume`` continues with every trial.

ENOSPC is simulated (unprivileged, as in CI): the spool's writer fails at its Nth write, Tune's
experiment state is truncated as a disk filling up mid-copy leaves it. The state's last good copy
is made by a real Tune run (a function trainable, seconds).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import yaml

from vptsearch._errors import ConfigError
from vptsearch.search import _tune_state
from vptsearch.search._spool import Positions, Spool, read_records

from .conftest import own_ray

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


class _FullAfter:
    """A spool file handle whose writes fail after ``n`` whole ones, writing half the line first."""

    def __init__(self, fh, n: int) -> None:
        self.fh, self.n = fh, n

    def write(self, data: bytes) -> int:
        if self.n <= 0:
            self.fh.write(data[: len(data) // 2])
            raise ENOSPC
        self.n -= 1
        return self.fh.write(data)

    def __getattr__(self, name: str):
        return getattr(self.fh, name)


def test_spool_write_on_a_full_disk_keeps_whole_lines(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    real = spool._fh
    spool._fh = _FullAfter(real, 2)
    spool.append({"op": "x", "i": 0})
    spool.append({"op": "x", "i": 1})
    with pytest.raises(OSError) as exc:
        spool.append({"op": "x", "i": 2})
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(spool.path)
    assert spool.path.read_bytes().endswith(b"\n")  # the half line was cut off again
    spool._fh = real  # space freed
    spool.append({"op": "x", "i": 3})
    spool.close()
    lines = [json.loads(line) for line in spool.path.read_text().splitlines()]
    assert [r["i"] for r in lines] == [0, 1, 3]


def test_spool_positions_on_a_full_disk_keep_the_old_ones(tmp_path: Path, monkeypatch) -> None:
    pos = Positions(tmp_path / "pos.json")
    assert pos.set("sqlite:///a", 10)

    def full(self, *a, **k):
        Path.write_bytes(self, b"{")  # a torn temp file
        raise ENOSPC

    monkeypatch.setattr(Path, "write_text", full)
    assert pos.set("sqlite:///a", 20) is False
    monkeypatch.undo()
    assert pos.get("sqlite:///a") == 10 and sorted(p.name for p in tmp_path.iterdir()) == ["pos.json"]


def test_disk_full_error_is_found_through_wrappers(tmp_path: Path) -> None:
    class RayTaskErrorLike(Exception):
        def __init__(self, cause):
            self.cause = cause

    inner = OSError(errno.EDQUOT, "Disk quota exceeded", "/data/run/x")
    try:
        try:
            raise RayTaskErrorLike(inner)
        except Exception as e:
            raise RuntimeError("tune failed") from e
    except RuntimeError as outer:
        found = _tune_state.disk_full(outer)
    assert found is not None and found.code == errno.EDQUOT and found.path == "/data/run/x"
    found.space = "s.yaml"
    assert str(found) == (
        "disk quota exceeded writing /data/run/x; free space (or raise the quota) and continue with "
        "`vptsearch launch --space s.yaml --resume`"
    )
    assert _tune_state.disk_full(ValueError("x")) is None


def _trainable(config):
    from ray import tune

    for i in range(2):
        tune.report({"score": config["x"] * 10 + i})


def _tuner(storage: Path, callbacks: list):
    from ray import tune

    return tune.Tuner(
        _trainable,
        param_space={"x": tune.grid_search([1, 2, 3])},
        run_config=tune.RunConfig(name="search", storage_path=str(storage), callbacks=callbacks, verbose=0),
    )


@pytest.fixture()
def local_ray():
    with own_ray(num_cpus=1, address="local"):
        yield


def test_kept_state_is_put_back_over_a_damaged_one(tmp_path: Path) -> None:
    """Without Tune (seconds): a staging folder's state kept, then put back over a truncated one."""
    import pickle

    staging, exp = tmp_path / "staging", tmp_path / "search"
    staging.mkdir()
    exp.mkdir()
    (staging / "experiment_state-s1.json").write_text('{"trial_data": [1, 2]}')
    (staging / "searcher-state-s1.pkl").write_bytes(pickle.dumps({"a": 1}))
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"t": 1}))
    assert _tune_state.StateKeeper(exp).keep(staging) is not None
    (exp / "experiment_state-s1.json").write_text('{"trial_da')  # truncated in the storage
    (exp / "experiment_state-s2.json").write_text('{"trial_data": []}')  # newer than the copy
    assert _tune_state.heal(exp) == ["experiment_state-s1.json", "searcher-state-s1.pkl", "tuner.pkl"]
    assert json.loads((exp / "experiment_state-s1.json").read_text()) == {"trial_data": [1, 2]}
    assert sorted(p.name for p in exp.glob("*.damaged")) == [
        "experiment_state-s1.json.damaged", "experiment_state-s2.json.damaged"]  # fmt: skip


@pytest.mark.slow  # a real Tune run and its restore (~50 s here)
def test_truncated_tune_state_is_restored_from_its_last_good_copy(tmp_path: Path, local_ray) -> None:
    from ray import tune

    exp = tmp_path / "search"
    results = _tuner(tmp_path, [_tune_state.StateKeeper(exp)]).fit()
    assert not results.errors and len(results) == 3
    kept = list((exp / _tune_state.LAST_GOOD).glob("state-*"))
    assert len(kept) == 1  # one whole set, the previous ones removed
    assert {p.name.split("-")[0] for p in kept[0].iterdir()} >= {"experiment_state", "tuner.pkl"}

    (state,) = exp.glob("experiment_state-*.json")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # what a full disk left
    assert _tune_state.heal(exp)  # put back
    assert (exp / (state.name + ".damaged")).is_file() and _tune_state.damage(state) is None
    assert _tune_state.heal(exp) == []  # nothing damaged any more

    restored = tune.Tuner.restore(str(exp), trainable=_trainable, resume_errored=True).fit()
    assert sorted(r.metrics["score"] for r in restored) == [11, 21, 31]  # every trial kept


def test_damaged_tune_state_without_a_copy_is_one_line(tmp_path: Path) -> None:
    exp = tmp_path / "search"
    exp.mkdir()
    (exp / "experiment_state-2026.json").write_text('{"trial_data": [')
    with pytest.raises(ConfigError) as exc:
        _tune_state.heal(exp)
    assert "\n" not in str(exc.value) and "experiment_state-2026.json is damaged" in str(exc.value)


def test_launch_on_a_full_disk_ends_in_one_line(base_raw: dict, tmp_path: Path, monkeypatch, capfd) -> None:
    from vptsearch import cli
    from vptsearch.search import _driver

    spool = None

    def run(self, address, dashboard):  # the spool's write fails as the launch starts
        nonlocal spool
        self.spec.dump(self.run_dir / "spec.yaml")
        spool = self.run_dir / "mlflow.spool.jsonl"
        raise OSError(errno.ENOSPC, "No space left on device", str(spool))

    monkeypatch.setattr(_driver.Launch, "run", run)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**base_raw, "suite": ["mini/digits"]}))
    capfd.readouterr()
    code = cli.main(["launch", "--space", str(space), "--no-dashboard"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and err == [
        f"vptsearch: error: no space left on device writing {spool}; free space and continue "
        f"with `vptsearch launch --space {space} --no-dashboard --resume`"
    ]


@pytest.mark.slow  # two real launches (~1 min each)
def test_resume_after_a_full_disk_keeps_every_completed_trial(
    base_raw: dict, tmp_path: Path, monkeypatch, capfd
) -> None:
    from vptsearch import cli

    raw = {**base_raw, "suite": ["mini/digits"], "params": {**base_raw["params"], "optim.base_lr": 1.0},
           "search": {**base_raw["search"], "trials_per_task": 3, "max_concurrent": 1, "n_startup_trials": 2},
           "scheduler": {"type": "none"}, "training": {"epochs": 2, "warmup_epochs": 0, "batch_size": 64},
           "protocol": {"final_seeds": [0]}}  # fmt: skip
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("RAY_ADDRESS", "local")
    appends = {"n": 0}
    real_append = Spool.append

    def append(self, obj):  # the disk fills up once the first trial has ended
        if appends.get("full"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        if obj.get("op") == "end" and appends["n"] == 0:
            appends["n"], appends["full"] = 1, True
        return real_append(self, obj)

    monkeypatch.setattr(Spool, "append", append)
    capfd.readouterr()
    assert cli.main(["launch", "--space", str(space), "--no-dashboard"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "vptsearch: error: no space left on device writing "
    )
    (run_dir,) = (tmp_path / "runs" / raw["name"]).iterdir()
    ended = [r for _, r in read_records(run_dir / "mlflow.spool.jsonl") if type(r).__name__ == "EndRecord"]
    assert ended  # the first trial's end reached the spool before the disk filled

    monkeypatch.setattr(Spool, "append", real_append)  # space freed
    assert cli.main(["launch", "--space", str(space), "--no-dashboard", "--resume"]) == 0
    res = json.loads((run_dir / "results.json").read_text())
    assert res["tasks"]["mini/digits"]["counts"].get("completed") == 3
    assert os.path.isfile(run_dir / "report" / "summary.md")
