"""A task's final trials start in the search's own Tune experiment as soon as its search has ended.

With a second Tuner for the final phase, every slot of the cluster waits for the *last* task's
search: while its last promoted trials run to the full budget, the other slots have nothing to
start (the search's tail: 0.063-0.067 of the slot-seconds of bench_gpu_sim's 16-slot run), and the
final Tuner then starts its own workers. :class:`FinalsAfterSearch` wraps the launch's
:class:`~vptsearch.search._searcher.MultiTaskSearcher`: it keeps every search trial's last result,
and when a task's last search trial ends it selects the task's winner with the protocol's own
:func:`~vptsearch.search._protocol.select` and queues one final trial per final seed. Queued finals
are suggested before new search trials (they are known to run the whole budget, and each finished
task gets its bundle sooner). The driver selects again from the experiment's results and checks that
each task's finals trained its winner (:func:`check_finals`).

Final trials report no validation accuracy (they train on train+val): their results carry
``val_acc: None`` so Tune's strict metric check, which the search's metric sets for every result of
the experiment, accepts them; the per-task scheduler lets them run (no ASHA), and no Optuna study
sees them.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher

from vptsearch.search._protocol import TaskSelection, TrialRecord, final_configs, hparams, select
from vptsearch.search._result_keys import METRIC, MODE
from vptsearch.search._searcher import MultiTaskSearcher
from vptsearch.search._state import DriverStateMixin


class FinalsAfterSearch(DriverStateMixin, Searcher):
    """The search's searcher, then each task's final trials the moment that task's search ends."""

    def __init__(self, search: MultiTaskSearcher, seeds: tuple[int, ...], max_epochs: int) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        self.search, self.seeds, self.max_epochs = search, tuple(seeds), int(max_epochs)
        self.order: dict[str, int] = {}  # search trial -> the order it was suggested in
        self.configs: dict[str, dict[str, Any]] = {}  # live search trial -> its config
        self.records: dict[str, list[tuple[int, TrialRecord]]] = {t: [] for t in search.budgets}
        self.queue: list[dict[str, Any]] = []  # finals of ended searches, not started yet
        self.ended: set[str] = set()  # tasks whose search has ended (their finals are queued)
        self.finals: set[str] = set()  # trial ids of final trials

    @property
    def budgets(self) -> dict[str, int]:
        return self.search.budgets

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]  # FINISHED is a str
        if self.queue:
            self.finals.add(trial_id)
            return self.queue.pop(0)
        config = self.search.suggest(trial_id)
        if isinstance(config, dict):
            self.order[trial_id] = len(self.order)
            self.configs[trial_id] = config
            return config
        # no search trial to start now: done only once every task's finals have been handed out
        if config == Searcher.FINISHED and self.ended >= set(self.budgets):
            return Searcher.FINISHED
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self.finals:
            self.search.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.finals:
            return
        self.search.on_trial_complete(trial_id, result=result, error=error)
        config = self.configs.pop(trial_id, None)
        if config is not None:
            record = TrialRecord.from_result(trial_id, config, result, error, self.max_epochs)
            self.records[config["task"]].append((self.order[trial_id], record))
        self._queue_ended_tasks()

    def _queue_ended_tasks(self) -> None:
        """Queue the finals of every task whose search has started all its trials and has none live."""
        s = self.search
        for task in s.budgets:
            if task in self.ended or s.started[task] < s.budgets[task] or s.live[task]:
                continue
            self.ended.add(task)
            # in suggestion order: select() breaks ties towards the earlier trial, as the driver's
            # selection over Tune's results (in trial order) does
            records = [r for _, r in sorted(self.records[task], key=lambda x: x[0])]
            finals = final_configs(select(records, [task]), self.seeds).get(task, [])
            self.queue.extend({**cfg, "task": task} for cfg in finals)

    def save(self, checkpoint_path: str) -> None:
        self.search.sync_journal()  # a saved searcher state must never name trials the journal lacks
        super().save(checkpoint_path)


def expected_finals(selection: dict[str, TaskSelection], seeds: tuple[int, ...]) -> int:
    """How many final trials a launch with this selection runs."""
    return sum(len(c) for c in final_configs(selection, seeds).values())


def check_finals(selection: dict[str, TaskSelection], final_trial_configs: dict[str, list[dict]]) -> None:
    """Raise if a task's final trials did not train the winner the driver selects from the results
    (the searcher selected the same way from the same last results: a mismatch is a bug to report,
    never a result to publish)."""
    for task, configs in final_trial_configs.items():
        best = selection[task].best if task in selection else None
        for cfg in configs:
            if best is None or hparams(cfg) != best.config:
                raise RuntimeError(
                    f"vptsearch bug: the final trials of {task} trained {hparams(cfg)} but the search's "
                    f"winner is {None if best is None else best.config}; please report it with the run "
                    "folder"
                )
