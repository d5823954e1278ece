"""Per-trial overhead of the search platform: no-op trials through vptsearch's driver path vs bare calls.

    python benchmarks/bench_platform_overhead.py              # 1000 trials (2 tasks x 500)
    python benchmarks/bench_platform_overhead.py --smoke      # 20 trials, for CI: same JSON shape
    python benchmarks/bench_platform_overhead.py --checkpoint # also a tiny Tune checkpoint per epoch

The platform side runs the *same* code a launch runs for its search phase: ``_phases.run_tuner``
(one ``tune.Tuner``, the same TuneConfig/RunConfig: reuse_actors, FailureConfig, CheckpointConfig,
verbose=0) with the library's ``build_searcher`` (MultiTaskSearcher over one seeded TPE
PruneAwareOptunaSearch per task, Optuna journal file), ``build_scheduler`` (per-task ASHA), a
``TrackingCallback`` writing nested trial runs to a real sqlite MLflow store through the launch's
durable spool and background writer (experiment, launch and task runs created by ``Tracker`` as
``launch`` does; the writer is drained before the clock stops, so its work is counted) and the
``ProgressCallback`` (its lines go to stderr). Only the trainable differs: ``noop_trainable``
reports ``--epochs`` epochs of a synthetic ``val_acc`` instantly (ASHA prunes some trials, as in
a real search). It is swapped in for ``_trainable.make_trainable`` while the Tuner runs. The
baseline is the same function called ``trials`` times in a loop with a no-op reporter. Right
after, on the same Ray cluster, stock Ray Tune runs the same number of the same no-op trials
(``tune_floor_run``: Tune's random search and ASHA, no loggers, no vptsearch code): a lower bound
of what Tune alone costs per trial on this machine, so the JSON also says how much of the
overhead vptsearch adds on top. Then stock Tune runs the same search by hand (``tune_floor_tpe_run``:
Tune's OptunaSearch with TPE and ASHA, a Tuner per task), and ``ratio_to_stock_tune`` compares the
platform with both.

Prints one JSON object: wall seconds of both sides, overhead per trial in ms (target <= 20 ms on
2 cores), meets_target, trial statuses, and where the driver's time went (ms per trial spent in the
searcher, the scheduler, the MLflow callback, the progress callback and Tune's experiment
snapshots, Tune's own file loggers and its trainable look-ups in Ray's registry; the rest is Tune's
controller loop, actor and placement-group calls and result processing), plus the time an
MLflow writer *thread* spent applying writes in the background (overlapping the rest, so not part of
the sum; 0 with the launch's default writer, a process of its own whose work is outside this
process) and the drain at the end. Timing is never asserted (tests run --smoke and check the fields
only).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any
from unittest import mock

TARGET_MS_PER_TRIAL = 20.0
STOCK_RATIO_TARGET = 1.1  # issue 29: the platform's cost per trial against stock Tune's same search
TASKS = ("mini/digits", "mini/textures")


# --- the no-op trainable ---------------------------------------------------------------------------
def noop_trainable(
    config: dict[str, Any], epochs: int = 4, checkpoint: bool = False, report: Any = None
) -> None:
    """Report ``epochs`` epochs of a synthetic, config-determined ``val_acc`` at once.

    Defined at module level of this script: Ray pickles it by value (cloudpickle) because workers
    cannot import the script, so it only uses what it imports itself.
    """
    if report is None:
        from ray import tune

        report = tune.report
    key = ",".join(f"{k}={config[k]}" for k in sorted(config) if k not in ("task", "phase", "seed"))
    quality = (zlib.crc32(key.encode()) % 1000) / 1000.0  # stable in [0, 1) per configuration
    for epoch in range(1, epochs + 1):
        metrics = {
            "epoch": epoch,
            "val_acc": quality * epoch / epochs,
            "train_loss": 1.0 - 0.5 * quality * epoch / epochs,
        }
        if checkpoint:  # what TuneReporter does with the trained state, with 4 bytes instead
            from ray import tune

            with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
                Path(tmp, "state.pt").write_bytes(b"\0" * 4)
                report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            report(metrics)


def _noop_report(metrics: dict[str, Any], checkpoint: Any = None) -> None:
    pass


# --- timing of the driver-side components ---------------------------------------------------------
@contextlib.contextmanager
def _timed_methods(targets: dict[str, list[tuple[type, str]]], totals: dict[str, float]):
    """Wrap class methods with timers (class-level, so pickled instances are unaffected)."""
    saved: list[tuple[type, str, Any]] = []

    def wrap(fn: Any, bucket: str) -> Any:
        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                totals[bucket] += time.perf_counter() - t

        return timed

    try:
        for bucket, methods in targets.items():
            for cls, name in methods:
                if name not in cls.__dict__ and not hasattr(cls, name):
                    continue
                saved.append((cls, name, cls.__dict__.get(name)))
                setattr(cls, name, wrap(getattr(cls, name), bucket))
        yield
    finally:
        for cls, name, orig in reversed(saved):
            if orig is None:
                delattr(cls, name)
            else:
                setattr(cls, name, orig)


@contextlib.contextmanager
def swapped_make_trainable(make: Any):
    """``_trainable.make_trainable`` -> ``make`` (same signature: ``(spec, backbone=None,
    splits=None)``) while the block runs: the launch path stays real, only the trainable it builds
    is a stand-in."""
    from vptsearch.search import _trainable

    orig = _trainable.make_trainable
    _trainable.make_trainable = make
    try:
        yield
    finally:
        _trainable.make_trainable = orig


def _swapped_trainable(epochs: int, checkpoint: bool) -> Any:
    """``_trainable.make_trainable`` -> the no-op trainable, bound and resourced like the real one."""
    from ray import tune

    def make(spec: Any, backbone: Any = None, splits: Any = None) -> Any:  # make_trainable: no model here
        bound = tune.with_parameters(noop_trainable, epochs=epochs, checkpoint=checkpoint)
        return tune.with_resources(bound, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})

    return swapped_make_trainable(make)


def _spec(trials: int, tasks: int, epochs: int, root: Path) -> Any:
    from vptsearch.spec import spec_from_dict

    return spec_from_dict(
        {
            "name": "bench_overhead",
            "suite": list(TASKS[:tasks]),
            "run_dir": str(root / "runs"),
            "method": "vpt",
            "params": {  # the mini_deep space
                "prompt.depth": "deep",
                "prompt.length": {"choice": [1, 5, 10, 20]},
                "prompt.init": {"choice": ["random", "spt-mean", "spt-kmeans"]},
                "optim.base_lr": {"choice": [10, 5, 2.5, 1, 0.5, 0.25]},
                "optim.weight_decay": {"choice": [0.001, 0.0001, 0.0]},
            },
            "search": {
                "algorithm": "tpe",
                "trials_per_task": trials // tasks,
                "max_concurrent": 2,
                "seed": 0,
                "n_startup_trials": 4,
            },
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "training": {"epochs": epochs, "warmup_epochs": 0},
            "resources": {"cpu": 1, "gpu": 0},
            "tracking": {
                "uri": f"sqlite:///{root / 'mlflow.db'}",
                "experiment": "bench_overhead",
                "artifact_location": str(root / "mlartifacts"),
            },
        }
    )


# --- the two sides ---------------------------------------------------------------------------------
def bare_calls(trials: int, epochs: int, tasks: int) -> float:
    configs = [
        {
            "task": TASKS[i % tasks],
            "phase": "search",
            "seed": 0,
            "prompt.length": i % 20,
            "optim.base_lr": 1.0,
        }
        for i in range(trials)
    ]
    t0 = time.perf_counter()
    for cfg in configs:
        noop_trainable(cfg, epochs=epochs, report=_noop_report)
    return time.perf_counter() - t0


def _stock_tuner(name: str, samples: int, epochs: int, checkpoint: bool, root: Path, **extra: Any) -> Any:
    """A plain ``tune.Tuner`` of the no-op trainable over the platform's choices: Tune's own
    ``ASHAScheduler`` (grace 1, factor 2), two trials at a time, actors reused, no callbacks;
    ``extra`` goes to the TuneConfig (a ``search_alg``) or, as ``task``, into the space."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    space = {
        "prompt.length": tune.choice([1, 5, 10, 20]),
        "prompt.init": tune.choice(["random", "spt-mean", "spt-kmeans"]),
        "optim.base_lr": tune.choice([10, 5, 2.5, 1, 0.5, 0.25]),
        "optim.weight_decay": tune.choice([0.001, 0.0001, 0.0]),
    }
    if "task" in extra:
        space["task"] = extra.pop("task")
    bound = tune.with_parameters(noop_trainable, epochs=epochs, checkpoint=checkpoint)
    return tune.Tuner(
        tune.with_resources(bound, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_acc",
            mode="max",
            num_samples=samples,
            max_concurrent_trials=2,
            reuse_actors=True,
            scheduler=ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1, reduction_factor=2),
            **extra,
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(root / "tune_floor"), verbose=0),
    )


