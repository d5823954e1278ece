"""Noise-aware scoring of a replayed search against a seed-averaged ground-truth grid (pure functions).

A configuration's *true quality* is its final val accuracy averaged over the grid's seeds. A search
sees one seed per visit (resampled), selects by what it saw, and is scored by the true quality of
what it selected:

- ``regret`` = best true quality of the task's grid - true quality of the selected configuration;
- ``found`` = regret <= one standard error of the seed-averaged estimate (pooled over the task's
  configurations: ``sqrt(mean within-config variance / n_seeds)``), so "found" means "not
  distinguishable from the best with this many seeds", never "matched the luckiest seed".
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

Event = tuple[str, str, str, str, dict[str, Any]]  # (kind, task, trial id, config key, result)


def task_truth(curves: dict[str, list[list[float]]], completed: dict[str, list[bool]]) -> dict[str, Any]:
    """Per config key: true quality; the task's best, its standard error and the grid's epoch cost.

    ``curves[key]``: one val curve per seed; ``completed[key]``: whether each seed ran to the end.
    A seed that diverged counts with the last accuracy it reached (what its run left behind).
    """
    quality = {k: statistics.fmean(c[-1] for c in cs) for k, cs in curves.items()}
    variances = [statistics.variance([c[-1] for c in cs]) for k, cs in curves.items()
                 if len(cs) > 1 and all(completed[k])]
    n_seeds = min(len(cs) for cs in curves.values())
    se = math.sqrt(statistics.fmean(variances) / n_seeds) if variances else 0.0
    best_key = max(quality, key=lambda k: quality[k])
    return {
        "quality": quality,
        "best_key": best_key,
        "best_quality": quality[best_key],
        "standard_error": se,
        "seeds": n_seeds,
        # one grid search = every configuration trained once (one seed)
        "grid_trial_epochs": sum(len(cs[0]) for cs in curves.values()),
        "configs_found": sum(quality[best_key] - q <= se + 1e-12 for q in quality.values()),
    }


def rung_correlations(curves: dict[str, list[list[float]]], epochs: int) -> dict[int, float | None]:
    """Spearman rank correlation, over configurations, of seed-averaged val at epoch e vs final val.

    Read it to choose ASHA's grace period: a rung whose accuracy barely ranks the final one prunes
    winners. Configurations whose seeds did not all reach epoch e are left out at that epoch.
    """
    final = {k: statistics.fmean(c[-1] for c in cs) for k, cs in curves.items()}
    out: dict[int, float | None] = {}
    for e in range(1, epochs + 1):
        keys = [k for k, cs in curves.items() if all(len(c) >= e for c in cs)]
        at = [statistics.fmean(c[e - 1] for c in curves[k]) for k in keys]
        out[e] = spearman(at, [final[k] for k in keys]) if len(keys) > 2 else None
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho with average ranks for ties (None when either side is constant)."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for m in range(i, j + 1):
                r[order[m]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return None
    return round(statistics.correlation(rx, ry), 4)


def trace(events: list[Event], task: str, max_epochs: int, status_of: Any) -> dict[str, Any]:
    """Per task: (trial-epochs spent, selected config key) after every finished trial, and totals.

    The protocol selects the completed (full-budget) trial with the best *observed* final val
    accuracy, as a launch does; ``status_of(result, max_epochs)`` is the launch's trial status.
    """
    spent, best, selected = 0, -1.0, None
    points: list[tuple[int, str | None]] = []
    statuses: dict[str, int] = defaultdict(int)
    for kind, t, _tid, key, result in events:
        if t != task:
            continue
        if kind == "result":
            spent += 1
            continue
        status = status_of(result, max_epochs)
        statuses[status] += 1
        if status == "completed" and float(result["val_acc"]) > best:
            best, selected = float(result["val_acc"]), key
        points.append((spent, selected))
    return {"points": points, "epochs": spent, "selected": selected, "statuses": dict(statuses)}


def regret_curve(
    points: list[tuple[int, str | None]], truth: dict[str, Any]
) -> list[tuple[int, float | None]]:
    """(trial-epochs spent, regret of the selection) after every finished trial; None before any."""
    q, top = truth["quality"], truth["best_quality"]
    return [(spent, None if key is None else round(top - q[key], 6)) for spent, key in points]


def epochs_to_found(regrets: list[tuple[int, float | None]], standard_error: float) -> int | None:
    """Trial-epochs spent when the selection's regret first drops to one standard error (None: never)."""
    for spent, r in regrets:
        if r is not None and r <= standard_error + 1e-9:
            return spent
    return None


def regret_at(regrets: list[tuple[int, float | None]], epochs: float) -> float | None:
    """Regret of the selection after ``epochs`` trial-epochs (None: nothing selected yet)."""
    out = None
    for spent, r in regrets:
        if spent > epochs:
            break
        out = r
    return out


def spread(values: list[float | None]) -> dict[str, Any]:
    """Median/min/max where None (never reached) sorts as +inf."""
    if not values:
        return {"median": None, "min": None, "max": None}
    key = [v if v is not None else math.inf for v in values]

    def clean(v: float) -> float | None:
        return None if v == math.inf else round(v, 4)

    return {"median": clean(statistics.median_low(key)), "min": clean(min(key)), "max": clean(max(key))}
