"""Launch folders of both layouts resume: finals in the search's experiment, or a final phase of its own.

Before each task's finals ran in the search's experiment (``_final_queue``), a launch ran them in a
second Tuner; a user's launch folder stopped between the two must still finish with ``--resume``,
its finals in that final phase (once each, and the MLflow runs without duplicates).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from vptsearch.search import _driver
from vptsearch.search._phases import PHASES_FILE
from vptsearch.spec import spec_from_dict


def _small(base_raw: dict) -> dict:
    return {**base_raw, "search": {**base_raw["search"], "trials_per_task": 2, "n_startup_trials": 2},
            "params": {**base_raw["params"], "optim.base_lr": {"choice": [1.0, 5.0]}},
            "training": {"epochs": 2, "warmup_epochs": 1, "batch_size": 64},
            "protocol": {"final_seeds": [0, 1], "probe": False}}  # fmt: skip


def _trial_runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("smoke")
    return c.search_runs([exp.experiment_id], "tags.`vptsearch.kind` = 'trial'", max_results=1000)


def test_a_folder_stopped_after_a_two_tuner_search_finishes_in_its_own_final_phase(
    base_raw, tmp_path, monkeypatch
) -> None:
    import vptsearch.search as search

    spec = spec_from_dict(_small(base_raw))
    real_setup, real_final = _driver.TuneSetup, _driver.Launch.final

    def old_setup(*args, **kwargs):  # the launch as it was: no finals in the search's experiment
        return dataclasses.replace(real_setup(*args, **kwargs), finals_in_search=False)

    def stop(self, selection):  # stopped (Ctrl-C) between the search and the final phase
        raise KeyboardInterrupt

    monkeypatch.setattr(_driver, "TuneSetup", old_setup)
    monkeypatch.setattr(_driver.Launch, "final", stop)
    with pytest.raises(KeyboardInterrupt):
        search.launch(spec, dashboard=False, say=lambda *_: None)
    (run_dir,) = (tmp_path / "runs" / "smoke").iterdir()
    assert not (run_dir / PHASES_FILE).exists()
    monkeypatch.setattr(_driver, "TuneSetup", real_setup)  # today's code resumes it
    monkeypatch.setattr(_driver.Launch, "final", real_final)

    summary = search.launch(spec, resume=True, dashboard=False, say=lambda *_: None)
    results = json.loads((run_dir / "results.json").read_text())
    assert all(len(t["test_accs"]) == 2 for t in results["tasks"].values())
    assert not (run_dir / PHASES_FILE).exists()  # still the folder's own layout
    runs = _trial_runs(summary.tracking_uri)
    phases = sorted(r.data.tags["vptsearch.phase"] for r in runs)
    assert phases == ["final"] * 4 + ["search"] * 4  # 2 tasks x 2 trials, 2 tasks x 2 seeds, once each


def test_a_new_launch_runs_its_finals_in_the_search_experiment(base_raw, tmp_path) -> None:
    import vptsearch.search as search

    summary = search.launch(spec_from_dict(_small(base_raw)), dashboard=False, say=lambda *_: None)
    (run_dir,) = (tmp_path / "runs" / "smoke").iterdir()
    assert json.loads((run_dir / PHASES_FILE).read_text()) == {"finals_in_search": True}
    ray_dir = next(p for p in run_dir.rglob("search") if p.is_dir() and (p / "tuner.pkl").exists())
    assert not (ray_dir.parent / "final").exists()  # no final phase of its own
    phases = sorted(json.loads(f.read_text())["phase"] for f in ray_dir.glob("*/params.json"))
    assert phases == ["final"] * 4 + ["search"] * 4  # the trials of the search's experiment
    results = json.loads((run_dir / "results.json").read_text())
    assert all(len(t["test_accs"]) == 2 for t in results["tasks"].values())
    assert sorted(r.data.tags["vptsearch.phase"] for r in _trial_runs(summary.tracking_uri)) == (
        ["final"] * 4 + ["search"] * 4
    )
