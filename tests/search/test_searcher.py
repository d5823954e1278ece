"""Optuna sees the truth: trials stopped early are PRUNED, not COMPLETE with a low-epoch score.

These drive the searchers exactly as Tune's controller does (suggest -> on_trial_result per epoch ->
on_trial_complete with the last result). The end-to-end test checks the same on a real launch.
"""

from __future__ import annotations

import pytest
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from vptsearch.search._searcher import (
    MAX_DUPLICATE_ASKS,
    MultiTaskSearcher,
    build_searcher,
    load_studies,
    make_task_searcher,
)
from vptsearch.search._untried import ATTR as UNTRIED_ATTR
from vptsearch.spec import spec_from_dict

RAW = {
    "name": "t",
    "suite": ["mini/digits", "mini/textures"],
    "params": {"prompt.length": {"choice": [1, 5]}, "optim.base_lr": {"loguniform": [0.1, 10]}},
    "search": {"trials_per_task": 3, "max_concurrent": 2, "n_startup_trials": 1},
    "training": {"epochs": 4},
}


def _drive(searcher, trial_id: str, accs: list[float], **last) -> None:
    assert searcher.suggest(trial_id) is not None
    for epoch, acc in enumerate(accs, 1):
        searcher.on_trial_result(trial_id, {"val_acc": acc, "epoch": epoch, "training_iteration": epoch})
    searcher.on_trial_complete(trial_id, {"val_acc": accs[-1], "epoch": len(accs), **last})


def test_scheduler_stopped_trial_is_pruned_in_the_study(tmp_path) -> None:
    spec = spec_from_dict(RAW)
    s = make_task_searcher(spec, "mini/digits", journal=tmp_path / "optuna.journal")
    _drive(s, "full", [0.2, 0.3, 0.4, 0.5])  # ran the 4-epoch budget
    _drive(s, "stopped", [0.1, 0.15])  # stopped by ASHA after epoch 2
    _drive(s, "nan", [0.1], diverged=1)  # diverged at epoch 1
    assert s.suggest("errored") is not None
    s.on_trial_complete("errored", None, error=True)
    study = load_studies(tmp_path / "optuna.journal")["mini/digits"]  # what a user inspects afterwards
    by_status = {t.user_attrs["status"]: t for t in study.trials}
    assert by_status["completed"].state == TrialState.COMPLETE and by_status["completed"].value == 0.5
    assert by_status["pruned"].state == TrialState.PRUNED
    assert by_status["pruned"].intermediate_values == {1: 0.1, 2: 0.15}  # pruned at its fidelity
    assert by_status["diverged"].state == TrialState.PRUNED
    assert by_status["failed"].state == TrialState.FAIL


def test_stock_optuna_search_has_the_pitfall() -> None:
    # Documents why PruneAwareOptunaSearch exists: Ray's own searcher says COMPLETE at 2 of 4 epochs.
    spec = spec_from_dict(RAW)
    from vptsearch.spec import define_by_run

    stock = OptunaSearch(space=define_by_run(spec), metric="val_acc", mode="max")
    _drive(stock, "stopped", [0.1, 0.15])
    assert stock._ot_study.trials[0].state == TrialState.COMPLETE


def test_multitask_searcher_budgets_concurrency_and_routing(tmp_path) -> None:
    spec = spec_from_dict(RAW)
    mts = build_searcher(spec, ["mini/digits", "mini/textures"], journal=tmp_path / "j")
    configs = [mts.suggest(f"t{i}") for i in range(5)]
    # 2 tasks x max_concurrent 2 = 4 live trials, then the searcher waits
    assert [c["task"] for c in configs[:4]].count("mini/digits") == 2 and configs[4] is None
    assert all(c["phase"] == "search" and "prompt.length" in c for c in configs[:4])
    for i in range(4):
        mts.on_trial_complete(f"t{i}", {"val_acc": 0.5, "epoch": 4})
    rest = [mts.suggest(f"u{i}") for i in range(3)]
    assert rest[2] == MultiTaskSearcher.FINISHED  # 3 per task, 6 in total
    studies = mts.studies()
    assert {t: len(s.trials) for t, s in studies.items()} == {"mini/digits": 3, "mini/textures": 3}
    # save/restore round trip (what Tune does for --resume)
    mts.save(str(tmp_path / "state.pkl"))
    again = build_searcher(spec, ["mini/digits", "mini/textures"], journal=tmp_path / "j")
    again.restore(str(tmp_path / "state.pkl"))
    assert again.started == mts.started and again.task_of == mts.task_of


def test_grid_searcher_enumerates_every_combination() -> None:
    raw = {
        **RAW,
        "search": {"algorithm": "grid", "max_concurrent": 8},
        "params": {"prompt.length": {"choice": [1, 5]}, "optim.base_lr": {"choice": [0.1, 1.0, 10.0]}},
    }
    mts = build_searcher(spec_from_dict(raw), ["mini/digits"])
    got = [mts.suggest(f"t{i}") for i in range(7)]
    assert got[6] == MultiTaskSearcher.FINISHED
    assert sorted((c["prompt.length"], c["optim.base_lr"]) for c in got[:6]) == sorted(
        (p, lr) for p in (1, 5) for lr in (0.1, 1.0, 10.0)
    )


