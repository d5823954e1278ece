"""Search efficiency: trial-epochs that TPE+ASHA, random+ASHA and plain TPE need to find the grid's answer.

    python benchmarks/bench_search_efficiency.py --full    # train the grid: 3 tasks x 36 configs x 4 epochs
    python benchmarks/bench_search_efficiency.py            # replay only: needs the cached grid (else errors)
    python benchmarks/bench_search_efficiency.py --smoke    # 1 task, 4 configs, 2 epochs, 64 images: ~30 s

A tabular benchmark in the style of HPOBench / NAS-Bench:

1. **Ground truth.** The full paper-style grid (``prompt.length x prompt.init x optim.base_lr x
   optim.weight_decay``, VPT-deep, the shipped ``vptsearch-tiny-sup`` backbone, a reduced-epoch
   version of the mini_deep recipe) is trained once per task by calling
   :func:`vptsearch.train.run_trial` directly (as Ray tasks, one thread each) with a reporter that
   records the per-epoch validation accuracy. Every finished configuration is appended at once to
   ``<results>/grid_<hash>.parquet`` (hash of grid + recipe + image budget; key = task + config), so
   a rerun trains nothing and an interrupted grid resumes where it stopped.
2. **Replay.** Each search method runs through the components a launch uses: ``build_searcher``
   (MultiTaskSearcher over one seeded Optuna study per task, PRUNED-aware) and ``build_scheduler``
   (PerTaskScheduler = one ASHA per task, or FIFO), driven by a real ``tune.Tuner`` (reuse_actors,
   ``max_concurrent`` 2 per task as in mini_deep) whose trainable replays the cached val curve of the
   suggested configuration epoch by epoch. A Tune callback records every reported epoch in order.
3. **Scoring.** After each trial, the configuration the method would select (its protocol: the best
   *completed*, i.e. full-budget, trial on final val accuracy) and the trial-epochs spent so far.
   Reported per method and task over ``--seeds`` seeds: the fraction of the grid's trial-epochs
   spent when the selection first comes within ``--tolerance`` (0.5 pt) of the grid's best final val
   accuracy (median, min, max, and how many seeds got there within the budget), and the selected
   val accuracy at 5/10/20/33 % of the grid's epochs. Target for TPE+ASHA: median <= 10 %.

Caveat: the replay uses ONE training run (seed 0) per configuration, so seed noise is not
resampled; a real search would also see different accuracies for the same configuration.
Prints one JSON object plus a short table (stderr); writes ``search_efficiency.json`` and
``search_efficiency.png`` into the results folder.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("mini/digits", "mini/textures", "mini/dsprites_loc")
BACKBONE = "vptsearch-tiny-sup"
PARAM_KEYS = ("prompt.length", "prompt.init", "optim.base_lr", "optim.weight_decay")
GRID: dict[str, list[Any]] = {  # 3 x 2 x 3 x 2 = 36 configurations per task
    "prompt.length": [1, 5, 20],
    "prompt.init": ["random", "spt-kmeans"],
    "optim.base_lr": [5, 1, 0.25],
    "optim.weight_decay": [0.001, 0.0],
}
SMOKE_GRID: dict[str, list[Any]] = {  # 4 configurations
    "prompt.length": [1, 5],
    "prompt.init": ["random", "spt-mean"],
    "optim.base_lr": [2.5],
    "optim.weight_decay": [0.0],
}
# The mini_deep recipe (batch 32, warm-up 1, dropout 0.1, 400 SPT images) at 4 instead of 10 epochs:
# 3 tasks x 36 configs x 4 epochs = 432 trial-epochs: ~15 min on 2 idle cores, ~55 min on a busy one.
RECIPE: dict[str, Any] = {
    "epochs": 4, "warmup_epochs": 1, "batch_size": 32, "prompt_dropout": 0.1, "init_images": 400,
}
METHODS: dict[str, tuple[str, str]] = {  # name -> (search.algorithm, scheduler.type)
    "tpe_asha": ("tpe", "asha"),
    "random_asha": ("random", "asha"),
    "tpe": ("tpe", "none"),
}
TARGET_FRACTION = 0.10
CHECKPOINTS = (0.05, 0.10, 0.20, 1 / 3)
CAVEAT = (
    "replay uses one training run (seed 0) per configuration: seed noise is not resampled, "
    "so a real search would see noisier accuracies than the replayed ones"
)


# --- grid -----------------------------------------------------------------------------------------
def grid_configs(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    combos = itertools.product(*(grid[k] for k in PARAM_KEYS))
    return [dict(zip(PARAM_KEYS, combo, strict=True)) for combo in combos]


def config_key(config: dict[str, Any]) -> str:
    """Stable key of a configuration (floats normalised so 10 and 10.0 match)."""
    return "|".join(f"{k}={float(config[k]) if k.startswith('optim.') else config[k]}" for k in PARAM_KEYS)


def grid_hash(grid: dict[str, list[Any]], recipe: dict[str, Any], images: tuple[int, int] | None) -> str:
    blob = json.dumps(
        {"grid": grid, "recipe": recipe, "backbone": BACKBONE, "depth": "deep", "seed": 0, "images": images},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def make_spec(
    tasks: list[str],
    grid: dict[str, list[Any]],
    recipe: dict[str, Any],
    data_root: str | None,
    *,
    method: str = "tpe_asha",
    seed: int = 0,
    trials: int = 1,
    grace: int = 1,
    reduction: int = 3,
    run_dir: str = "runs",
) -> Any:
    """The search space of the benchmark: the grid's choices as a vptsearch spec."""
    from vptsearch.spec import spec_from_dict

    algorithm, scheduler = METHODS[method]
    return spec_from_dict(
        {
            "name": "bench_search_efficiency",
            "suite": list(tasks),
            "data_root": data_root,
            "run_dir": run_dir,
            "backbone": {"name": BACKBONE},
            "method": "vpt",
            "params": {"prompt.depth": "deep", **{k: {"choice": list(v)} for k, v in grid.items()}},
            "search": {
                "algorithm": algorithm, "trials_per_task": trials, "max_concurrent": 2,
                "seed": seed, "n_startup_trials": 4,
            },
            "scheduler": {"type": scheduler, "grace_period": grace, "reduction_factor": reduction},
            "training": dict(recipe),
            "resources": {"cpu": 1, "gpu": 0},
        }
    )