def _fit_lean(tuner: Any) -> tuple[Any, float]:
    """``tuner.fit()`` without Tune's own file loggers (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``, read
    when fit() builds its callbacks; restored afterwards): its results and wall seconds."""
    with (
        mock.patch.dict(os.environ, {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}),
        contextlib.redirect_stdout(sys.stderr),
    ):
        t0 = time.perf_counter()
        results = tuner.fit()
        return results, time.perf_counter() - t0


def tune_floor_run(trials: int, epochs: int, checkpoint: bool, root: Path) -> dict[str, Any]:
    """Stock Ray Tune on the same cluster, the same no-op trainable and the same trial count
    (:func:`_stock_tuner`) with Tune's own random search: Tune at its leanest.

    A lower bound of what Tune itself costs per trial on this machine: the part of the platform's
    overhead that vptsearch's code could not remove however cheap its searcher, scheduler and
    tracking were.
    """
    results, wall = _fit_lean(_stock_tuner("tune_floor", trials, epochs, checkpoint, root))
    return {
        "trials": len(results),
        "wall_s": wall,
        "reports": _reports(results),
        "errored": results.num_errors,
    }


def tune_floor_tpe_run(trials: int, tasks: int, epochs: int, checkpoint: bool, root: Path) -> dict[str, Any]:
    """Stock Ray Tune doing the platform's search by hand: per task one :func:`_stock_tuner` of
    ``trials // tasks`` trials with Tune's own ``OptunaSearch`` (Optuna's TPE, seed 0, 4 start-up
    trials, as the platform's space).

    Where :func:`tune_floor_run` is Tune at its leanest (random search costs nothing to ask), this
    is stock Tune running the *same* search: the floor that vptsearch's own code (per-task
    searchers and schedulers in one experiment, MLflow, progress lines, the Optuna journal) is
    compared against.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wall, reports, errored, done = 0.0, 0, 0, 0
    for i in range(tasks):
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=4)
        searcher = OptunaSearch(metric="val_acc", mode="max", sampler=sampler)
        tuner = _stock_tuner(
            f"tune_floor_tpe_{i}",
            trials // tasks,
            epochs,
            checkpoint,
            root,
            search_alg=searcher,
            task=TASKS[i],
        )
        results, seconds = _fit_lean(tuner)
        wall += seconds
        reports += _reports(results)
        errored += results.num_errors
        done += len(results)
    return {"trials": done, "wall_s": wall, "reports": reports, "errored": errored}


def _reports(results: Any) -> int:
    """Reports the trials of a Tune ResultGrid made: one per epoch, the last one's ``epoch``."""
    return sum(int((r.metrics or {}).get("epoch", 0)) for r in results)


