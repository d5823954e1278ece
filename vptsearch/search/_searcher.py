"""Searchers: Optuna per task (PRUNED-aware), multiplexed into one Tune searcher for all tasks.

Why one Tuner for all tasks: a single Tune experiment gives one directory to ``Tuner.restore`` on
``--resume`` (trials, checkpoints and the searcher state of every task together), needs no driver
threads (Tune's controller and signal handling are main-thread code), and lets Ray pack the trials of
all tasks onto the shared cluster. Each task keeps its *own* Optuna study and its own ASHA brackets
(:mod:`vptsearch.search._scheduler`), so tasks never compete inside one model or one rung.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import functools
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.storages import JournalStorage
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from vptsearch.search._state import DriverStateMixin
from vptsearch.search._warm_start import ATTR as WARM_START_ATTR
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
        with journal_batch(self._ot_study):
            return self._suggest_new(trial_id)

    def _suggest_new(self, trial_id: str) -> dict | None:
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

    def user_attr(self, trial_id: str, name: str) -> Any:
        """A user attribute of the Optuna trial behind ``trial_id`` (None when unset or unknown)."""
        ot_trial = self._ot_trials.get(trial_id)
        return None if ot_trial is None else ot_trial.user_attrs.get(name)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or self._metric not in result:
            return
        with journal_batch(self._ot_study):
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials[trial_id]
        step = int(result.get(TIME_ATTR, result.get("training_iteration", 0)))
        # Optuna keeps one value per step; a resumed trial may re-send a step it already reported.
        if step not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
            ot_trial.report(float(result[self._metric]), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        with journal_batch(self._ot_study):
            self._tell(trial_id, result, error)

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
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
    spec: SearchSpec, task: str, journal: str | Path | JournalStorage | None = None
) -> PruneAwareOptunaSearch:
    """The Optuna searcher of one task: seeded TPE (multivariate, grouped for the conditional space,
    constant liar for parallel trials) or seeded random sampling.

    With ``journal`` (a path, or the launch's :class:`WorkingCopyJournalStorage` shared by its
    tasks) the study (named after the task) lives in an Optuna journal file, so it can be inspected
    after the launch (``optuna.load_study``, optuna-dashboard) and survives a restore.
    """
    s = spec.search
    seed = s.seed + sum(map(ord, task))  # distinct but reproducible streams per task
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
        space=define_by_run(spec),
        metric=METRIC,
        mode=MODE,
        sampler=sampler,
        study_name=task,
        storage=_launch_storage(journal),
        max_epochs=spec.training.epochs,
    )


# TPE's view of a long study (see WindowedTPESampler): its best completed and pruned trials and a
# sample of the others, TPE_WINDOW finished trials in all (running ones come on top).
TPE_WINDOW, TPE_WINDOW_BEST = 150, 25


class WindowedTPESampler(optuna.samplers.TPESampler):
    """TPE that models at most ``TPE_WINDOW`` finished trials of a long study.

    Every TPE ask walks the whole study several times in Python (search-space groups, the
    good/bad split, the Parzen estimators): measured here ~2 ms per ask at 100 trials, ~10 ms at
    400 and ~20 ms at 800, so a 500-trial-per-task launch spent most of its driver time in it.
    Beyond ``TPE_WINDOW`` finished trials the sampler sees the ``TPE_WINDOW_BEST`` best completed
    trials, as many best pruned ones (deepest rung first, Optuna's own order), an evenly spaced
    sample of all the others (the newest included) up to the window, and the running trials (the
    constant liar); TPE's good set keeps the size it has for the whole study
    (``min(ceil(n / 10), 25)`` of all ``n`` trials). So the good set is the very one of the whole
    study (its best trials are all in the window) and the bad density is fit to a sample spread
    like the whole history. Both halves matter, as measured (400 trials of a noisy 4-parameter
    objective with half the trials pruned, 8 seeds, true value of the best completed trial, 1.0 at
    the optimum): full TPE 0.971 on average; this window 0.969; the same window with the good set
    sized for the window 0.931; the most recent trials instead of a spread sample, good set sized
    for the window, 0.906 (5 seeds; the recent trials crowd the good region, so the bad density
    rises there too). A study of up to ``TPE_WINDOW``
    finished trials is sampled exactly as by ``TPESampler`` (the shipped spaces run 8-150 trials
    per task).

    The window is chosen once per asked trial (all its sampler calls see the same trials) and its
    best lists grow incrementally (a finished trial never changes), so choosing it stays cheap.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._reset_window()

    def _reset_window(self) -> None:
        self._best = _Best()
        self._view: tuple[tuple[int, int], _WindowedStudy] | None = None  # (study id, trial number)

    def __getstate__(self) -> dict[str, Any]:
        # derived from the study, which a restore replays anyway: not saved with the searcher state
        return {k: v for k, v in self.__dict__.items() if k not in ("_best", "_view")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_window()

    def _windowed(self, study: optuna.Study, trial: Any) -> optuna.Study:
        key = (study._study_id, trial.number)
        if self._view is None or self._view[0] != key:
            trials = study._get_trials(deepcopy=False, use_cache=False)
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            self._view = key, _WindowedStudy(study, self._best.window(trials, maximize))
            # TPE's good set as large as for the whole study (its size grows with the study)
            modelled = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
            self._gamma = functools.partial(_study_gamma, modelled)
        # a stand-in with the Study's interface (everything but _get_trials is the study's own)
        return self._view[1]  # type: ignore[return-value]

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        return super().infer_relative_search_space(self._windowed(study, trial), trial)

    def sample_relative(self, study: optuna.Study, trial: Any, space: dict[str, Any]) -> dict[str, Any]:
        return super().sample_relative(self._windowed(study, trial), trial, space)

    def sample_independent(self, study: optuna.Study, trial: Any, param_name: str, distribution: Any) -> Any:
        return super().sample_independent(self._windowed(study, trial), trial, param_name, distribution)


class _WindowedStudy:
    """``study`` as the sampler sees it: ``_get_trials`` filters the window, all else is the study."""

    def __init__(self, study: optuna.Study, trials: list[Any]) -> None:
        self._study = study
        self._trials = trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = False, states: Any = None, use_cache: bool = False) -> list[Any]:
        trials = self._trials if states is None else [t for t in self._trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


class _Best:
    """The best completed and pruned trials of one study seen so far, kept as it grows."""

    def __init__(self) -> None:
        self.seen: set[int] = set()  # numbers of the finished trials already ranked
        self.complete: list[tuple[tuple[float, ...], int]] = []  # (rank key, number), best first
        self.pruned: list[tuple[tuple[float, ...], int]] = []

    def window(self, trials: list[Any], maximize: bool) -> list[Any]:
        """The trials TPE models (see :class:`WindowedTPESampler`), in their original order."""
        finished = [t for t in trials if t.state.is_finished()]
        modelled = [t for t in finished if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if len(modelled) <= TPE_WINDOW:
            return trials
        sign = -1.0 if maximize else 1.0
        for t in modelled:
            if t.number not in self.seen:
                self.seen.add(t.number)
                self._rank(t, sign)
        keep = {n for _, n in self.complete} | {n for _, n in self.pruned}
        rest = [t.number for t in modelled if t.number not in keep]
        room = max(TPE_WINDOW - len(keep), 0)
        if rest and room:
            step = len(rest) / room
            keep.update(rest[len(rest) - 1 - int(i * step)] for i in range(min(room, len(rest))))
        return [t for t in trials if t.number in keep or not t.state.is_finished()]

    def _rank(self, trial: Any, sign: float) -> None:
        key: tuple[float, ...]
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            ranked, key = self.complete, (sign * float(trial.value),)
        elif trial.state == TrialState.PRUNED:
            ranked, key = self.pruned, _pruned_rank(trial, sign)
        else:
            return
        bisect.insort(ranked, (key, trial.number))
        del ranked[TPE_WINDOW_BEST:]


def _study_gamma(modelled: int, _window_n: int) -> int:
    from optuna.samplers._tpe.sampler import default_gamma

    return default_gamma(modelled)


def _pruned_rank(trial: Any, sign: float) -> tuple[float, float]:
    """Optuna TPE's order of pruned trials: the deepest step first, then the best value there."""
    if not trial.intermediate_values:
        return (1.0, 0.0)
    step, value = max(trial.intermediate_values.items())
    return (-step, sign * value if value == value else float("inf"))  # NaN last


def _launch_storage(journal: str | Path | JournalStorage | None) -> JournalStorage | None:
    if journal is None or isinstance(journal, JournalStorage):
        return journal
    return WorkingCopyJournalStorage(journal)


def journal_storage(path: str | Path) -> Any:
    """A plain Optuna journal storage: re-reads the file on every access (right for readers of a
    journal that another process may be writing: warm start, inspection)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


class WorkingCopyJournalStorage(JournalStorage):
    """The launch's own journal: the in-memory replay is the working copy, the file the durable log.

    Optuna's ``JournalStorage`` over a file re-reads the file on every read and takes a file lock,
    writes and fsyncs once per record (a trial writes ~16: its params, intermediate values,
    attributes, state); measured over 400 trials that was 3/4 of the searcher's time. Here, as the
    launch is the journal's only writer:

    - a read is served from memory; the file is replayed only into an empty working copy (first
      use, or after unpickling on a restore) or when it grew by bytes another writer appended;
    - a write applies its record to memory (JSON round-tripped, exactly as a replay decodes it) and
      appends it without fsync; inside :meth:`batch` the records of one searcher call are appended
      together at its end, in one write;
    - :meth:`sync` fsyncs; the searcher calls it before Tune saves its state, so the journal on disk
      is never older than a searcher snapshot that refers to its trials.

    Every record reaches the OS before the searcher call that wrote it returns, so a killed driver
    (Ctrl-C, SIGKILL) loses nothing; a machine crash can lose the records since the last sync, those
    of trials the restored snapshot does not know (Tune runs them again). The file format is
    Optuna's: ``load_studies``, ``--resume`` and optuna-dashboard replay it unchanged. A record
    another process appends while this one has records in flight would make the in-memory trial
    ids differ from the file's; that raises instead of diverging silently.
    """

    def __init__(self, path: str | Path) -> None:
        from optuna.storages.journal import JournalFileBackend

        self._path = str(path)
        self._replayed_size = 0  # bytes of the file that are in the in-memory replay
        self._pending: list[bytes] | None = None  # records of the open batch, not yet appended
        self._file: BinaryIO | None = None
        super().__init__(JournalFileBackend(self._path))

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_file", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)  # a fresh, empty replay: the next access reads the whole file
        self._replayed_size = 0
        self._pending = None
        self._file = None

    def _sync_with_backend(self) -> None:
        size = os.stat(self._path).st_size
        if size != self._replayed_size:  # the file on a first use or restore, or another writer
            if self._pending:
                raise self._foreign_writer()
            super()._sync_with_backend()
            self._replayed_size = size

    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        log = {"op_code": op_code, "worker_id": self._replay_result.worker_id, **extra_fields}
        line = (json.dumps(log, separators=(",", ":")) + "\n").encode()
        if self._pending is None:
            self._append(line)
        else:
            self._pending.append(line)
        self._replay_result.apply_logs([json.loads(line)])

    def _append(self, data: bytes) -> None:
        # No Optuna file lock: its symlink + unlink cost ~3 ms per append here (two metadata
        # operations on the run dir's disk), and a launch's journal has one writer (the run dir is
        # claimed atomically); a write by anyone else shows as bytes we did not write.
        if self._file is None:
            self._file = open(self._path, "ab")  # noqa: SIM115  # kept open: one write per call
        if os.fstat(self._file.fileno()).st_size != self._replayed_size:
            raise self._foreign_writer()
        self._file.write(data)
        self._file.flush()  # to the OS now: a killed driver loses nothing
        self._replayed_size += len(data)

    def _foreign_writer(self) -> RuntimeError:
        return RuntimeError(f"{self._path}: another process appended to this launch's Optuna journal")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Append the records written inside the block in one write at its end (also on an error:
        memory already holds them)."""
        if self._pending is not None:  # nested: the outer batch appends
            yield
            return
        self._pending = []
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if pending:
                self._append(b"".join(pending))

    def sync(self) -> None:
        """fsync the journal: what is in memory is on disk."""
        if self._file is not None:
            os.fsync(self._file.fileno())


def journal_batch(study: optuna.Study | None) -> contextlib.AbstractContextManager[None]:
    """``study``'s :meth:`WorkingCopyJournalStorage.batch`, or nothing for other storages."""
    storage = getattr(study, "_storage", None)
    return storage.batch() if isinstance(storage, WorkingCopyJournalStorage) else contextlib.nullcontext()


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
                searcher = self.searchers[task]
                source = searcher.user_attr(trial_id, WARM_START_ATTR) if isinstance(
                    searcher, PruneAwareOptunaSearch) else None
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
        return {t: s._ot_study for t, s in self.searchers.items() if isinstance(s, OptunaSearch)}  # type: ignore[misc]

    def save(self, checkpoint_path: str) -> None:
        # the journal first: a saved searcher state must never name trials the journal lacks
        for storage in {id(st._storage): st._storage for st in self.studies().values()}.values():
            if isinstance(storage, WorkingCopyJournalStorage):
                storage.sync()
        super().save(checkpoint_path)


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
    # one storage for all tasks: the journal's trial ids count every study's trials in file order,
    # and a working copy only stays in that order if every write goes through it
    storage = WorkingCopyJournalStorage(journal) if journal else None
    searchers = {t: make_task_searcher(spec, t, storage) for t in tasks}
    warm = WarmStart(spec, tasks) if spec.search.warm_start != "none" else None
    return MultiTaskSearcher(
        searchers, dict.fromkeys(tasks, spec.search.trials_per_task), spec.search.max_concurrent,
        warm_start=warm,
    )