def subset_tasks(tasks: list[str], train: int, val: int, root: Path) -> dict[str, str]:
    """Tasks cut to ``train``/``val`` images (the smoke mode's tiny image budget), written once."""
    from vptsearch.data import Sample, TaskInfo, get_task, load_split, read_manifest
    from vptsearch.data._writer import write_task

    out = {}
    for name in tasks:
        info = get_task(name)
        sub = TaskInfo(
            name=f"bench/{info.suite}-{info.short_name}-t{train}v{val}", suite="bench", group=info.group,
            num_classes=info.num_classes, build_hint="(benchmark subset)",
        )
        out[name] = sub.name
        if (root / sub.name / "manifest.parquet").is_file():
            continue
        tr_split, val_split = info.search_splits

        def samples(split: str, n: int, prefix: str, info: Any = info) -> list[Any]:
            x, y = load_split(info, split)
            n = min(n, len(y))
            return [Sample(f"{prefix}{i:05d}", x[i].permute(1, 2, 0).numpy(), int(y[i])) for i in range(n)]

        tr, va = samples(tr_split, train, "t"), samples(val_split, val, "v")
        write_task(
            sub, {"train800": tr, "val200": va, "train800val200": tr + va, "test": va},
            class_names=list(read_manifest(info).class_names), builder="bench_search_efficiency", root=root,
        )
    return out