def platform_run(trials: int, epochs: int, tasks: int, checkpoint: bool, cpus: int) -> dict[str, Any]:
    import ray
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.registry import _Registry

    from vptsearch.search import _phases
    from vptsearch.search._scheduler import PerTaskScheduler, build_scheduler
    from vptsearch.search._searcher import MultiTaskSearcher, build_searcher, load_studies, trial_status
    from vptsearch.search._spool import Applier
    from vptsearch.search._tracking import (
        ProgressCallback,
        Tracker,
        TrackingCallback,
        artifact_location,
        check_tracking_uri,
    )

    totals: dict[str, float] = defaultdict(float)
    targets = {
        "searcher": [
            (MultiTaskSearcher, m) for m in ("suggest", "on_trial_result", "on_trial_complete", "save")
        ],
        "scheduler": [
            (PerTaskScheduler, m)
            for m in ("on_trial_add", "on_trial_result", "on_trial_complete", "choose_trial_to_run", "save")
        ],
        "mlflow_callback": [
            (TrackingCallback, m)
            for m in ("on_trial_start", "on_trial_result", "on_trial_complete", "on_experiment_end")
        ],
        "progress_callback": [(ProgressCallback, "on_trial_complete")],
        "experiment_snapshot": [(TuneController, "save_to_dir")],
        # Tune's own per-trial file loggers (result.json, progress.csv; TensorBoard if present)
        "tune_loggers": [
            (cls, m)
            for cls in (JsonLoggerCallback, CSVLoggerCallback, TBXLoggerCallback)
            for m in ("on_trial_start", "on_trial_result", "on_trial_complete")
        ],
        # Tune's look-ups of the trainable in Ray's GCS registry (the ones the driver's cache misses)
        "trainable_registry": [(_Registry, "get"), (_Registry, "contains")],
        "background_mlflow_writer": [(Applier, "apply")],
    }
    with tempfile.TemporaryDirectory(prefix="vptsearch-bench-") as tmp:
        root = Path(tmp)
        spec = _spec(trials, tasks, epochs, root)
        tasks_ = list(spec.suite)
        n = (trials // tasks) * tasks
        t_setup = time.perf_counter()
        uri = check_tracking_uri(spec.tracking.uri)
        launch_id = f"{spec.name}/bench"
        run_dir = root / "runs" / spec.name / "bench"
        run_dir.mkdir(parents=True)
        art = artifact_location(spec.tracking.artifact_location, uri)
        tracker = Tracker(uri, spec.experiment, art, launch_id, run_dir=run_dir)
        tracker.launch_run(launch_id)
        parents = {t: tracker.task_run(t, "bench") for t in tasks_}
        started_here = not ray.is_initialized()
        if started_here:
            # "local": a cluster of our own even when another one runs on this machine
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False)  # fmt: skip
        setup_s = time.perf_counter() - t_setup
        try:
            searcher = build_searcher(spec, tasks_, journal=run_dir / "optuna.journal")
            budget = sum(searcher.budgets.values())
            cb = TrackingCallback(
                uri,
                spec.experiment,
                None,
                launch_id,
                parents,
                spec.training.epochs,
                resume=False,
                run_dir=run_dir,
            )
            progress = ProgressCallback(budget, spec.training.epochs, "search")
            with (
                _swapped_trainable(epochs, checkpoint),
                _timed_methods(targets, totals),
                contextlib.redirect_stdout(sys.stderr),
            ):
                t0 = time.perf_counter()
                results = _phases.run_tuner(
                    _phases.TuneSetup(spec, run_dir),
                    "search",
                    searcher,
                    build_scheduler(spec),
                    budget,
                    [cb, progress],
                )
                t_drain = time.perf_counter()
                unsynced = tracker.close()  # what the writer still had to do counts too
                wall = time.perf_counter() - t0
                drain_s = time.perf_counter() - t_drain
            statuses: dict[str, int] = defaultdict(int)
            for r in results:
                statuses[trial_status(r.metrics, spec.training.epochs, r.error is not None)] += 1
            mlflow_trial_runs = len(
                tracker.client.search_runs(
                    [tracker.experiment_id],
                    filter_string="tags.`vptsearch.kind` = 'trial'",
                    max_results=50000,
                )
            )
            # How many asks the searcher made: every duplicate TPE proposal is a trial of the study too
            studies = load_studies(run_dir / "optuna.journal")
            asks = {
                "optuna_trials": sum(len(st.trials) for st in studies.values()),
                "duplicates_told": sum(
                    t.user_attrs.get("status") == "duplicate" for st in studies.values() for t in st.trials
                ),
            }
            # Same cluster, right after: the stock-Tune floor for the same trials (see tune_floor_run)
            floor = tune_floor_run(n, epochs, checkpoint, root)
            floor_tpe = tune_floor_tpe_run(n, tasks, epochs, checkpoint, root)
            return {
                "trials": n,
                "wall_s": wall,
                "tune_floor": floor,
                "tune_floor_tpe": floor_tpe,
                "searcher_asks": asks,
                "reports": _reports(results),
                "setup_s": setup_s,
                "finished": results.num_terminated + results.num_errors,
                "errored": results.num_errors,
                "statuses": dict(statuses),
                "mlflow_trial_runs": mlflow_trial_runs,
                "component_s": dict(totals),
                "drain_s": drain_s,
                "unsynced": unsynced,
            }
        finally:
            if started_here:
                ray.shutdown()


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=1000, help="total trials, split evenly over --tasks")
    ap.add_argument("--smoke", action="store_true", help="20 trials: runs in well under a minute")
    ap.add_argument("--tasks", type=int, default=2, choices=(1, 2), help="tasks of the one Tune experiment")
    ap.add_argument("--epochs", type=int, default=4, help="reports per trial (ASHA: grace 1, factor 2)")
    ap.add_argument("--checkpoint", action="store_true", help="a 4-byte Tune checkpoint with every report")
    ap.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.trials = 20
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    load_before = os.getloadavg()[0]  # other jobs on the machine inflate every figure
    run = platform_run(args.trials, args.epochs, args.tasks, args.checkpoint, args.cpus)
    n = run["trials"]
    bare = bare_calls(n, args.epochs, args.tasks)
    overhead_ms = (run["wall_s"] - bare) / n * 1000.0
    background_ms = round(run["component_s"].pop("background_mlflow_writer", 0.0) / n * 1000.0, 3)
    comp_ms = {k: round(v / n * 1000.0, 3) for k, v in sorted(run["component_s"].items())}
    comp_ms["rest_tune_controller_and_actors"] = round(overhead_ms - sum(comp_ms.values()), 3)
    floor = run["tune_floor"]
    floor_ms = (floor["wall_s"] - bare) / floor["trials"] * 1000.0
    tpe = run["tune_floor_tpe"]
    tpe_ms = (tpe["wall_s"] - bare) / tpe["trials"] * 1000.0
    import mlflow
    import optuna
    import ray

    result = {
        "benchmark": "platform_overhead",
        "smoke": args.smoke,
        "trials": n,
        "tasks": args.tasks,
        "epochs_per_trial": args.epochs,
        "checkpoint_per_epoch": args.checkpoint,
        "platform_wall_s": round(run["wall_s"], 3),
        "bare_wall_s": round(bare, 6),
        "overhead_ms_per_trial": round(overhead_ms, 3),
        "target_ms_per_trial": TARGET_MS_PER_TRIAL,
        "meets_target": overhead_ms <= TARGET_MS_PER_TRIAL,
        "setup_s": round(run["setup_s"], 3),
        "finished": run["finished"],
        "errored": run["errored"],
        "statuses": run["statuses"],
        "mlflow_trial_runs": run["mlflow_trial_runs"],
        "breakdown_ms_per_trial": comp_ms,
        "background_mlflow_writer_ms_per_trial": background_ms,
        "searcher_asks": run["searcher_asks"],  # Optuna trials in the studies, of them duplicates told
        # Stock Tune (random search + Tune's ASHA, no loggers, no vptsearch code), same cluster and trials:
        # what Tune alone costs here, and what vptsearch adds on top of it
        "tune_floor": {
            "overhead_ms_per_trial": round(floor_ms, 3),
            "reports": floor["reports"],
            "platform_reports": run["reports"],
            "errored": floor["errored"],
            "vptsearch_added_ms_per_trial": round(overhead_ms - floor_ms, 3),
        },
        # Stock Tune running the same search by hand (OptunaSearch TPE + ASHA, a Tuner per task): the
        # issue-29 target compares the platform with it (<= 1.1x)
        "tune_floor_tpe": {
            "overhead_ms_per_trial": round(tpe_ms, 3),
            "reports": tpe["reports"],
            "errored": tpe["errored"],
            "vptsearch_added_ms_per_trial": round(overhead_ms - tpe_ms, 3),
        },
        "ratio_to_stock_tune": {
            "random_search": round(overhead_ms / floor_ms, 3),
            "same_tpe_search": round(overhead_ms / tpe_ms, 3),
            "target": STOCK_RATIO_TARGET,
            "meets_target": overhead_ms <= STOCK_RATIO_TARGET * tpe_ms,
        },
        "mlflow_drain_at_end_s": round(run["drain_s"], 3),
        "mlflow_unsynced": run["unsynced"],
        "ray_cpus": args.cpus,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "versions": {"ray": ray.__version__, "optuna": optuna.__version__, "mlflow": mlflow.__version__},
    }
    print(json.dumps(result, indent=2))
    print(
        f"{n} trials: platform {run['wall_s']:.1f} s vs bare {bare * 1000:.2f} ms -> "
        f"{overhead_ms:.1f} ms/trial (target <= {TARGET_MS_PER_TRIAL:.0f}): "
        f"{'met' if result['meets_target'] else 'NOT met'}; stock Tune on the same trials "
        f"{floor_ms:.1f} ms/trial with random search, {tpe_ms:.1f} with the same TPE search "
        f"({overhead_ms / tpe_ms:.2f}x, target <= {STOCK_RATIO_TARGET}x)",
        file=sys.stderr,
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
