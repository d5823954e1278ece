"""Searchers: Optuna per task (PRUNED-aware), multiplexed into one Tune searcher for all tasks.

Why one Tuner for all tasks: a single Tune experiment gives one directory to ``Tuner.restore`` on
``--resume`` (trials, checkpoints and the searcher state of every task together), needs no driver
threads (Tune's controller and signal handling are main-thread code), and lets Ray pack the trials of
all tasks onto the shared cluster. Each task keeps its *own* Optuna study and its own ASHA brackets
(:mod:`vptsearch.search._scheduler`), so tasks never compete inside one model or one rung.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from vptsearch.search._state import DriverStateMixin
from vptsearch.search._warm_start import WarmStart
from vptsearch.spec import SearchSpec, define_by_run

logger = logging.getLogger(__name__)

METRIC, MODE, TIME_ATTR = "val_acc", "max", "epoch"


class PruneAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna the truth about trials that did not run the full budget.

    Ray's ``OptunaSearch.on_trial_complete`` tells a scheduler-stopped trial as COMPLETE with its
    low-fidelity score, which poisons TPE (a trial pruned at epoch 2 competes with 100-epoch trials).
    Here a trial that ended before ``max_epochs`` is told PRUNED (Optuna then uses its last
    intermediate value at that step); a diverged trial is PRUNED too, tagged ``status=diverged``;
    an errored trial is FAIL. The status is stored as an Optuna user attribute.
    """

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs

    def suggest(self, trial_id: str) -> dict | None:
        """A configuration not yet trained to the full budget.

        On a discrete space TPE re-proposes configurations it has already seen (it models the good
        region, not the set of tried points); retraining one costs a whole trial for a value we
        know. Such a proposal is told to Optuna at once with the known value (so the model still
        counts it) and the study is asked again; after ``MAX_DUPLICATE_ASKS`` duplicates in a row
        (the space is nearly exhausted) the duplicate runs.
        """
        known = self._completed_values()
        for _ in range(MAX_DUPLICATE_ASKS):
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            key = _params_key(ot_trial.params)
            if key not in known:
                return config
            study: optuna.Study = self._ot_study  # type: ignore[assignment]
            ot_trial.set_user_attr("status", "duplicate")
            study.tell(ot_trial, known[key], state=TrialState.COMPLETE)
            del self._ot_trials[trial_id]
        return super().suggest(trial_id)

    def _completed_values(self) -> dict[tuple[Any, ...], float]:
        study: optuna.Study = self._ot_study  # type: ignore[assignment]
        return {
            _params_key(t.params): float(t.value)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None
        }

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self._metric not in result:
            return
        ot_trial = self._ot_trials[trial_id]
        step = int(result.get(TIME_ATTR, result.get("training_iteration", 0)))
        # Optuna keeps one value per step; a resumed trial may re-send a step it already reported.
        if step not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
            ot_trial.report(float(result[self._metric]), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        status = trial_status(result, self._max_epochs, error)
        try:
            ot_trial.set_user_attr("status", status)
            if result and self._metric in result:
                self.on_trial_result(trial_id, result)
            study: optuna.Study = self._ot_study  # type: ignore[assignment]  # set up in __init__
            if status == "completed" and result is not None:
                study.tell(ot_trial, float(result[self._metric]), state=TrialState.COMPLETE)
            elif status in ("pruned", "diverged"):
                study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                study.tell(ot_trial, state=TrialState.FAIL)
        except (RuntimeError, ValueError) as exc:  # already finished in the journal before a restore
            logger.warning("optuna: trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


MAX_DUPLICATE_ASKS = 20


def _params_key(params: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(params.items()))


def trial_status(result: Mapping[str, Any] | None, max_epochs: int, error: bool = False) -> str:
    """completed | pruned | diverged | failed, from a trial's last result.

    A result with ``error`` is the last one of a trial that met bad data or config and ended
    without a retry (see ``_trainable.failure_result``)."""
    if error or not result or result.get("error"):
        return "failed"
    if result.get("diverged"):
        return "diverged"
    return "completed" if int(result.get(TIME_ATTR, 0)) >= max_epochs else "pruned"


def make_task_searcher(
    spec: SearchSpec, task: str, journal: str | Path | None = None
) -> PruneAwareOptunaSearch:
    """The Optuna searcher of one task: seeded TPE (multivariate, grouped for the conditional space,
    constant liar for parallel trials) or seeded random sampling.

    With ``journal`` the study (named after the task) lives in an Optuna journal file, so it can be
    inspected after the launch (``optuna.load_study``, optuna-dashboard) and survives a restore.
    """
    s = spec.search
    seed = s.seed + sum(map(ord, task))  # distinct but reproducible streams per task
    if s.algorithm == "tpe":
        with warnings.catch_warnings():  # multivariate/group are "experimental" but long-standing
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=s.n_startup_trials,
                multivariate=True,
                group=True,
                constant_liar=True,
            )
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    return PruneAwareOptunaSearch(
        space=define_by_run(spec),
        metric=METRIC,
        mode=MODE,
        sampler=sampler,
        study_name=task,
        storage=journal_storage(journal) if journal else None,
        max_epochs=spec.training.epochs,
    )


def journal_storage(path: str | Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def load_studies(journal: str | Path) -> dict[str, optuna.Study]:
    """The per-task Optuna studies of a launch (``<run_dir>/optuna.journal``)."""
    storage = journal_storage(journal)
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
        for s in optuna.get_all_study_summaries(storage)
    }


class MultiTaskSearcher(DriverStateMixin, Searcher):
    """Routes Tune's searcher calls to one searcher per task; adds ``task`` and ``phase`` to configs.

    ``budgets[task]`` trials are suggested per task, at most ``max_concurrent`` running per task;
    tasks are interleaved (the one with the fewest live trials first) so all tasks progress together.
    ``fixed`` configs (grid search) are suggested in order instead of asking a searcher.
    """

    def __init__(
        self,
        searchers: Mapping[str, Searcher] | None,
        budgets: Mapping[str, int],
        max_concurrent: int,
        fixed: Mapping[str, list[dict[str, Any]]] | None = None,
        metric: str | None = METRIC,
        warm_start: WarmStart | None = None,
    ) -> None:
        # metric=None for the final phase: its trials report no validation accuracy (no val split).
        super().__init__(metric=metric, mode=MODE if metric else None)
        self.searchers = dict(searchers or {})
        self.budgets = dict(budgets)
        self.max_concurrent = max_concurrent
        self.fixed = {k: list(v) for k, v in (fixed or {}).items()}
        self.started: dict[str, int] = dict.fromkeys(self.budgets, 0)
        self.live: dict[str, set[str]] = {t: set() for t in self.budgets}
        self.task_of: dict[str, str] = {}
        self.warm_start = warm_start

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]  # FINISHED is a str
        open_tasks = [t for t in self.budgets if self.started[t] < self.budgets[t]]
        if not open_tasks:
            return Searcher.FINISHED
        ready = [t for t in open_tasks if len(self.live[t]) < self.max_concurrent]
        for task in sorted(ready, key=lambda t: (len(self.live[t]), self.started[t])):
            config: Any
            if task in self.fixed:
                config = dict(self.fixed[task][self.started[task]])
            else:
                if self.warm_start is not None:  # the enqueued trial is the one asked next
                    self.warm_start.maybe_enqueue(task, self.studies())
                config = self.searchers[task].suggest(trial_id)
                if config is None:
                    continue
                if config == Searcher.FINISHED:
                    self.budgets[task] = self.started[task]
                    continue
            self.started[task] += 1
            self.live[task].add(trial_id)
            self.task_of[trial_id] = task
            return {"phase": "search", "seed": 0, **config, "task": task}
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        task = self.task_of.get(trial_id)
        if task in self.searchers:
            self.searchers[task].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        task = self.task_of.get(trial_id)
        if task is None:
            return
        self.live[task].discard(trial_id)
        if task in self.searchers:
            self.searchers[task].on_trial_complete(trial_id, result=result, error=error)

    def studies(self) -> dict[str, optuna.Study]:
        return {t: s._ot_study for t, s in self.searchers.items() if isinstance(s, OptunaSearch)}  # type: ignore[misc]



def build_searcher(
    spec: SearchSpec, tasks: list[str], journal: str | Path | None = None
) -> MultiTaskSearcher:
    """The searcher of a launch: per-task Optuna (tpe | random) or the grid of every combination."""
    from vptsearch.spec import grid_configs

    if spec.search.algorithm == "grid":
        grid = grid_configs(spec)
        if spec.smoke:
            grid = grid[: spec.search.trials_per_task]
        return MultiTaskSearcher(
            None,
            dict.fromkeys(tasks, len(grid)),
            spec.search.max_concurrent,
            fixed=dict.fromkeys(tasks, grid),
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per study/trial is noise here
    searchers = {t: make_task_searcher(spec, t, journal) for t in tasks}
    warm = WarmStart(spec, tasks) if spec.search.warm_start != "none" else None
    return MultiTaskSearcher(
        searchers, dict.fromkeys(tasks, spec.search.trials_per_task), spec.search.max_concurrent,
        warm_start=warm,
    )