def _train_config(spec_json: str, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """One grid cell: run_trial with a recording reporter (runs as a Ray task, one thread)."""
    from vptsearch.spec import spec_from_dict
    from vptsearch.train import ListReporter, run_trial

    spec = spec_from_dict(json.loads(spec_json))
    rep = ListReporter()
    t0 = time.perf_counter()
    res = run_trial({"method": "vpt", **config, "phase": "search", "seed": 0}, task=task, spec=spec,
                    reporter=rep, threads=1)
    seconds = time.perf_counter() - t0
    train_s = sum(r.get("epoch_seconds", 0.0) for r in rep.results)
    return {
        "task": task, "key": config_key(config), **config,
        "status": res.status, "epochs": len(rep.results),
        "val_curve": [float(r["val_acc"]) for r in rep.results],
        # time before the first epoch (backbone, images, initialiser); unknown when epoch 1 diverged
        "seconds": seconds, "init_seconds": seconds - train_s if res.status != "diverged" else float("nan"),
    }


def _write_rows(rows: dict[tuple[str, str], dict[str, Any]], path: Path) -> None:
    import pandas as pd

    tmp = path.with_suffix(".parquet.tmp")
    pd.DataFrame(list(rows.values())).to_parquet(tmp, index=False)
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written cache


def _trained(
    todo: list[tuple[str, dict[str, Any]]], spec_json: str, workers: int
) -> Iterator[dict[str, Any]]:
    """Rows of ``todo`` as they finish: in-process for one worker, else as Ray tasks (one thread each)."""
    if workers == 1:  # no worker process to start and no torch to import again: what --smoke uses
        for t, c in todo:
            yield _train_config(spec_json, t, c)
        return
    import ray

    remote = ray.remote(num_cpus=1, max_retries=1)(_train_config)
    pending = [remote.remote(spec_json, t, c) for t, c in todo]  # task by task, in grid order
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=2.0)  # timeout: Ctrl-C gets through
        for ref in ready:
            yield ray.get(ref)


def run_grid(
    spec: Any, tasks: list[str], configs: list[dict[str, Any]], cache: Path, say: Any, workers: int = 2
) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
    """Every (task, config) of the grid from the cache, training the missing ones. Returns (rows, trained)."""
    import pandas as pd

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    if cache.is_file():
        for r in pd.read_parquet(cache).to_dict("records"):
            r["val_curve"] = [float(v) for v in r["val_curve"]]
            rows[(r["task"], r["key"])] = r
    todo = [(t, c) for t in tasks for c in configs if (t, config_key(c)) not in rows]
    if not todo:
        return rows, 0
    say(f"grid: training {len(todo)} of {len(tasks) * len(configs)} configurations into {cache}")
    t0 = time.perf_counter()
    for done, row in enumerate(_trained(todo, json.dumps(spec.to_dict()), workers), start=1):
        rows[(row["task"], row["key"])] = row
        _write_rows(rows, cache)  # after every cell: a killed run loses only what was in flight
        if done % 10 == 0 or done == len(todo):
            say(f"grid: {done}/{len(todo)} trained ({time.perf_counter() - t0:.0f} s)")
    return rows, len(todo)


# --- replay through the real searcher/scheduler/Tuner ---------------------------------------------
def replay_trainable(
    config: dict[str, Any], curves: dict[str, list[float]], diverged: dict[str, bool]
) -> None:
    """Report the cached val curve of ``config`` epoch by epoch (what run_trial reported)."""
    from ray import tune

    key = config["task"] + "#" + config_key(config)
    curve = curves[key]
    for epoch, acc in enumerate(curve, start=1):
        last_diverged = diverged[key] and epoch == len(curve)
        tune.report({"epoch": epoch, "val_acc": acc, "diverged": int(last_diverged)})


def _recorder() -> Any:
    from ray.tune import Callback

    class EpochRecorder(Callback):
        """Every reported epoch and every trial end, in the order the Tune controller saw them."""

        def __init__(self) -> None:
            self.events: list[tuple[str, str, str, dict[str, Any]]] = []

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            self.events.append(("result", trial.config["task"], trial.trial_id, dict(result)))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            last = dict(trial.last_result or {})
            self.events.append(("complete", trial.config["task"], trial.trial_id, last))

    return EpochRecorder()


