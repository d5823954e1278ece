"""Each task's final trials start in the search's experiment the moment its search ends.

The searcher side without Ray: a recording task searcher behind the launch's MultiTaskSearcher,
wrapped by FinalsAfterSearch, driven the way Tune drives it (suggest, results, completion).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from vptsearch.search._final_queue import FinalsAfterSearch, check_finals, expected_finals
from vptsearch.search._protocol import TrialRecord, select
from vptsearch.search._scheduler import PerTaskScheduler
from vptsearch.search._searcher import MultiTaskSearcher
from vptsearch.search._trainable import failure_result

EPOCHS = 3


class Recorder(Searcher):
    """A task searcher that hands out ``configs`` in order and records what reaches it."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__(metric="val_acc", mode="max")
        self.configs, self.results, self.completed = list(configs), [], []

    def suggest(self, trial_id: str) -> dict | None:
        return dict(self.configs.pop(0)) if self.configs else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.results.append(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.completed.append(trial_id)


def _searcher(n: int = 2, seeds: tuple[int, ...] = (0, 1)) -> tuple[FinalsAfterSearch, dict[str, Recorder]]:
    recorders = {t: Recorder([{"optim.base_lr": float(i + 1)} for i in range(n)]) for t in ("a", "b")}
    inner = MultiTaskSearcher(recorders, dict.fromkeys(recorders, n), max_concurrent=n)
    return FinalsAfterSearch(inner, seeds, EPOCHS), recorders


def _done(val: float, epoch: int = EPOCHS) -> dict[str, Any]:
    return {"epoch": epoch, "val_acc": val}


def _start_all(s: FinalsAfterSearch, n: int) -> dict[str, dict]:
    return {f"t{i}": s.suggest(f"t{i}") for i in range(n)}


def test_a_tasks_finals_come_when_its_search_ends_while_another_task_still_searches() -> None:
    s, rec = _searcher()
    started = _start_all(s, 4)
    by_task = {t: [tid for tid, c in started.items() if c["task"] == t] for t in ("a", "b")}
    assert all(len(v) == 2 for v in by_task.values())
    assert s.suggest("wait") is None  # nothing to start: every search trial is out, no search ended
    a1, a2 = by_task["a"]
    s.on_trial_complete(a1, _done(0.4))
    assert s.suggest("wait2") is None  # task a still has a live trial
    s.on_trial_complete(a2, _done(0.7))  # a's search is over; b's two trials still run
    finals = [s.suggest("f0"), s.suggest("f1")]
    assert [f["phase"] for f in finals] == ["final", "final"] and [f["seed"] for f in finals] == [0, 1]
    assert all(f["task"] == "a" and f["optim.base_lr"] == started[a2]["optim.base_lr"] for f in finals)
    assert s.suggest("wait3") is None  # b is still searching: not FINISHED yet
    # results and ends of final trials never reach a task's searcher
    s.on_trial_result("f0", {"epoch": 1, "val_acc": None, "phase": "final"})
    s.on_trial_complete("f0", {"epoch": EPOCHS, "test_acc": 0.5})
    assert "f0" not in rec["a"].results + rec["a"].completed
    for tid in by_task["b"]:
        s.on_trial_complete(tid, _done(0.2))
    assert [s.suggest("g0")["task"], s.suggest("g1")["task"]] == ["b", "b"]
    assert s.suggest("end") == Searcher.FINISHED


def test_queued_finals_go_before_new_search_trials() -> None:
    s, _ = _searcher(n=3)
    first = [s.suggest(f"t{i}") for i in range(2)]  # one of each task (fewest live first)
    more = s.suggest("t2")
    a_ids = [tid for tid, c in zip(("t0", "t1", "t2"), [*first, more], strict=True) if c["task"] == "a"]
    assert len(a_ids) <= 2
    # finish a's search by starting and ending the rest of its trials
    tid = "t3"
    while s.search.started["a"] < 3:
        cfg = s.suggest(tid)
        if cfg["task"] == "a":
            a_ids.append(tid)
        tid += "x"
    for t in a_ids:
        s.on_trial_complete(t, _done(0.5))
    assert s.search.started["b"] < 3  # b still has search trials to start
    assert s.suggest("next")["phase"] == "final"


def test_winner_ties_go_to_the_earlier_suggested_trial_as_the_drivers_selection() -> None:
    s, _ = _searcher()
    started = _start_all(s, 4)
    a_ids = [tid for tid, c in started.items() if c["task"] == "a"]
    s.on_trial_complete(a_ids[1], _done(0.6))  # the later trial ends first, same accuracy
    s.on_trial_complete(a_ids[0], _done(0.6))
    final = s.suggest("f")
    records = [
        TrialRecord.from_result(tid, started[tid], _done(0.6), False, EPOCHS) for tid in a_ids
    ]  # in trial order, as Tune's results list them
    assert final["optim.base_lr"] == select(records, ["a"])["a"].best.config["optim.base_lr"]
    assert final["optim.base_lr"] == started[a_ids[0]]["optim.base_lr"]


def test_a_task_without_a_completed_trial_gets_no_finals_and_the_search_still_ends() -> None:
    s, _ = _searcher()
    started = _start_all(s, 4)
    for tid, cfg in started.items():
        if cfg["task"] == "a":
            s.on_trial_complete(tid, _done(0.1, epoch=1))  # pruned
        else:
            s.on_trial_complete(tid, None, error=True)
    assert s.suggest("x") == Searcher.FINISHED
    assert expected_finals(select([], ["a", "b"]), (0, 1)) == 0


def test_state_round_trip_keeps_the_queue_and_what_each_task_has_left(tmp_path) -> None:
    s, _ = _searcher()
    started = _start_all(s, 4)
    for tid, cfg in started.items():
        if cfg["task"] == "a":
            s.on_trial_complete(tid, _done(0.3))
    s.save(str(tmp_path / "state.pkl"))
    again, _ = _searcher()
    again.restore(str(tmp_path / "state.pkl"))
    assert [again.suggest("f0")["seed"], again.suggest("f1")["seed"]] == [0, 1]
    assert again.suggest("w") is None and again.ended == {"a"}


def test_check_finals_names_the_task_whose_finals_trained_another_config() -> None:
    s, _ = _searcher()
    started = _start_all(s, 4)
    records = [TrialRecord.from_result(t, c, _done(0.5), False, EPOCHS) for t, c in started.items()]
    selection = select(records, ["a", "b"])
    winner = {**selection["a"].best.config, "task": "a", "phase": "final", "seed": 0}
    check_finals(selection, {"a": [winner]})
    with pytest.raises(RuntimeError, match="final trials of a trained"):
        check_finals(selection, {"a": [{**winner, "optim.base_lr": 99.0}]})


def test_the_per_task_scheduler_lets_final_trials_run_without_asha() -> None:
    sch = PerTaskScheduler(max_t=EPOCHS, grace_period=1, reduction_factor=2)
    trial = SimpleNamespace(trial_id="f", config={"task": "a", "phase": "final", "seed": 0})
    sch.on_trial_add(None, trial)
    assert sch.on_trial_result(None, trial, {"epoch": 1, "val_acc": None}) == TrialScheduler.CONTINUE
    sch.on_trial_complete(None, trial, {"epoch": EPOCHS})
    sch.on_trial_remove(None, trial)
    assert "f" not in PerTaskScheduler.stopped_trial_ids


def test_final_results_carry_the_search_metric_key_without_a_value() -> None:
    assert failure_result(ValueError("bad"), {"epoch": 2}, "final")["val_acc"] is None
    assert failure_result(ValueError("bad"), {"epoch": 2, "val_acc": 0.5}, "search")["val_acc"] == 0.5


def test_a_restored_search_runs_finals_only_if_it_was_started_so(tmp_path) -> None:
    """A launch folder from before finals ran in the search resumes with its own final phase."""
    from vptsearch.search._phases import PHASES_FILE, TuneSetup, finals_in_search
    from vptsearch.search._storage import Storage

    def setup(run_dir, resume):
        store = Storage(uri=str(run_dir / "ray"), path=str(run_dir / "ray"))
        return TuneSetup(SimpleNamespace(), run_dir, store, resume=resume)  # type: ignore[arg-type]

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert finals_in_search(setup(fresh, resume=False)) and (fresh / PHASES_FILE).is_file()
    (fresh / "ray" / "search").mkdir(parents=True)
    (fresh / "ray" / "search" / "tuner.pkl").write_bytes(b"state")  # Tune saved the search
    assert finals_in_search(setup(fresh, resume=True))
    old = tmp_path / "old"  # its search was saved by a version without the phases file
    (old / "ray" / "search").mkdir(parents=True)
    (old / "ray" / "search" / "tuner.pkl").write_bytes(b"state")
    assert not finals_in_search(setup(old, resume=True)) and not (old / PHASES_FILE).exists()
    assert finals_in_search(setup(old, resume=False))  # started again from nothing: the new way