def test_tpe_does_not_retrain_a_configuration_it_already_completed(tmp_path) -> None:
    """On a discrete space TPE re-proposes known points; those are told their value, not re-run."""
    raw = {**RAW, "params": {"prompt.length": {"choice": [1, 5, 10]}, "optim.base_lr": 1.0},
           "search": {**RAW["search"], "n_startup_trials": 1}}  # fmt: skip
    s = make_task_searcher(spec_from_dict(raw), "mini/digits", journal=tmp_path / "j")
    seen = []
    for i in range(3):
        config = s.suggest(f"t{i}")
        seen.append(config["prompt.length"])
        for epoch in range(1, 5):
            s.on_trial_result(f"t{i}", {"val_acc": 0.1 * config["prompt.length"], "epoch": epoch})
        s.on_trial_complete(f"t{i}", {"val_acc": 0.1 * config["prompt.length"], "epoch": 4})
    assert sorted(seen) == [1, 5, 10]  # three trials, three different configurations
    study = load_studies(tmp_path / "j")["mini/digits"]
    dups = [t for t in study.trials if t.user_attrs.get("status") == "duplicate"]
    assert all(t.state == TrialState.COMPLETE and t.value == 0.1 * t.params["prompt.length"] for t in dups)
    # The space is exhausted: after MAX_DUPLICATE_ASKS duplicates the searcher still returns one.
    assert s.suggest("t3")["prompt.length"] in (1, 5, 10)


@pytest.mark.parametrize("algorithm", ["tpe", "random"])
def test_a_sampler_stuck_on_trained_configurations_takes_an_untried_one(tmp_path, algorithm: str) -> None:
    """Samplers re-propose trained points (TPE its good region, random sampling a nearly exhausted
    space). After MAX_DUPLICATE_ASKS known points in a row the trial takes an untried one, so the
    study grows by a bounded number of duplicate asks per trial and every point of the space is
    trained once before any is trained twice."""
    params = {"prompt.length": {"choice": [1, 5, 10]}, "optim.base_lr": {"choice": [0.1, 1, 2, 5]}}
    search = {**RAW["search"], "n_startup_trials": 1, "algorithm": algorithm}
    raw = {**RAW, "params": params, "search": search}
    s = make_task_searcher(spec_from_dict(raw), "mini/digits", journal=tmp_path / "j")
    seen = []
    for i in range(12):
        config = s.suggest(f"t{i}")
        point = (config["prompt.length"], config["optim.base_lr"])
        seen.append(point)
        acc = 0.9 if point == (10, 1) else 0.1  # one point far better: TPE keeps proposing it
        for epoch in range(1, 5):
            s.on_trial_result(f"t{i}", {"val_acc": acc, "epoch": epoch})
        s.on_trial_complete(f"t{i}", {"val_acc": acc, "epoch": 4})
    assert len(set(seen)) == 12  # all twelve points, none twice
    study = load_studies(tmp_path / "j")["mini/digits"]
    trained = [t for t in study.trials if t.user_attrs.get("status") != "duplicate"]
    assert len(trained) == 12 and len(study.trials) <= 12 * (MAX_DUPLICATE_ASKS + 1)
    untried = [t for t in trained if t.user_attrs.get(UNTRIED_ATTR) == "untried"]
    assert all(t.state == TrialState.COMPLETE for t in untried)
    if algorithm == "random":  # seeded, so exact: twelve uniform draws from twelve points repeat some
        assert untried
    # Every point trained: nothing untried is left, so a duplicate runs (the budget is the user's).
    config = s.suggest("t12")
    assert (config["prompt.length"], config["optim.base_lr"]) in seen


def _as_replayed(trials) -> list[tuple]:
    return [(t._trial_id, t.number, t.state, t.params, t.value, t.intermediate_values, t.user_attrs)
            for t in trials]  # fmt: skip


def test_the_working_copy_journal_replays_to_what_the_launch_saw(tmp_path) -> None:
    """Reads come from memory and records are appended in batches, but the file stays Optuna's own
    journal: a plain replay (load_studies, --resume, optuna-dashboard) sees the same trials, ids
    included (the ids count both tasks' trials in file order: one storage for all tasks)."""
    import pickle

    spec = spec_from_dict(RAW)
    journal = tmp_path / "optuna.journal"
    mts = build_searcher(spec, ["mini/digits", "mini/textures"], journal=journal)
    for i in range(3):
        _drive(mts, f"t{i}", [0.2, 0.4, 0.5, 0.6 + 0.01 * i])
    live = {t: _as_replayed(s.get_trials(deepcopy=False)) for t, s in mts.studies().items()}
    assert {t: _as_replayed(s.trials) for t, s in load_studies(journal).items()} == live
    # unpickled (Tune's searcher state on a restore): the storage replays the file
    again = pickle.loads(pickle.dumps(mts))
    assert {t: _as_replayed(s.get_trials(deepcopy=False)) for t, s in again.studies().items()} == live


