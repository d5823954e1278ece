"""The statistics behind every claim of the reproduction: a two-level percentile bootstrap of paired
differences and the verdict rule (both fixed before any result was seen; see ``_repro_report``)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

# The bootstrap behind every claim (fixed before any result was seen).
RESAMPLES = 10_000
BOOT_SEED = 0
LEVEL = 0.95


def bootstrap_ci(units: Sequence[Sequence[float]], *, resamples: int = RESAMPLES, seed: int = BOOT_SEED,
                 level: float = LEVEL) -> dict[str, float] | None:
    """Two-level percentile bootstrap of the mean of paired differences.

    ``units``: one list of differences per unit (a task, or a task × backbone), one value per final
    seed (or per row, for the ensembling claim). Each resample draws the units with replacement and
    then, inside every drawn unit, its values with replacement; the statistic is the mean over the
    drawn units of their drawn values' mean. Tasks are the main source of spread here, so resampling
    them (not only the seeds) keeps the interval honest about which tasks happened to be in the suite.
    With one value per unit it is the ordinary percentile bootstrap over units. Returns ``mean`` (the
    mean of the unit means), ``lo``, ``hi``, ``units`` and ``cells``; None without any value.
    """
    arrays = [np.asarray(u, dtype=float) for u in units if len(u)]
    if not arrays:
        return None
    n_units, kmax = len(arrays), max(len(a) for a in arrays)
    values = np.zeros((n_units, kmax))
    counts = np.array([len(a) for a in arrays])
    for i, a in enumerate(arrays):
        values[i, : len(a)] = a
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, n_units, size=(resamples, n_units))  # units, with replacement
    k = counts[pick]
    # inside each drawn unit: k of its values with replacement (positions >= k are masked out)
    idx = (rng.random((resamples, n_units, kmax)) * k[..., None]).astype(np.int64)
    drawn = values[pick[..., None], idx]
    valid = np.arange(kmax) < k[..., None]
    stats = (np.where(valid, drawn, 0.0).sum(-1) / k).mean(-1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    mean = statistics.fmean(float(a.mean()) for a in arrays)
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "units": n_units, "cells": int(counts.sum())}


def verdict(ci: dict[str, float] | None) -> str:
    """TRUE: the interval is above 0; FALSE: below 0; UNDECIDED: it contains 0; n/a: no data."""
    if ci is None:
        return "n/a"
    if ci["lo"] > 0:
        return "TRUE"
    if ci["hi"] < 0:
        return "FALSE"
    return "UNDECIDED"


def seed_accs(cell: dict[str, Any] | None) -> dict[str, float]:
    """Per final seed test accuracy of one (variant, task) cell."""
    return {str(k): float(v) for k, v in ((cell or {}).get("seeds") or {}).items() if v is not None}


def paired(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[float]:
    """a − b per final seed present in both cells (seed s of a pairs with seed s of b)."""
    sa, sb = seed_accs(a), seed_accs(b)
    return [sa[s] - sb[s] for s in sorted(set(sa) & set(sb), key=int)]
