"""Searchers: Optuna per task (PRUNED-aware), multiplexed into one Tune searcher for all tasks.

Why one Tuner for all tasks: a single Tune experiment gives one directory to ``Tuner.restore`` on
``--resume`` (trials, checkpoints and the searcher state of every task together), needs no driver
threads (Tune's controller and signal handling are main-thread code), and lets Ray pack the trials of
all tasks onto the shared cluster. Each task keeps its *own* Optuna study and its own ASHA brackets
(:mod:`vptsearch.search._scheduler`), so tasks never compete inside one model or one rung.

The task searcher drives its study through Optuna's public ask/tell interface; the launch's journal
is :mod:`vptsearch.search._journal`, TPE's window over a long study :mod:`vptsearch.search._tpe`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from vptsearch._hashing import sha256_bytes
from vptsearch.search import _journal
from vptsearch.search._journal import WorkingCopyJournalStorage, journal_batch, journal_storage, load_studies
from vptsearch.search._result_keys import METRIC, MODE, TIME_ATTR, trial_status
from vptsearch.search._state import DriverStateMixin
from vptsearch.search._tpe import WindowedTPESampler, _study_gamma
from vptsearch.search._untried import ATTR as UNTRIED_ATTR
from vptsearch.search._untried import completed_values, live_keys, pick_untried
from vptsearch.search._untried import params_key as _params_key
from vptsearch.search._warm_start import ATTR as WARM_START_ATTR
from vptsearch.search._warm_start import WarmStart
from vptsearch.spec import SearchSpec, define_by_run, grid_configs

# WindowedTPESampler, WorkingCopyJournalStorage and _study_gamma live in _tpe and _journal; searcher
# snapshots saved before those modules existed name them here, and importing them here keeps such
# a launch resumable (pickle looks them up in this module).
__all__ = [
    "METRIC", "MODE", "TIME_ATTR", "MultiTaskSearcher", "PruneAwareOptunaSearch", "WindowedTPESampler",
    "WorkingCopyJournalStorage", "_study_gamma", "build_searcher", "journal_storage", "load_studies",
    "make_task_searcher", "task_seed", "trial_status",
]  # fmt: skip

logger = logging.getLogger(__name__)


class PruneAwareOptunaSearch(DriverStateMixin, Searcher):
    """One task's Optuna study as a Tune searcher that tells Optuna the truth about trials that did
    not run the full budget.

    Ray's ``OptunaSearch.on_trial_complete`` tells a scheduler-stopped trial as COMPLETE with its
    low-fidelity score, which poisons TPE (a trial pruned at epoch 2 competes with 100-epoch trials).
    Here a trial that ended before ``max_epochs`` is told PRUNED (Optuna then uses its last
    intermediate value at that step); a diverged trial is PRUNED too, tagged ``status=diverged``;
    an errored trial is FAIL. The status is stored as an Optuna user attribute.

    The study is driven through Optuna's public ask/tell interface (``study.ask``, ``trial.report``,
    ``study.tell``), as Ray's ``OptunaSearch`` drives a define-by-run space: one asked trial per
    Tune trial, the configuration the values the space sampled (in sampling order) updated by the
    dict it returns. The state is saved and restored as a whole (:class:`DriverStateMixin`).
    """

    def __init__(
        self,
        space: Callable[[Any], dict[str, Any] | None],
        *,
        metric: str,
        mode: str,
        sampler: optuna.samplers.BaseSampler,
        study_name: str,
        storage: BaseStorage | None,
        max_epochs: int,
        seed: int = 0,
        report_steps: frozenset[int] | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        # the steps whose values Optuna keeps (ASHA's rungs; None: every result): a pruned trial's
        # value is the one at its last rung, and one journal write per epoch was driver time
        self._report_steps = report_steps
        # The names Ray's OptunaSearch gave the same state (this class subclassed it once): a searcher
        # snapshot saved then restores into this class unchanged.
        self._space = space
        self._storage = storage  # None: the study's own in-memory storage
        self._max_epochs = max_epochs
        self._seed = seed  # of the untried-point draw (the sampler's own seed is the sampler's)
        self._ot_study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=optuna.pruners.NopPruner(),  # ASHA decides; Optuna only models the outcomes
            study_name=study_name,
            load_if_exists=True,  # --resume: the study of the journal
            direction="minimize" if mode == "min" else "maximize",
        )
        self._ot_trials: dict[str, optuna.Trial] = {}  # Tune trial id -> its Optuna trial
        self._completed_trials: set[str] = set()  # told to the study

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    @property
    def storage(self) -> BaseStorage | None:
        """The storage given to the study (None for the default in-memory one)."""
        return self._storage

    def suggest(self, trial_id: str) -> dict | None:
        """A configuration not yet trained to the full budget.

        On a discrete space TPE re-proposes configurations it has already seen (it models the good
        region, not the set of tried points); retraining one costs a whole trial for a value we
        know. Such a proposal is told to Optuna at once with the known value (so the model still
        counts it) and the study is asked again; one that another trial is training now (random
        startup draws do not see the constant liar) is told FAIL and the study is asked again.
        After ``MAX_DUPLICATE_ASKS`` duplicates in a row the trial takes an untried point of a
        finite space instead (:mod:`._untried`); when every point is completed or running, or the
        space is not finite, the last duplicate runs.
        """
        with journal_batch(self._storage):
            return self._suggest_new(trial_id)

    def _suggest_new(self, trial_id: str) -> dict | None:
        known = completed_values(self._ot_study)
        running = live_keys(self._ot_trials, self._completed_trials, trial_id)
        for _ in range(MAX_DUPLICATE_ASKS):
            config = self._ask(trial_id)
            ot_trial = self._ot_trials[trial_id]
            key = _params_key(ot_trial.params)
            if key not in known and key not in running:
                return config
            if key in known:
                ot_trial.set_user_attr("status", "duplicate")
                self._ot_study.tell(ot_trial, known[key], state=TrialState.COMPLETE)
            else:  # the same point is training now (startup draws ignore the constant liar):
                # FAIL, which TPE leaves out of its model, as the running trial's value is unknown
                ot_trial.set_user_attr("status", "duplicate of a running trial")
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            del self._ot_trials[trial_id]
        points = getattr(self._space, "points", lambda: None)()
        untried = None if points is None else pick_untried(self._ot_study, points, self._seed)
        if untried is not None:  # asked next: a trial with every param fixed never calls the sampler
            self._ot_study.enqueue_trial(untried, user_attrs={UNTRIED_ATTR: "untried"})
        return self._ask(trial_id)

    def _ask(self, trial_id: str) -> dict[str, Any]:
        """The configuration of ``trial_id``'s Optuna trial, asked for now if it has none yet."""
        if trial_id not in self._ot_trials:
            self._ot_trials[trial_id] = self._ot_study.ask()
        sampled = _SampledValues(self._ot_trials[trial_id])
        constants = self._space(sampled)
        return {**sampled.values, **(constants or {})}

    def user_attr(self, trial_id: str, name: str) -> Any:
        """A user attribute of the Optuna trial behind ``trial_id`` (None when unset or unknown)."""
        ot_trial = self._ot_trials.get(trial_id)
        return None if ot_trial is None else ot_trial.user_attrs.get(name)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        steps = getattr(self, "_report_steps", None)  # a searcher pickled before it had them: None
        if steps is not None and _step(result) not in steps:
            return
        with journal_batch(self._storage):
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials[trial_id]
        step = _step(result)
        # Optuna keeps one value per step; a resumed trial may re-send a step it already reported.
        if step not in _stored(self._ot_study, ot_trial).intermediate_values:
            ot_trial.report(float(result[self.metric]), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        with journal_batch(self._storage):
            self._tell(trial_id, result, error)

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        ot_trial = self._ot_trials[trial_id]
        status = trial_status(result, self._max_epochs, error)
        try:
            ot_trial.set_user_attr("status", status)
            if result and self.metric in result:  # the last value, at whatever step it ended
                self._report(trial_id, result)
            if status == "completed" and result is not None:
                self._ot_study.tell(ot_trial, float(result[self.metric]), state=TrialState.COMPLETE)
            elif status in ("pruned", "diverged"):
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        except (RuntimeError, ValueError) as exc:  # already finished in the journal before a restore
            logger.warning("optuna: trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


# TPE asks in a row that may return trained points before an untried one is taken: enough for TPE
# to leave a well-known region on its own, few enough that an exhausted region costs little.
MAX_DUPLICATE_ASKS = 3


class _SampledValues:
    """The trial as the space sees it: every ``suggest_*`` value is also kept by its name, in
    sampling order (what Ray's ``OptunaSearch`` puts first in a define-by-run configuration)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial
        self.values: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._trial, name)
        if not (name.startswith("suggest_") and callable(attr)):
            return attr

        def suggest(*args: Any, **kwargs: Any) -> Any:
            value = attr(*args, **kwargs)
            self.values[kwargs["name"] if "name" in kwargs else args[0]] = value
            return value

        return suggest


def _step(result: Mapping[str, Any]) -> int:
    return int(result.get(TIME_ATTR, result.get("training_iteration", 0)))


def _stored(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """``trial`` as its storage holds it now (a restored searcher's trial caches an older copy)."""
    storage = trial.storage
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))


def make_task_searcher(
    spec: SearchSpec, task: str, journal: str | Path | JournalStorage | None = None
) -> PruneAwareOptunaSearch:
    """The Optuna searcher of one task: seeded TPE (multivariate, grouped for the conditional space,
    constant liar for parallel trials) or seeded random sampling.

    With ``journal`` (a path, or the launch's :class:`WorkingCopyJournalStorage` shared by its
    tasks) the study (named after the task) lives in an Optuna journal file, so it can be inspected
    after the launch (``optuna.load_study``, optuna-dashboard) and survives a restore.
    """
    s = spec.search
    seed = task_seed(s.seed, task)
    if s.algorithm == "tpe":
        with warnings.catch_warnings():  # multivariate/group are "experimental" but long-standing
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler: optuna.samplers.BaseSampler = WindowedTPESampler(
                seed=seed,
                n_startup_trials=s.n_startup_trials,
                multivariate=True,
                group=True,
                constant_liar=True,
            )
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    return PruneAwareOptunaSearch(
        define_by_run(spec),
        metric=METRIC,
        mode=MODE,
        sampler=sampler,
        study_name=task,
        storage=_launch_storage(journal),
        max_epochs=spec.training.epochs,
        seed=seed,
        report_steps=spec.asha_rungs,
    )


def task_seed(seed: int, task: str) -> int:
    """The sampler seed of ``task`` in a launch seeded ``seed``: 32 bits of a hash of both.

    Each (seed, task) pair gets its own stream. The sum of the name's character codes added to the
    seed, used before, gave anagrams one stream, and across search seeds (benchmarks run several)
    any two names whose sums differ by less than the seed range (fgvc/stanford_cars at seed s+4
    and fgvc/stanford_dogs at seed s).
    """
    return int(sha256_bytes(f"{seed}/{task}".encode())[:8], 16)


def _launch_storage(journal: str | Path | JournalStorage | None) -> JournalStorage | None:
    if journal is None or isinstance(journal, JournalStorage):
        return journal
    return WorkingCopyJournalStorage(journal)


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
                searcher = self.searchers[task]
                aware = searcher if isinstance(searcher, PruneAwareOptunaSearch) else None
                source = None if aware is None else aware.user_attr(trial_id, WARM_START_ATTR)
                if source is not None:  # a control key, like task/phase: the MLflow run's tag, never a param
                    config = {**config, "warm_start": source}
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
        return {t: s.study for t, s in self.searchers.items() if isinstance(s, PruneAwareOptunaSearch)}

    def save(self, checkpoint_path: str) -> None:
        self.sync_journal()  # first: a saved searcher state must never name trials the journal lacks
        super().save(checkpoint_path)

    def sync_journal(self) -> None:
        aware = [s for s in self.searchers.values() if isinstance(s, PruneAwareOptunaSearch)]
        _journal.sync_working_copies(s.storage for s in aware)


def build_searcher(
    spec: SearchSpec, tasks: list[str], journal: str | Path | None = None
) -> MultiTaskSearcher:
    """The searcher of a launch: per-task Optuna (tpe | random) or the grid of every combination."""
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
    # one storage for all tasks: the journal's trial ids count every study's trials in file order,
    # and a working copy only stays in that order if every write goes through it
    storage = WorkingCopyJournalStorage(journal) if journal else None
    searchers = {t: make_task_searcher(spec, t, storage) for t in tasks}
    warm = WarmStart(spec, tasks) if spec.search.warm_start != "none" else None
    return MultiTaskSearcher(
        searchers, dict.fromkeys(tasks, spec.search.trials_per_task), spec.search.max_concurrent,
        warm_start=warm,
    )
