"""The search engine: Ray Tune + Optuna (TPE, PRUNED-aware) + per-task ASHA, the two-stage protocol,
MLflow tracking and exported bundles. ``launch`` runs a whole search space; see docs/search.md.

Names are imported lazily so that the CLI (which imports ``vptsearch.search._cli``) starts without
importing torch, Ray or MLflow.
"""

from __future__ import annotations

from vptsearch._lazy import lazy_getattr

_LAZY = {
    "launch": "vptsearch.search._driver",
    "LaunchSummary": "vptsearch.search._results",
    "LaunchInterrupted": "vptsearch.search._phases",
    "export_bundles": "vptsearch.search._export",
    "latest_run_dir": "vptsearch.search._rundir",
    "load_bundle": "vptsearch.search._bundle",
    "read_bundle": "vptsearch.search._bundle",
    "predict": "vptsearch.search._bundle",
    "evaluate_bundle": "vptsearch.search._bundle",
    "load_studies": "vptsearch.search._searcher",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return __all__
