"""The point a task's search tries when TPE keeps re-proposing configurations it already trained.

On a finite space TPE's proposals concentrate on the good region it models; once that region is
trained, most asks return a known point. Each such ask is told its known value at once (so the
model counts it) and is a whole TPE ask of driver time, and the study grows by one trial per ask:
measured over 1 000 trials of a 216-point space, 3.2 asks per trial were duplicates and the
searcher's driver time per trial grew with them. After a few duplicates in a row the searcher
takes the point chosen here instead, enqueued into the study, so the asked trial is an ordinary one.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

ATTR = "vptsearch.proposed"  # Optuna user attribute of the trials chosen here: "untried"


def params_key(params: dict[str, Any]) -> tuple[Any, ...]:
    """A configuration's identity: its Optuna params, in name order."""
    return tuple(sorted(params.items()))


def completed_values(study: optuna.Study) -> dict[tuple[Any, ...], float]:
    """The value of every configuration ``study`` completed, by :func:`params_key`."""
    return {
        params_key(t.params): float(t.value)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    }


def live_keys(trials: Mapping[str, optuna.Trial], done: set[str], excluding: str) -> set[tuple[Any, ...]]:
    """The configurations of a searcher's trials still training (``trials`` minus ``done``),
    other than ``excluding``'s."""
    return {params_key(t.params) for tid, t in trials.items() if tid != excluding and tid not in done}


def pick_untried(study: optuna.Study, points: Sequence[dict[str, Any]], seed: int) -> dict[str, Any] | None:
    """A point of the space that is neither completed nor running in ``study``; None when none is.

    Points never tried come first, then those tried least often (pruned or failed before: ASHA's
    rung on another day may keep them). The choice among equals is a seeded draw that depends
    only on the study (``seed`` and its trial count), so a resumed launch draws as the first one.
    """
    trials = study.get_trials(deepcopy=False)
    busy = {params_key(t.params) for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)}
    tries = Counter(params_key(t.params) for t in trials if t.state.is_finished())
    free = [(tries[key], p) for p in points if (key := params_key(p)) not in busy]
    if not free:
        return None
    fewest = min(n for n, _ in free)
    least = [p for n, p in free if n == fewest]
    return dict(random.Random(f"{seed}/{len(trials)}").choice(least))
