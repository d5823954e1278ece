"""Search efficiency: how much of a seed-averaged ground-truth grid a search spends to select its answer.

    python benchmarks/bench_search_efficiency.py --full    # train the missing grid cells, then replay
    python benchmarks/bench_search_efficiency.py            # replay only, on the cached grid (else errors)
    python benchmarks/bench_search_efficiency.py --smoke    # 1 task, 2 configs x 2 seeds, 2 epochs: ~40 s

A tabular benchmark in the style of HPOBench / NAS-Bench:

1. **Ground truth.** The grid is the shipped full mini space itself (search_spaces/mini_deep_full.yaml:
   every ``choice`` parameter crossed, its fixed params and its training recipe; 54 configurations
   of prompt length x init incl. SPT x lr x wd, BatchNorm head, 15 epochs), trained on 3 mini tasks
   (natural and structured) with 2 seeds each by calling :func:`vptsearch.train.run_trial` (Ray
   tasks, one thread each), recording every epoch's val accuracy. Each finished cell is appended
   at once to ``<results>/grid_<hash>.parquet`` (hash of grid + fixed params + recipe + image
   budget; key = task + config + seed), so a rerun trains nothing and an interrupted grid resumes
   where it stopped. 324 cells of ~40 s each on 2 idle cores: about 3.6 h, built over sessions.
2. **Replay.** Each search method runs through the components a launch uses (``_search_replay.py``):
   ``build_searcher`` (one seeded Optuna study per task) and ``build_scheduler`` (one ASHA per task,
   or FIFO, with the shipped space's grace period and reduction factor), driven by a real
   ``tune.Tuner`` whose trainable replays the cached curve of the suggested configuration for one
   of its seeds, drawn per trial: the search sees seed noise, as a real one does. Methods: random,
   random+ASHA, TPE, TPE+ASHA, screening (random configurations for one rung, then the top 3 of
   each task continued to the end), and TPE+ASHA with the cross-task warm start, both as a launch
   runs it (``warm_start: launch``) and leave-one-task-out (``warm_start: <earlier run dir>`` whose
   journal holds the other tasks' grid, never the held-out task's own results).
3. **Noise-aware score** (``_search_score.py``): a configuration's true quality is its
   seed-averaged final val accuracy; the search selects the completed trial with the best val it
   *saw*; regret = best true quality - true quality of the selection; "found" = regret <= one
   standard error of the seed-averaged estimate. Reported per method and task over ``--seeds``
   search seeds: regret vs trial-epochs spent, the fraction of the grid's trial-epochs (one grid
   search = every configuration once) to "found", and the Spearman correlation of every epoch's
   accuracy with the final one (to choose the grace period from data).

Targets: the shipped space's own search (TPE+ASHA, with the warm start when the space sets
``search.warm_start: launch``) median <= 10 % of the grid's trial-epochs to "found", and <= 0.5x
random+ASHA's (ratio of the pooled medians). Prints one JSON object plus a table (stderr); writes
``search_efficiency.json`` and ``search_efficiency.png`` (regret vs compute) into the results folder.
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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _search_replay import METHODS, Replay
from _search_replay import config_key as _config_key
from _search_score import (  # benchmarks/ is not a package when run as a script
    epochs_to_found,
    regret_at,
    regret_curve,
    rung_correlations,
    spread,
    task_truth,
    trace,
)

RESULTS = Path(__file__).resolve().parent / "results"
SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "mini_deep_full.yaml"
TASKS = ("mini/digits", "mini/textures", "mini/dsprites_loc")
SEEDS = (0, 1)  # every configuration is trained once per seed: the search target is seed-averaged
SMOKE_GRID: dict[str, list[Any]] = {  # 2 configurations x 2 seeds
    "prompt.length": [1, 5],
    "prompt.init": ["random"],
    "optim.base_lr": [2.0],
    "optim.weight_decay": [0.0],
}


def shipped_space(
    path: Path = SPACE,
) -> tuple[str, dict[str, list[Any]], dict[str, Any], dict[str, Any], tuple[int, int], str]:
    """(backbone, grid, fixed params, training recipe, ASHA (grace, reduction), search.warm_start)
    of the shipped space.

    The ground truth is a space users run (``vptsearch launch --space
    search_spaces/mini_deep_full.yaml``), trained in full, so the benchmark judges that shipped
    search itself. (The 10-minute quickstart, mini_deep.yaml, is too small a search to judge on a
    grid: 4 trials of 6 configurations per task.) Every searched parameter
    must be a ``choice`` list (a grid needs finite values).
    """
    import yaml

    raw = yaml.safe_load(path.read_text())
    grid, fixed = {}, {}
    for name, value in raw["params"].items():
        if isinstance(value, dict):
            if set(value) != {"choice"}:
                raise ValueError(f"{path}: params.{name}: the benchmark grid needs a choice list, "
                                 f"got {value}")
            grid[name] = list(value["choice"])
        else:
            fixed[name] = value
    asha = raw.get("scheduler", {})
    shipped = (int(asha.get("grace_period", 1)), int(asha.get("reduction_factor", 3)))
    warm = str(raw.get("search", {}).get("warm_start", "none"))
    return raw["backbone"]["name"], grid, fixed, dict(raw["training"]), shipped, warm


BACKBONE, GRID, FIXED, RECIPE, SHIPPED_ASHA, SHIPPED_WARM_START = shipped_space()
# the replayed method that is the shipped space's own search (the one the target is about)
SHIPPED_METHOD = "tpe_asha_warm_launch" if SHIPPED_WARM_START == "launch" else "tpe_asha"
PARAM_KEYS = tuple(GRID)
TARGET_FRACTION = 0.10
CHECKPOINTS = (0.05, 0.10, 0.20, 1 / 3)


# --- grid -----------------------------------------------------------------------------------------
def grid_configs(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    combos = itertools.product(*(grid[k] for k in PARAM_KEYS))
    return [dict(zip(PARAM_KEYS, combo, strict=True)) for combo in combos]


def config_key(config: dict[str, Any]) -> str:
    """Stable key of a configuration (floats normalised so 10 and 10.0 match)."""
    return _config_key(config, PARAM_KEYS)


def grid_hash(grid: dict[str, list[Any]], recipe: dict[str, Any], images: tuple[int, int] | None) -> str:
    blob = json.dumps(
        {"grid": grid, "fixed": FIXED, "recipe": recipe, "backbone": BACKBONE, "images": images},
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
    warm_start: str = "none",
) -> Any:
    """The search space of the benchmark: the grid's choices as a vptsearch spec."""
    from vptsearch.spec import spec_from_dict

    algorithm, scheduler = METHODS[method].algorithm, METHODS[method].scheduler
    return spec_from_dict(
        {
            "name": "bench_search_efficiency",
            "suite": list(tasks),
            "data_root": data_root,
            "run_dir": run_dir,
            "backbone": {"name": BACKBONE},
            "method": "vpt",
            "params": {**FIXED, **{k: {"choice": list(v)} for k, v in grid.items()}},
            "search": {
                "algorithm": algorithm, "trials_per_task": trials, "max_concurrent": 2,
                "seed": seed, "n_startup_trials": 4, "warm_start": warm_start,
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


def _train_config(spec_json: str, task: str, config: dict[str, Any], seed: int) -> dict[str, Any]:
    """One grid cell (config + seed): run_trial with a recording reporter (a Ray task, one thread)."""
    from vptsearch.spec import spec_from_dict
    from vptsearch.train import ListReporter, run_trial

    spec = spec_from_dict(json.loads(spec_json))
    rep = ListReporter()
    t0 = time.perf_counter()
    trial = {"method": "vpt", **FIXED, **config, "phase": "search", "seed": seed}
    res = run_trial(trial, task=task, spec=spec, reporter=rep, threads=1)
    seconds = time.perf_counter() - t0
    train_s = sum(r.get("epoch_seconds", 0.0) for r in rep.results)
    return {
        "task": task, "key": config_key(config), "seed": seed, **config,
        "status": res.status, "epochs": len(rep.results),
        "val_curve": [float(r["val_acc"]) for r in rep.results],
        # time before the first epoch (backbone, images, initialiser); unknown when epoch 1 diverged
        "seconds": seconds, "init_seconds": seconds - train_s if res.status != "diverged" else float("nan"),
    }


Cell = tuple[str, str, int]  # (task, config key, seed)


def _write_rows(rows: dict[Cell, dict[str, Any]], path: Path) -> None:
    import pandas as pd

    tmp = path.with_suffix(".parquet.tmp")
    pd.DataFrame(list(rows.values())).to_parquet(tmp, index=False)
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written cache


def _trained(
    todo: list[tuple[str, dict[str, Any], int]], spec_json: str, workers: int
) -> Iterator[dict[str, Any]]:
    """Rows of ``todo`` as they finish: in-process for one worker, else as Ray tasks (one thread each)."""
    if workers == 1:  # no worker process to start and no torch to import again: what --smoke uses
        for t, c, seed in todo:
            yield _train_config(spec_json, t, c, seed)
        return
    import ray

    remote = ray.remote(num_cpus=1, max_retries=1)(_train_config)
    pending = [remote.remote(spec_json, t, c, seed) for t, c, seed in todo]  # task by task, seed by seed
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=2.0)  # timeout: Ctrl-C gets through
        for ref in ready:
            yield ray.get(ref)


def run_grid(
    spec: Any, tasks: list[str], configs: list[dict[str, Any]], seeds: tuple[int, ...], cache: Path, say: Any,
    workers: int = 2,
) -> tuple[dict[Cell, dict[str, Any]], int]:
    """Every (task, config, seed) of the grid from the cache, training the missing ones.

    Returns (rows, cells trained now).

    Cells are trained task by task and, within a task, seed by seed, so an interrupted grid leaves
    whole tasks (and whole seeds) usable; each finished cell is in the parquet at once.
    """
    import pandas as pd

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    if cache.is_file():
        for r in pd.read_parquet(cache).to_dict("records"):
            r["val_curve"] = [float(v) for v in r["val_curve"]]
            rows[(r["task"], r["key"], int(r["seed"]))] = r
    todo = [(t, c, seed) for t in tasks for seed in seeds for c in configs
            if (t, config_key(c), seed) not in rows]
    if not todo:
        return rows, 0
    say(f"grid: training {len(todo)} of {len(tasks) * len(configs) * len(seeds)} cells "
        f"(configurations x seeds) into {cache}")
    t0 = time.perf_counter()
    for done, row in enumerate(_trained(todo, json.dumps(spec.to_dict()), workers), start=1):
        rows[(row["task"], row["key"], row["seed"])] = row
        _write_rows(rows, cache)  # after every cell: a killed run loses only what was in flight
        if done % 10 == 0 or done == len(todo):
            say(f"grid: {done}/{len(todo)} trained ({time.perf_counter() - t0:.0f} s)")
    return rows, len(todo)


# --- the benchmark --------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true",
                      help="1 task, 2 configs x 2 seeds, 2 epochs, 64 images, 1 search seed")
    mode.add_argument("--full", action="store_true", help="train the missing part of the grid (expensive)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    # 10, not 5: with 5 the replay's run-to-run spread hides differences of a few points (2026-12-04)
    ap.add_argument("--seeds", type=int, default=10, help="search seeds per method")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"subset of {', '.join(METHODS)}")
    ap.add_argument("--trials", type=int, default=0, help="trials per task and search (0: half the grid)")
    ap.add_argument("--grace", type=int, default=SHIPPED_ASHA[0],
                    help="ASHA grace period (default: the shipped space's)")
    ap.add_argument("--reduction", type=int, default=SHIPPED_ASHA[1],
                    help="ASHA reduction factor (default: the shipped space's)")
    ap.add_argument("--workers", type=int, default=2, help="grid trials at once (1: in-process)")
    ap.add_argument("--results", type=Path, default=None,
                    help="cache/JSON/plot folder (default: benchmarks/results; --smoke: a temp folder)")
    ap.add_argument("--train-images", type=int, default=0, help="cut each task's train split (0: all)")
    ap.add_argument("--val-images", type=int, default=0, help="cut each task's val split (0: all)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.tasks, args.seeds, args.workers, args.grace = TASKS[0], 1, 1, 1
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
    if args.trials < 0 or args.train_images < 0 or args.val_images < 0:
        ap.error("--trials/--train-images/--val-images: accepted: an integer >= 0")
    return args


def _fmt(v: float | None) -> str:
    return "never" if v is None else f"{100 * v:.1f}%"


def _table(methods: dict[str, dict[str, Any]], say: Any) -> None:
    say(f"{'method':<12} {'task':<18} {'grid-epochs to found: median [min, max]':<40} "
        f"{'found':>6} {'epochs':>6} {'final regret (pt)':>17}")
    for method, per_task in methods.items():
        for task, s in per_task.items():
            f = s["fraction_to_found"]
            cell = f"{_fmt(f['median'])} [{_fmt(f['min'])}, {_fmt(f['max'])}]"
            r = s["final_regret"]["median"]
            say(f"{method:<12} {task:<18} {cell:<40} {s['found']:>6} "
                f"{s['epochs_spent']['median']:>6} {'-' if r is None else f'{100 * r:.1f}':>17}")


def plot(result: dict[str, Any], regrets: dict[str, dict[str, list[list[tuple[int, float | None]]]]],
         path: Path) -> None:
    """Per task: regret of the selection (median and min-max over search seeds) vs grid fraction spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    nan = float("nan")
    for ax, task in zip(axes[0], tasks, strict=True):
        info = result["tasks"][task]
        total = info["grid_trial_epochs"]
        for method, per_task in regrets.items():
            runs = per_task[task]
            xs = sorted({p[0] for r in runs for p in r})
            ys = [[v for v in (regret_at(r, x) for r in runs) if v is not None] for x in xs]
            fx = [x / total for x in xs]
            med = [100 * statistics.median(y) if y else nan for y in ys]
            line = ax.step(fx, med, where="post", label=method)[0]
            lo = [100 * min(y, default=nan) for y in ys]
            hi = [100 * max(y, default=nan) for y in ys]
            ax.fill_between(fx, lo, hi, step="post", alpha=0.15, color=line.get_color())
        ax.axhline(100 * info["standard_error"], color="k", lw=1, ls="--", label="1 standard error")
        ax.axvline(TARGET_FRACTION, color="grey", lw=0.5)
        ax.set(title=task, xlabel="fraction of the grid's trial-epochs spent",
               ylabel="regret of the selected config (val pt)", ylim=(0, None))
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("regret vs compute (median, min-max over search seeds; seed-averaged truth)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def grid_curves(rows: dict[Cell, dict[str, Any]], task: str, configs: list[dict[str, Any]],
                seeds: tuple[int, ...]) -> tuple[dict[str, list[list[float]]], dict[str, list[bool]]]:
    """Per config key of ``task``: its val curve per seed, and whether each seed completed."""
    cells = {config_key(c): [rows[(task, config_key(c), s)] for s in seeds] for c in configs}
    curves = {k: [list(r["val_curve"]) for r in rs] for k, rs in cells.items()}
    completed = {k: [r["status"] == "completed" for r in rs] for k, rs in cells.items()}
    return curves, completed


def grid_summary(truth: dict[str, Any], rows: dict[Cell, dict[str, Any]], task: str,
                 configs: list[dict[str, Any]], seeds: tuple[int, ...], curves: dict[str, list[list[float]]],
                 epochs: int) -> dict[str, Any]:
    cells = [rows[(task, config_key(c), s)] for c in configs for s in seeds]
    best = next(c for c in configs if config_key(c) == truth["best_key"])
    ranked = sorted(truth["quality"].values(), reverse=True)
    return {
        "grid_best_quality": round(truth["best_quality"], 4),
        "grid_best_config": best,
        "standard_error": round(truth["standard_error"], 4),
        "seeds": list(seeds),
        "configs_found": truth["configs_found"],
        "quality_spread": {"best": round(ranked[0], 4), "median": round(statistics.median(ranked), 4),
                           "worst": round(ranked[-1], 4)},
        "grid_trial_epochs": truth["grid_trial_epochs"],
        "grid_train_seconds": round(sum(r["seconds"] for r in cells), 1),
        "statuses": {st: sum(r["status"] == st for r in cells) for st in ("completed", "diverged")},
        "rung_spearman": rung_correlations(curves, epochs),
    }


def method_summary(runs: list[dict[str, Any]], truth: dict[str, Any]) -> dict[str, Any]:
    total, se = truth["grid_trial_epochs"], truth["standard_error"]
    regrets = [regret_curve(r["points"], truth) for r in runs]
    hits = [epochs_to_found(rc, se) for rc in regrets]
    final = [rc[-1][1] if rc else None for rc in regrets]
    return {
        "fraction_to_found": spread([None if h is None else h / total for h in hits]),
        "epochs_to_found": hits,
        "found": f"{sum(h is not None for h in hits)}/{len(hits)}",
        "epochs_spent": spread([r["epochs"] for r in runs]),
        "epochs_spent_fraction": spread([r["epochs"] / total for r in runs]),
        "final_regret": spread(final),
        "regret_at_fraction": {
            f"{round(100 * c)}%": spread([regret_at(rc, c * total) for rc in regrets]) for c in CHECKPOINTS
        },
        "statuses": dict(sum((Counter(r["statuses"]) for r in runs), Counter())),
        # per search seed: [trial-epochs spent, regret of the selection] after every finished trial
        "curves": [[[spent, reg] for spent, reg in rc] for rc in regrets],
    }


def _relative_cost(overall: dict[str, dict[str, Any]], a: str, b: str) -> float | None:
    """Median fraction-to-found of ``a`` over that of ``b`` (tasks x search seeds pooled).

    Medians, not per-seed ratios: search seed k of one method is not paired with seed k of another.
    None when ``a`` never gets there in the median; 0.0 when only ``b`` never does.
    """
    ma, mb = overall[a]["median"], overall[b]["median"]
    if ma is None:
        return None
    return 0.0 if mb is None else round(ma / mb, 3)


def main(argv: list[str] | None = None, say: Any = None) -> dict[str, Any]:
    args = parse(argv)
    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import cloudpickle

    from vptsearch._errors import ConfigError
    from vptsearch.data import resolve_tasks
    from vptsearch.search._searcher import trial_status

    if __name__ in sys.modules and __name__ != "__main__":  # imported as benchmarks.<name>:
        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import benchmarks/
    cloudpickle.register_pickle_by_value(sys.modules["_search_replay"])  # its trainable, likewise
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
    seeds = SEEDS
    ghash = grid_hash(grid, recipe, images)
    cache = results_dir / f"grid_{ghash}.parquet"
    if not (args.full or args.smoke or cache.is_file()):
        raise ConfigError(f"no cached grid at {cache}; train it once with --full (hours on 2 cores)")

    started_here = not ray.is_initialized()
    if started_here:  # address="local": never attach to another engineer's running cluster
        ray.init(address="local", num_cpus=max(2, args.workers), include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
    try:
        t0 = time.perf_counter()
        train = configs if (args.full or args.smoke) else []
        spec = make_spec(tasks, grid, recipe, data_root)
        rows, trained = run_grid(spec, tasks, train, seeds, cache, say, args.workers)
        grid_wall = time.perf_counter() - t0
        complete = [t for t in tasks if all((t, config_key(c), s) in rows for c in configs for s in seeds)]
        if not complete:
            raise ConfigError(f"the cached grid {cache} has no complete task yet; finish it with --full")
        curves: dict[str, list[list[float]]] = {}
        completed: dict[str, list[bool]] = {}
        truths, task_info = {}, {}
        for t in complete:
            c, ok = grid_curves(rows, t, configs, seeds)
            curves.update({f"{t}#{k}": v for k, v in c.items()})
            completed.update({f"{t}#{k}": v for k, v in ok.items()})
            truths[t] = task_truth(c, ok)
            task_info[t] = grid_summary(truths[t], rows, t, configs, seeds, c, recipe["epochs"])
        trials = args.trials or max(2, len(configs) // 2)
        traces: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in args.methods}
        replay_s: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="vptsearch-replay-") as tmp:
            def spec_for(ts: list[str], *, method: str, seed: int, warm_start: str) -> Any:
                return make_spec(ts, grid, recipe, data_root, method=method, seed=seed, trials=trials,
                                 grace=args.grace, reduction=args.reduction, warm_start=warm_start)

            replay = Replay(curves, completed, PARAM_KEYS, spec_for, Path(tmp))
            for method in args.methods:
                t1 = time.perf_counter()
                for seed in range(args.seeds):
                    for t, events in replay.run(method, complete, seed, args.grace).items():
                        run = trace(events, t, recipe["epochs"], trial_status)
                        traces[method].setdefault(t, []).append(run)
                replay_s[method] = round(time.perf_counter() - t1, 2)
    finally:
        if started_here:
            ray.shutdown()

    methods = {m: {shown[t]: method_summary(runs, truths[t]) for t, runs in per.items()}
               for m, per in traces.items()}
    overall = {
        m: spread([None if h is None else h / task_info[t]["grid_trial_epochs"]
                   for t, s in zip(complete, per.values(), strict=True) for h in s["epochs_to_found"]])
        for m, per in methods.items()
    }
    median = overall.get(SHIPPED_METHOD, {}).get("median")
    vs_random = {m: _relative_cost(overall, m, "random_asha") for m in methods if "random_asha" in methods}
    n_cells = len(tasks) * len(configs) * len(seeds)
    result = {
        "benchmark": "search_efficiency",
        "smoke": args.smoke,
        "tasks": {shown[t]: v for t, v in task_info.items()},
        "tasks_incomplete": [shown[t] for t in tasks if t not in complete],
        "grid": {
            "space": str(SPACE.relative_to(SPACE.parents[1])), "params": grid, "fixed": FIXED,
            "size": len(configs), "seeds": list(seeds), "recipe": recipe, "backbone": BACKBONE,
            "hash": ghash, "cache": str(cache), "images": images, "trained_now": trained,
            "reused": sum((t, config_key(c), s) in rows for t in tasks for c in configs for s in seeds)
            - trained,
            "cells": n_cells, "wall_s": round(grid_wall, 1),
        },
        "search": {
            "methods": {m: vars(METHODS[m]) for m in args.methods},
            "seeds": args.seeds, "trials_per_task": trials, "max_concurrent_per_task": 2,
            "asha": {"grace_period": args.grace, "reduction_factor": args.reduction,
                     "max_t": recipe["epochs"]},
            "n_startup_trials": 4,
            "driver": "tune.Tuner + build_searcher + build_scheduler, replay trainable "
                      "(one grid seed drawn per trial)",
            "replay_wall_s": replay_s,
        },
        "score": "regret = best seed-averaged val - seed-averaged val of the selection; "
                 "found = regret <= 1 SE",
        "methods": methods,
        "overall_fraction_to_found": overall,
        "shipped_method": SHIPPED_METHOD,
        "vs_random_asha_epochs_to_found": vs_random,
        "target": f"{SHIPPED_METHOD} median fraction of the grid's trial-epochs to found <= "
                  f"{TARGET_FRACTION}, and <= 0.5x random_asha's median",
        "meets_target": median is not None and median <= TARGET_FRACTION
                        and vs_random.get(SHIPPED_METHOD) is not None and vs_random[SHIPPED_METHOD] <= 0.5,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if not args.no_plot:
        result["plot"] = str(results_dir / "search_efficiency.png")
        named = {m: {shown[t]: [regret_curve(r["points"], truths[t]) for r in runs]
                         for t, runs in per.items()} for m, per in traces.items()}
        plot(result, named, Path(result["plot"]))
    (results_dir / "search_efficiency.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    _table(methods, say)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
