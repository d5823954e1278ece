"""Cross-task warm start: seed a task's Optuna study with configurations that did well elsewhere.

A VTAB-1k launch searches many related tasks side by side; a configuration that ranks well on the
others is a strong first guess (not a replacement for the search). ``search.warm_start``:

- ``launch``: while task T searches, the best *completed* (full-budget, so never ASHA-pruned)
  configurations of the launch's other tasks are enqueued into T's study as they appear;
- a run dir of an earlier launch: the best completed configurations of its studies (T's own study
  first, then the other tasks'), enqueued before T's first trial.

At most ``search.warm_start_top_k`` enqueued trials per task; each is an ordinary trial of T's
budget, trained and scored on T's own train/val split (no test split is read), and marked with the
Optuna user attribute ``vptsearch.warm_start`` = the task it came from. Enqueueing goes through
Optuna's ``enqueue_trial(..., skip_if_exists=True)`` into the task's journal study, so a resumed
launch (searcher state restored by Tune, study by its journal) never enqueues one twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from vptsearch._errors import ConfigError
from vptsearch.search._journal import load_studies
from vptsearch.spec import Param, SearchSpec, same_value, warm_start_journal

ATTR = "vptsearch.warm_start"
Candidates = dict[str, list[dict[str, Any]]]  # source task -> params, best first


def best_params(study: optuna.Study, top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` completed trials' params of ``study``, best (highest val accuracy) first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    done.sort(key=lambda t: (-float(t.value), t.number))  # type: ignore[arg-type]
    return [dict(t.params) for t in done[:top_k]]


class WarmStart:
    """Chooses and enqueues warm-start configurations for the studies of one launch."""

    def __init__(self, spec: SearchSpec, tasks: list[str]) -> None:
        self.top_k = spec.search.warm_start_top_k
        self.mode = spec.search.warm_start
        self.space: dict[str, Param] = {p.name: p for p in spec.params.values() if not p.fixed}
        if not spec.method.fixed:
            self.space[spec.method.name] = spec.method
        self.enqueued: dict[str, int] = dict.fromkeys(tasks, 0)
        # plain data (picklable with the searcher's state); None: read the launch's live studies
        self.earlier: Candidates | None = None if self.mode == "launch" else self._load_earlier()

    def _load_earlier(self) -> Candidates:
        journal = warm_start_journal(self.mode)
        if journal is None:
            raise ConfigError(f"search.warm_start: no optuna.journal in {self.mode!r}")
        return {task: best_params(study, self.top_k) for task, study in load_studies(journal).items()}

    def fits(self, params: Mapping[str, Any]) -> bool:
        """Whether every parameter is one this launch searches and its value is in range."""
        return bool(params) and all(k in self.space and self.space[k].contains(v) for k, v in params.items())

    def candidates(self, task: str, studies: Mapping[str, optuna.Study]) -> list[tuple[str, dict[str, Any]]]:
        """(source task, params) in the order they would be tried: rank by rank, task by task."""
        if self.earlier is None:
            pool = {t: best_params(s, self.top_k) for t, s in studies.items() if t != task}
        else:  # the same task's earlier study first: its best is the strongest prior
            pool = dict(sorted(self.earlier.items(), key=lambda kv: kv[0] != task))
        out = []
        for rank in range(self.top_k):
            for source, ranked in pool.items():
                if rank < len(ranked) and self.fits(ranked[rank]):
                    out.append((source, ranked[rank]))
        return out

    def maybe_enqueue(self, task: str, studies: Mapping[str, optuna.Study]) -> bool:
        """Enqueue the next untried candidate into ``task``'s study; False when none (or quota used)."""
        if self.enqueued.get(task, 0) >= self.top_k or task not in studies:
            return False
        study = studies[task]
        tried = [dict(t.params) for t in study.get_trials(deepcopy=False)]
        for source, params in self.candidates(task, studies):
            if any(_same(params, p) for p in tried):
                continue
            study.enqueue_trial(params, user_attrs={ATTR: source}, skip_if_exists=True)
            self.enqueued[task] = self.enqueued.get(task, 0) + 1
            return True
        return False


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