def replay_search(spec: Any, tasks: list[str], curves: dict[str, list[float]], diverged: dict[str, bool],
                  storage: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    """One search (all tasks in one Tuner, as a launch does); returns the recorded events."""
    from ray import tune

    from vptsearch.search._scheduler import build_scheduler
    from vptsearch.search._searcher import build_searcher

    searcher = build_searcher(spec, tasks)
    budget = sum(searcher.budgets.values())
    recorder = _recorder()
    trainable = tune.with_resources(
        tune.with_parameters(replay_trainable, curves=curves, diverged=diverged), {"cpu": 1}
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=build_scheduler(spec), num_samples=budget, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name="replay", storage_path=str(storage), callbacks=[recorder], verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    tuner.fit()
    return recorder.events


def trace(events: list[tuple[str, str, str, dict[str, Any]]], task: str, max_epochs: int) -> dict[str, Any]:
    """Per task: (trial-epochs spent, selected val acc) after each finished trial, and the totals."""
    from vptsearch.search._searcher import trial_status

    spent, best, points, statuses = 0, None, [], defaultdict(int)
    for kind, t, _tid, result in events:
        if t != task:
            continue
        if kind == "result":
            spent += 1
            continue
        status = trial_status(result, max_epochs)
        statuses[status] += 1
        if status == "completed" and (best is None or result["val_acc"] > best):
            best = float(result["val_acc"])
        points.append((spent, best))
    return {"points": points, "epochs": spent, "selected": best, "statuses": dict(statuses)}


def first_hit(points: list[tuple[int, float | None]], threshold: float) -> int | None:
    for spent, best in points:
        if best is not None and best >= threshold - 1e-9:
            return spent
    return None


def selected_at(points: list[tuple[int, float | None]], epochs: float) -> float | None:
    best = None
    for spent, sel in points:
        if spent > epochs:
            break
        best = sel
    return best


def _spread(values: list[float | None]) -> dict[str, Any]:
    """Median/min/max where None (never reached) sorts as +inf."""
    if not values:
        return {"median": None, "min": None, "max": None}
    key = [v if v is not None else float("inf") for v in values]
    med = statistics.median_low(key)

    def clean(v: float) -> float | None:
        return None if v == float("inf") else round(v, 4)

    return {"median": clean(med), "min": clean(min(key)), "max": clean(max(key))}


# --- the benchmark --------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="1 task, 4 configs, 2 epochs, 64 images, 1 seed")
    mode.add_argument("--full", action="store_true", help="train the missing part of the grid (expensive)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    ap.add_argument("--seeds", type=int, default=5, help="search seeds per method")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"subset of {', '.join(METHODS)}")
    ap.add_argument("--trials", type=int, default=0, help="trials per task and search (0: half the grid)")
    ap.add_argument("--grace", type=int, default=1, help="ASHA grace period (epochs)")
    ap.add_argument("--reduction", type=int, default=3, help="ASHA reduction factor")
    ap.add_argument("--tolerance", type=float, default=0.005, help="margin to the grid best (0.005=0.5 pt)")
    ap.add_argument("--workers", type=int, default=2, help="grid trials at once (1: in-process)")
    ap.add_argument("--results", type=Path, default=None,
                    help="cache/JSON/plot folder (default: benchmarks/results; --smoke: a temp folder)")
    ap.add_argument("--train-images", type=int, default=0, help="cut each task's train split (0: all)")
    ap.add_argument("--val-images", type=int, default=0, help="cut each task's val split (0: all)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.tasks, args.seeds, args.workers = TASKS[0], 1, 1
        args.train_images, args.val_images = args.train_images or 64, args.val_images or 32
        args.results = args.results or Path(tempfile.gettempdir()) / "vptsearch-bench-smoke"
    args.results = args.results or RESULTS
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        ap.error(f"--methods {bad[0] if bad else ''!r}: unknown; accepted: {', '.join(METHODS)}")
    for name in ("seeds", "workers", "grace", "reduction"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} {getattr(args, name)}: accepted: an integer >= 1")
    if args.trials < 0 or args.train_images < 0 or args.val_images < 0 or not 0 <= args.tolerance < 1:
        ap.error("--trials/--train-images/--val-images must be >= 0 and --tolerance in [0, 1)")
    return args


def _fmt(v: float | None) -> str:
    return "never" if v is None else f"{100 * v:.1f}%"


def _table(methods: dict[str, dict[str, Any]], say: Any) -> None:
    say(f"{'method':<12} {'task':<18} {'grid-epochs to best: median [min, max]':<40} "
        f"{'reached':>7} {'epochs':>6} {'selected val':>12}")
    for method, per_task in methods.items():
        for task, s in per_task.items():
            f = s["fraction_to_best"]
            spread = f"{_fmt(f['median'])} [{_fmt(f['min'])}, {_fmt(f['max'])}]"
            say(f"{method:<12} {task:<18} {spread:<40} {s['reached']:>7} "
                f"{s['epochs_spent']['median']:>6} {s['selected_val']['median']!s:>12}")


def plot(result: dict[str, Any], traces: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> None:
    """Per task: selected val accuracy (median and min-max over seeds) vs the grid fraction spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    nan = float("nan")
    for ax, task in zip(axes[0], tasks, strict=True):
        info = result["tasks"][task]
        total = info["grid_trial_epochs"]
        for method, per_task in traces.items():
            runs = per_task[task]
            xs = sorted({p[0] for r in runs for p in r["points"]})
            ys = [[v for v in (selected_at(r["points"], x) for r in runs) if v is not None] for x in xs]
            fx = [x / total for x in xs]
            med = [statistics.median(y) if y else nan for y in ys]
            line = ax.step(fx, med, where="post", label=method)[0]
            ax.fill_between(fx, [min(y, default=nan) for y in ys], [max(y, default=nan) for y in ys],
                            step="post", alpha=0.15, color=line.get_color())
        ax.axhline(info["grid_best_val"], color="k", lw=1, ls="--", label="grid best")
        ax.axhline(info["grid_best_val"] - result["tolerance"], color="k", lw=0.5, ls=":")
        ax.axvline(TARGET_FRACTION, color="grey", lw=0.5)
        ax.set(title=task, xlabel="fraction of the grid's trial-epochs spent",
               ylabel="val acc of the selected config")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("selected config vs compute (median, min-max over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def grid_summary(rows: dict[tuple[str, str], dict[str, Any]], task: str, configs: list[dict[str, Any]],
                 tolerance: float) -> dict[str, Any]:
    cells = [rows[(task, config_key(c))] for c in configs]
    done = [r for r in cells if r["status"] == "completed"]
    best = max(done, key=lambda r: r["val_curve"][-1])
    top = best["val_curve"][-1]
    return {
        "grid_best_val": top,
        "grid_best_config": {k: best[k] for k in PARAM_KEYS},
        "configs_within_tolerance": sum(r["val_curve"][-1] >= top - tolerance - 1e-9 for r in done),
        "grid_trial_epochs": sum(int(r["epochs"]) for r in cells),
        "grid_train_seconds": round(sum(r["seconds"] for r in cells), 1),
        "statuses": {s: sum(r["status"] == s for r in cells) for s in ("completed", "diverged")},
    }


def method_summary(runs: list[dict[str, Any]], info: dict[str, Any], tolerance: float) -> dict[str, Any]:
    total = info["grid_trial_epochs"]
    threshold = info["grid_best_val"] - tolerance
    fracs = [None if (h := first_hit(r["points"], threshold)) is None else h / total for r in runs]
    return {
        "fraction_to_best": _spread(fracs),
        "fractions": [None if f is None else round(f, 4) for f in fracs],
        "reached": f"{sum(f is not None for f in fracs)}/{len(fracs)}",
        "epochs_spent": _spread([r["epochs"] for r in runs]),
        "epochs_spent_fraction": _spread([r["epochs"] / total for r in runs]),
        "selected_val": _spread([r["selected"] for r in runs]),
        "selected_val_at_fraction": {
            f"{round(100 * c)}%": _spread([selected_at(r["points"], c * total) for r in runs])
            for c in CHECKPOINTS
        },
        "statuses": dict(sum((Counter(r["statuses"]) for r in runs), Counter())),
        # per seed: [trial-epochs spent, val acc of the selected config] after every finished trial
        "curves": [[[spent, sel] for spent, sel in r["points"]] for r in runs],
    }


def main(argv: list[str] | None = None, say: Any = None) -> dict[str, Any]:
    args = parse(argv)
    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import cloudpickle

    from vptsearch._errors import ConfigError
    from vptsearch.data import resolve_tasks

    if __name__ in sys.modules and __name__ != "__main__":  # imported as benchmarks.<name>:
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import benchmarks/
    t_start = time.perf_counter()
    grid = SMOKE_GRID if args.smoke else GRID
    recipe = {**RECIPE, "epochs": 2, "init_images": 64} if args.smoke else dict(RECIPE)
    names = resolve_tasks(args.tasks.split(","))
    images = (args.train_images, args.val_images) if args.train_images or args.val_images else None
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    data_root, trained_as = None, {t: t for t in names}
    if images:
        root = Path(tempfile.gettempdir()) / "vptsearch-bench" / "shards"
        trained_as = subset_tasks(names, args.train_images or 10**9, args.val_images or 10**9, root)
        data_root = str(root)
    tasks = [trained_as[t] for t in names]
    shown = {trained_as[t]: t for t in names}  # report under the names the user gave
    configs = grid_configs(grid)
    ghash = grid_hash(grid, recipe, images)
    cache = results_dir / f"grid_{ghash}.parquet"
    if not (args.full or args.smoke or cache.is_file()):
        raise ConfigError(f"no cached grid at {cache}; train it once with --full (about 30 min on 2 cores)")

    started_here = not ray.is_initialized()
    if started_here:  # address="local": never attach to another engineer's running cluster
        ray.init(address="local", num_cpus=max(2, args.workers), include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
    try:
        t0 = time.perf_counter()
        train = configs if (args.full or args.smoke) else []
        spec = make_spec(tasks, grid, recipe, data_root)
        rows, trained = run_grid(spec, tasks, train, cache, say, args.workers)
        grid_wall = time.perf_counter() - t0
        complete = [t for t in tasks if all((t, config_key(c)) in rows for c in configs)]
        if not complete:
            raise ConfigError(f"the cached grid {cache} has no complete task yet; finish it with --full")
        curves = {f"{t}#{k}": list(r["val_curve"]) for (t, k), r in rows.items() if t in complete}
        diverged = {f"{t}#{k}": r["status"] == "diverged" for (t, k), r in rows.items() if t in complete}
        task_info = {t: grid_summary(rows, t, configs, args.tolerance) for t in complete}
        trials = args.trials or max(2, len(configs) // 2)
        traces: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in args.methods}
        replay_s: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="vptsearch-replay-") as tmp:
            for method in args.methods:
                t1 = time.perf_counter()
                for seed in range(args.seeds):
                    spec = make_spec(complete, grid, recipe, data_root, method=method, seed=seed,
                                     trials=trials, grace=args.grace, reduction=args.reduction)
                    events = replay_search(spec, complete, curves, diverged, Path(tmp) / f"{method}-{seed}")
                    for t in complete:
                        traces[method].setdefault(t, []).append(trace(events, t, recipe["epochs"]))
                replay_s[method] = round(time.perf_counter() - t1, 2)
    finally:
        if started_here:
            ray.shutdown()

    methods = {
        m: {shown[t]: method_summary(runs, task_info[t], args.tolerance) for t, runs in per.items()}
        for m, per in traces.items()
    }
    overall = {m: _spread([f for s in per.values() for f in s["fractions"]]) for m, per in methods.items()}
    median = overall.get("tpe_asha", {}).get("median")
    n_cells = len(tasks) * len(configs)
    result = {
        "benchmark": "search_efficiency",
        "smoke": args.smoke,
        "tasks": {shown[t]: v for t, v in task_info.items()},
        "tasks_incomplete": [shown[t] for t in tasks if t not in complete],
        "grid": {
            "params": grid, "size": len(configs), "recipe": recipe, "backbone": BACKBONE, "depth": "deep",
            "hash": ghash, "cache": str(cache), "images": images, "trained_now": trained,
            "reused": sum(1 for t in tasks for c in configs if (t, config_key(c)) in rows) - trained,
            "cells": n_cells, "wall_s": round(grid_wall, 1),
        },
        "search": {
            "methods": {m: {"algorithm": METHODS[m][0], "scheduler": METHODS[m][1]} for m in args.methods},
            "seeds": args.seeds, "trials_per_task": trials, "max_concurrent_per_task": 2,
            "asha": {"grace_period": args.grace, "reduction_factor": args.reduction,
                     "max_t": recipe["epochs"]},
            "n_startup_trials": 4,
            "driver": "tune.Tuner + build_searcher + build_scheduler, replay trainable",
            "replay_wall_s": replay_s,
        },
        "tolerance": args.tolerance,
        "methods": methods,
        "overall_fraction_to_best": overall,
        "target": f"tpe_asha median fraction of the grid's trial-epochs <= {TARGET_FRACTION}",
        "meets_target": median is not None and median <= TARGET_FRACTION,
        "caveat": CAVEAT,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if not args.no_plot:
        result["plot"] = str(results_dir / "search_efficiency.png")
        named = {m: {shown[t]: v for t, v in per.items()} for m, per in traces.items()}
        plot(result, named, Path(result["plot"]))
    (results_dir / "search_efficiency.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    _table(methods, say)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
