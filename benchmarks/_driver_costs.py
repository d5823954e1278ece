"""The Tune driver's CPU cost per event, and what it projects for a GPU node (bench_gpu_sim).

:func:`driver_events` wraps the controller's handlers of a trial's results and of a trial's life
(start, actor reuse, stop) with the main thread's CPU clock, *exclusive* of nested handlers (a result
that makes ASHA stop a trial is a result, its stop a trial event), and counts the calls. Tune's
controller loop runs on the driver's main thread, so that thread's CPU time over the run is the
driver's whole cost: results x per-result + trials x per-trial + ``other`` (the experiment
snapshots and the loop's own polling; the projection charges it to the results).

:func:`projection` turns those costs, the trials' own per-epoch overhead and the simulated GPU
epoch into the platform efficiency of one node with ``slots`` trials at once, each slot with a
core of its own (nothing shared with the driver), as a formula printed with its inputs.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

# the controller's handlers (ray 2.60 TuneController): one call per result / per trial event
PER_RESULT = ("_on_training_result", "_on_saving_result")
PER_TRIAL = (
    "_update_trial_queue", "_maybe_add_actors", "_schedule_trial_actor", "_maybe_reuse_cached_actor",
    "_actor_started", "_on_trial_reset", "_schedule_trial_stop", "_maybe_cache_trial_actor",
    "_actor_stopped",
)  # fmt: skip
SNAPSHOT = ("save_to_dir",)


@contextlib.contextmanager
def driver_events(out: dict[str, Any]) -> Iterator[None]:
    """Fill ``out`` with ``cpu_s[bucket]`` (exclusive main-thread CPU seconds), ``calls[method]``
    and ``main_thread_cpu_s`` (the whole run) while the block runs."""
    from ray.tune.execution.tune_controller import TuneController

    cpu: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    stack: list[float] = []  # per open call: CPU time spent in nested wrapped calls
    saved = []

    def wrap(fn: Any, bucket: str, name: str) -> Any:
        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            calls[name] += 1
            t = time.thread_time()
            stack.append(0.0)
            try:
                return fn(*a, **kw)
            finally:
                spent = time.thread_time() - t
                nested = stack.pop()
                cpu[bucket] += spent - nested
                if stack:
                    stack[-1] += spent

        return timed

    for bucket, names in (("per_result", PER_RESULT), ("per_trial", PER_TRIAL), ("snapshot", SNAPSHOT)):
        for name in names:
            fn = getattr(TuneController, name, None)
            if fn is None:  # another ray version: that handler is not counted
                continue
            saved.append((name, TuneController.__dict__.get(name)))
            setattr(TuneController, name, wrap(fn, bucket, name))
    t0 = time.thread_time()
    try:
        yield
    finally:
        out["main_thread_cpu_s"] = time.thread_time() - t0
        for name, orig in reversed(saved):
            if orig is None:
                delattr(TuneController, name)
            else:
                setattr(TuneController, name, orig)
        out["cpu_s"] = {k: round(v, 3) for k, v in cpu.items()}
        out["calls"] = dict(calls)


def per_event(events: dict[str, Any], trials: int) -> dict[str, Any]:
    """Driver CPU ms per result and per trial from :func:`driver_events`' figures."""
    cpu, calls = events.get("cpu_s", {}), events.get("calls", {})
    results = calls.get("_on_training_result", 0)
    # the loop's own polling and bookkeeping between handlers, and its experiment snapshots
    handled = cpu.get("per_result", 0.0) + cpu.get("per_trial", 0.0)
    other = max(0.0, events.get("main_thread_cpu_s", 0.0) - handled)
    return {
        "results": results,
        "results_per_trial": round(results / max(1, trials), 2),
        "ms_per_result": round(1e3 * cpu.get("per_result", 0.0) / max(1, results), 3),
        "ms_per_trial": round(1e3 * cpu.get("per_trial", 0.0) / max(1, trials), 3),
        "snapshot_cpu_s": round(cpu.get("snapshot", 0.0), 3),
        # polling, bookkeeping and snapshots, charged to results in the projection (the loop runs per event)
        "other_ms_per_result": round(1e3 * other / max(1, results), 3),
        "main_thread_cpu_s": round(events.get("main_thread_cpu_s", 0.0), 3),
    }


def projection(costs: dict[str, Any], *, slots: int, epochs_per_trial: float, gpu_s_per_epoch: float,
               worker_s_per_epoch: float, worker_s_per_trial: float) -> dict[str, Any]:  # fmt: skip
    """Efficiency of one node with ``slots`` trials at once and a core per slot.

    A slot's trial takes T = E (g + w) + f + n (r + o) + t: E epochs of g GPU seconds, w seconds of
    the trial's own host work per epoch, f its fixed host work, and n results, each waiting for the
    driver's r (+ o of its loop) CPU seconds, plus t of the driver's per-trial handling while the
    slot is idle between trials. The driver, one thread, is busy rho = slots (n (r + o) + t) / T of
    the time; past 1 every slot waits for it. efficiency = E g / T / max(1, rho).
    """
    e, g, w, f = epochs_per_trial, gpu_s_per_epoch, worker_s_per_epoch, worker_s_per_trial
    n = costs["results_per_trial"]
    r, o, t = costs["ms_per_result"] / 1e3, costs["other_ms_per_result"] / 1e3, costs["ms_per_trial"] / 1e3
    trial_s = e * (g + w) + f + n * (r + o) + t
    rho = slots * (n * (r + o) + t) / trial_s
    eff = e * g / trial_s / max(1.0, rho)
    return {
        "formula": "efficiency = E*g / T / max(1, rho); T = E*(g + w) + f + n*(r + o) + t; "
        "rho = slots*(n*(r + o) + t) / T",
        "inputs": {
            "slots": slots,
            "E_epochs_per_trial": round(e, 2),
            "g_gpu_s_per_epoch": round(g, 4),
            "w_worker_s_per_epoch": round(w, 5),
            "f_worker_s_per_trial": round(f, 4),
            "n_results_per_trial": n,
            "r_driver_s_per_result": r,
            "o_driver_loop_s_per_result": o,
            "t_driver_s_per_trial": t,
        },
        "T_trial_s": round(trial_s, 3),
        "rho_driver_busy": round(rho, 4),
        "efficiency": round(eff, 4),
    }
