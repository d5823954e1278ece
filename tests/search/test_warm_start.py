"""search.warm_start: studies seeded from other tasks' (or an earlier launch's) best completed trials.

The searchers are driven as Tune's controller drives them (suggest -> results -> complete).
"""

from __future__ import annotations

import pytest

from vptsearch._errors import ConfigError
from vptsearch.search._searcher import build_searcher, load_studies
from vptsearch.search._warm_start import ATTR
from vptsearch.spec import spec_from_dict

TASKS = ["mini/digits", "mini/textures"]
RAW = {
    "name": "w",
    "suite": TASKS,
    "params": {"prompt.length": {"choice": [1, 5, 10, 20]}, "optim.base_lr": {"loguniform": [0.1, 10]}},
    "search": {"trials_per_task": 6, "max_concurrent": 1, "n_startup_trials": 2, "warm_start_top_k": 2},
    "training": {"epochs": 4},
}


def _spec(**search):
    return spec_from_dict({**RAW, "search": {**RAW["search"], **search}})


def _finish(mts, trial_id: str, acc: float, epochs: int = 4) -> None:
    for e in range(1, epochs + 1):
        mts.on_trial_result(trial_id, {"val_acc": acc, "epoch": e, "training_iteration": e})
    mts.on_trial_complete(trial_id, {"val_acc": acc, "epoch": epochs})


def _earlier_launch(tmp_path):
    """An earlier launch's run dir whose digits study completed 4 trials (one also pruned)."""
    run_dir = tmp_path / "earlier"
    run_dir.mkdir()
    mts = build_searcher(_spec(), TASKS[:1], journal=run_dir / "optuna.journal")
    accs = {}
    for i, acc in enumerate([0.3, 0.9, 0.5, 0.7]):
        config = mts.suggest(f"e{i}")
        accs[(config["prompt.length"], config["optim.base_lr"])] = acc
        _finish(mts, f"e{i}", acc)
    config = mts.suggest("pruned")
    _finish(mts, "pruned", 0.99, epochs=1)  # stopped by ASHA: the best value, but never transferred
    best = sorted(accs, key=lambda k: -accs[k])[:2]
    return run_dir, best, (config["prompt.length"], config["optim.base_lr"])


def test_a_study_seeded_from_an_earlier_launch_asks_its_best_configurations_first(tmp_path):
    run_dir, best, pruned = _earlier_launch(tmp_path)
    mts = build_searcher(_spec(warm_start=str(run_dir)), TASKS, journal=tmp_path / "new.journal")
    asked = {t: [] for t in TASKS}
    configs = []
    for i in range(4):
        c = mts.suggest(f"n{i}")
        configs.append(c)
        asked[c["task"]].append((c["prompt.length"], c["optim.base_lr"]))
        _finish(mts, f"n{i}", 0.5)
    # both tasks start with the digits study's two best completed configs, best first; not the pruned one
    assert asked["mini/digits"] == best and asked["mini/textures"] == best
    assert pruned not in best
    study = load_studies(tmp_path / "new.journal")["mini/textures"]
    assert [t.user_attrs.get(ATTR) for t in study.trials] == ["mini/digits", "mini/digits"]
    # the source reaches the trial config as a control key (the MLflow run's tag vptsearch.warm_start)
    assert [c.get("warm_start") for c in configs] == ["mini/digits"] * 4


def test_warm_start_within_a_launch_transfers_completed_trials_as_they_finish(tmp_path):
    mts = build_searcher(_spec(warm_start="launch"), TASKS, journal=tmp_path / "j")
    first = mts.suggest("a0")
    second = mts.suggest("b0")
    assert {first["task"], second["task"]} == set(TASKS)  # nothing to transfer yet: plain TPE
    by_task = {first["task"]: ("a0", first), second["task"]: ("b0", second)}
    tid, digits = by_task["mini/digits"]
    _finish(mts, tid, 0.8)  # digits completes a trial; textures is still running its own
    tid_t, _ = by_task["mini/textures"]
    _finish(mts, tid_t, 0.4, epochs=2)  # textures' own first trial was pruned
    nxt = [mts.suggest(f"c{i}") for i in range(2)]
    textures_next = next(c for c in nxt if c["task"] == "mini/textures")
    assert textures_next["warm_start"] == "mini/digits" and "warm_start" not in first
    assert (textures_next["prompt.length"], textures_next["optim.base_lr"]) == (
        digits["prompt.length"], digits["optim.base_lr"])
    study = mts.studies()["mini/textures"]
    assert sum(ATTR in t.user_attrs for t in study.trials) == 1
    assert mts.warm_start.enqueued["mini/digits"] == 0  # textures has nothing completed to give