def test_the_working_copy_journal_refuses_a_second_writer(tmp_path) -> None:
    import pytest

    spec = spec_from_dict(RAW)
    journal = tmp_path / "optuna.journal"
    mine = make_task_searcher(spec, "mini/digits", journal=journal)
    _drive(mine, "a", [0.5])
    other = make_task_searcher(spec, "mini/digits", journal=journal)  # not how a launch runs
    _drive(other, "b", [0.4])
    _drive(mine, "c", [0.3])  # a read first sees the other writer's records: taken in, in order
    assert [t.user_attrs["status"] for t in load_studies(journal)["mini/digits"].trials] == ["pruned"] * 3
    assert mine.suggest("e") is not None
    storage = mine._ot_study._storage
    with pytest.raises(RuntimeError, match="another process appended"), storage.batch():
        mine._ot_trials["e"].set_user_attr("k", 1)  # a record of its own in flight ...
        _drive(other, "d", [0.2])  # ... when another writer appends: the ids could differ


def test_tpe_models_the_best_and_a_spread_sample_of_a_long_study() -> None:
    import optuna

    from vptsearch.search import _tpe

    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0, 1)
    for i in range(400):
        if i % 4 == 0:
            study.add_trial(optuna.trial.create_trial(params={"x": i / 400}, distributions={"x": dist},
                                                      value=((i * 37) % 400) / 400))  # fmt: skip
        else:
            study.add_trial(optuna.trial.create_trial(
                params={"x": i / 400}, distributions={"x": dist}, state=TrialState.PRUNED,
                intermediate_values={1 + i % 3: ((i * 53) % 400) / 400},
            ))  # fmt: skip
    running = study.ask({"x": dist})
    trials = study.get_trials(deepcopy=False)
    best = _tpe._Best()
    assert best.window(trials[:150], maximize=True) == trials[:150]  # a short study: unchanged
    window = best.window(trials, maximize=True)
    assert len(window) == _tpe.TPE_WINDOW + 1 and window[-1].number == running.number
    kept = {t.number for t in window}
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    assert {t.number for t in done[: _tpe.TPE_WINDOW_BEST]} <= kept  # TPE's good set
    deepest = [t for t in trials if t.state == TrialState.PRUNED and max(t.intermediate_values) == 3]
    assert sum(t.number in kept for t in deepest) >= _tpe.TPE_WINDOW_BEST
    others = sorted(kept - {t.number for t in done[:25]} - {t.number for t in deepest} - {running.number})
    assert others[-1] == trials[-2].number and others[0] < 20  # spread over the whole history
    assert [t.number for t in window] == sorted(kept)
    # the sampler itself: a long study still asks fine and the window is not part of its pickle
    sampler = _tpe.WindowedTPESampler(seed=0, n_startup_trials=4, multivariate=True)
    long = optuna.create_study(direction="maximize", sampler=sampler)
    for t in trials[:-1]:
        long.add_trial(t)
    assert 0 <= long.ask({"x": dist}).params["x"] <= 1
    import pickle

    assert "_best" not in pickle.loads(pickle.dumps(sampler)).__getstate__()


def test_each_task_and_seed_gets_its_own_sampler_stream() -> None:
    from vptsearch.search._searcher import task_seed

    # anagrams shared one stream under the old seed + sum of character codes
    assert task_seed(0, "mini/digits") != task_seed(0, "mini/digtis")
    assert task_seed(4, "fgvc/stanford_cars") != task_seed(0, "fgvc/stanford_dogs")  # sums 4 apart
    assert task_seed(3, "mini/digits") == task_seed(3, "mini/digits") < 2**32  # reproducible, numpy-sized


@pytest.mark.parametrize("seed", range(8))
def test_a_trial_never_starts_on_the_configuration_another_trial_is_training(tmp_path, seed: int) -> None:
    """Random startup draws do not see TPE's constant liar: two trials staged at once could draw the
    same point (seed 0 of these did on a two-point space; the quickstart ran one dsprites_loc
    configuration twice in its four trials). Such a draw is told FAIL (out of TPE's model) and the
    study asked again."""
    params = {"prompt.length": {"choice": [1, 5]}, "optim.base_lr": 1.0}
    raw = {**RAW, "params": params, "search": {**RAW["search"], "n_startup_trials": 4, "seed": seed}}
    s = make_task_searcher(spec_from_dict(raw), "mini/digits", journal=tmp_path / "j")
    first, second = s.suggest("a"), s.suggest("b")  # both staged before either reports
    assert {first["prompt.length"], second["prompt.length"]} == {1, 5}
    study = load_studies(tmp_path / "j")["mini/digits"]
    told = [t for t in study.trials if t.user_attrs.get("status") == "duplicate of a running trial"]
    assert all(t.state == TrialState.FAIL for t in told)
    # once "a" has ended, its point is no longer running: a third trial may be told its value instead
    s.on_trial_complete("a", {"val_acc": 0.5, "epoch": 4})
    assert s.suggest("c")["prompt.length"] in (1, 5)
