"""vptsearch_* Ray metrics: per task and phase, trials running/completed/pruned/diverged/failed and
the best validation accuracy, from the driver's Tune callback to Ray's Prometheus export."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from types import SimpleNamespace

import pytest

from vptsearch.search._metrics import NAMES, MetricsCallback
from vptsearch.spec import spec_from_dict

from .conftest import TASKS


def _trial(status: str, task: str, **last) -> SimpleNamespace:
    return SimpleNamespace(status=status, config={"task": task}, last_result=last or None)


def test_counts_and_best_accuracy_follow_tune_events() -> None:
    a, b = TASKS
    cb = MetricsCallback("search", max_epochs=3, tasks=TASKS)
    assert cb.values[("completed", a, "search")] == 0 and cb.values[("running", b, "search")] == 0
    trials = [
        _trial("RUNNING", a, epoch=1, val_acc=0.2),
        _trial("TERMINATED", a, epoch=3, val_acc=0.6),  # completed
        _trial("TERMINATED", a, epoch=3, val_acc=0.4),  # completed, lower
        _trial("TERMINATED", a, epoch=1, val_acc=0.9),  # pruned: not a candidate for best
        _trial("TERMINATED", b, epoch=2, diverged=1, val_acc=0.0),
        _trial("ERROR", b),
        _trial("PENDING", b),
    ]
    cb.on_trial_start(0, trials, trials[0])
    v = cb.values
    assert [v[(k, a, "search")] for k in ("running", "completed", "pruned")] == [1, 2, 1]
    assert v[("best_val_acc", a, "search")] == 0.6
    assert [v[(k, b, "search")] for k in ("running", "diverged", "failed")] == [0, 1, 1]
    assert ("best_val_acc", b, "search") not in v

    # Tune calls on_trial_complete while the trial still reads RUNNING: it counts as ended.
    trials[0].last_result = {"epoch": 3, "val_acc": 0.7}
    cb.on_trial_complete(1, trials, trials[0])
    assert (v[("running", a, "search")], v[("completed", a, "search")]) == (0, 3)
    assert v[("best_val_acc", a, "search")] == 0.7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int, name: str, task: str, phase: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    for line in text.splitlines():
        if line.startswith(f"ray_{name}{{") and f'task="{task}"' in line and f'phase="{phase}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
def test_launch_exports_correct_metrics(base_raw, monkeypatch) -> None:
    """After a small launch the callback's values equal the launch's own counts and best val
    accuracy; Ray's Prometheus endpoint (metrics export port) serves the same numbers."""
    import ray

    from vptsearch.search import _metrics, launch

    made: list[MetricsCallback] = []

    class Recording(MetricsCallback):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(_metrics, "MetricsCallback", Recording)
    raw = {**base_raw, "search": {**base_raw["search"], "trials_per_task": 3},
           "training": {"epochs": 2, "warmup_epochs": 1, "batch_size": 64},
           "protocol": {"final_seeds": [0]}}  # fmt: skip
    port = _free_port()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port=port, log_to_driver=False)
    try:
        summary = launch(spec_from_dict(raw), dashboard=False, say=lambda *_: None)
        results = json.loads((summary.run_dir / "results.json").read_text())
        search, final = made
        expected: dict[tuple[str, str, str], float] = {}
        for task in TASKS:
            counts = results["tasks"][task]["counts"]
            for k in ("completed", "pruned", "diverged", "failed"):
                expected[(k, task, "search")] = counts.get(k, 0)
            expected[("running", task, "search")] = 0
            best = results["tasks"][task]["best"]
            if best is not None:
                expected[("best_val_acc", task, "search")] = best["val_acc"]
            assert final.values[("completed", task, "final")] == 1
        assert {k: search.values[k] for k in expected} == pytest.approx(expected)
        assert sum(search.values[(k, t, "search")] for t in TASKS
                   for k in ("completed", "pruned", "diverged", "failed")) == 6  # fmt: skip

        # Ray's metrics agent exports them (prefixed ray_) on the export port, every few seconds
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read()
        except OSError:
            pytest.skip(f"Ray's metrics export port {port} is not serving here")
        want = {k: v for k, v in expected.items() if k[0] in ("completed", "best_val_acc")}
        got: dict = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = {k: _scrape(port, NAMES[k[0]], k[1], k[2]) for k in want}
            if got == pytest.approx(want):
                break
            time.sleep(2)
        assert got == pytest.approx(want)
        assert re.fullmatch(r"vptsearch_[a-z_]+", NAMES["best_val_acc"])
    finally:
        ray.shutdown()