def test_resume_keeps_the_warm_start_exactly_once(tmp_path):
    run_dir, best, _ = _earlier_launch(tmp_path)
    spec = _spec(warm_start=str(run_dir))
    journal = tmp_path / "new.journal"
    mts = build_searcher(spec, TASKS, journal=journal)
    for i in range(2):
        mts.suggest(f"n{i}")  # one warm-start trial per task is running when the driver dies
    mts.save(str(tmp_path / "state.pkl"))
    again = build_searcher(spec, TASKS, journal=journal)  # what --resume builds, then restores
    again.restore(str(tmp_path / "state.pkl"))
    for i in range(2):
        _finish(again, f"n{i}", 0.5)
    for i in range(6):
        c = again.suggest(f"r{i}")
        if c is not None and not isinstance(c, str):
            _finish(again, f"r{i}", 0.1)
    for task, study in load_studies(journal).items():
        marked = [(t.params["prompt.length"], t.params["optim.base_lr"]) for t in study.trials
                  if ATTR in t.user_attrs]
        assert marked == best, task  # each of the two, once, in order


def test_configs_outside_this_space_are_not_transferred(tmp_path):
    run_dir, _, _ = _earlier_launch(tmp_path)
    narrow = {**RAW["params"], "prompt.length": {"choice": [2, 3]}}  # none of the earlier lengths
    spec = spec_from_dict({**RAW, "params": narrow, "search": {**RAW["search"], "warm_start": str(run_dir)}})
    mts = build_searcher(spec, TASKS, journal=tmp_path / "j")
    c = mts.suggest("x")
    assert c["prompt.length"] in (2, 3)
    assert not any(ATTR in t.user_attrs for s in mts.studies().values() for t in s.trials)


@pytest.mark.parametrize(
    ("search", "match"),
    [
        ({"warm_start": "nowhere/run"}, r"search\.warm_start.*'nowhere/run'.*none, launch.*optuna\.journal"),
        ({"warm_start": "launch", "algorithm": "grid"}, r"search\.warm_start.*grid.*accepted: none"),
        ({"warm_start_top_k": 0}, r"search\.warm_start_top_k.*>= 1, got 0"),
    ],
)
def test_bad_warm_start_is_one_line(search, match):
    with pytest.raises(ConfigError, match=match) as err:
        _spec(**search)
    assert "\n" not in str(err.value)


def test_a_warm_started_trial_run_is_tagged_with_its_source_not_given_it_as_a_param(tmp_path):
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from vptsearch.search._tracking import PREFIX, Tracker, TrackingCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = Tracker(uri, "ws", None, "ws/1").task_run("mini/textures", "natural")
    cb = TrackingCallback(uri, "ws", None, "ws/1", {"mini/textures": parent}, 2, resume=False)
    base = {"task": "mini/textures", "phase": "search", "seed": 0, "prompt.length": 5}
    cb._run_id(SimpleNamespace(trial_id="w", config={**base, "warm_start": "mini/digits"}))
    cb._run_id(SimpleNamespace(trial_id="p", config=base))
    assert cb.tracker.close() == 0  # everything written
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ws").experiment_id
    runs = {r.info.run_name.rsplit("-", 1)[-1]: r for r in
            client.search_runs([exp], f"tags.`{PREFIX}kind` = 'trial'")}
    assert runs["w"].data.tags[PREFIX + "warm_start"] == "mini/digits"
    assert PREFIX + "warm_start" not in runs["p"].data.tags
    assert "warm_start" not in runs["w"].data.params and runs["w"].data.params["prompt.length"] == "5"
