"""Rung signal: does an early epoch's val accuracy rank the configurations as the last one does?

    python benchmarks/bench_rung_signal.py            # 12 configs x 3 tasks, seed 0, both recipes
    python benchmarks/bench_rung_signal.py --smoke    # 2 configs, 1 task, 3 epochs: ~1 min

ASHA keeps the trials that are best at its rungs; that only finds the winner when the early ranking
agrees with the final one. benchmarks/README.md's rung table measured it on the full mini grid with
the issue-12 recipe (head from nn.Linear's draw, trained at the prompts' lr): Spearman of epoch 3
vs epoch 15 was -0.25 on textures and -0.26 on dsprites_loc. This script measures it again for the
**probe-fitted head** (``head.init: probe``, ``optim.head_lr_scale: 0.1``, the defaults since
issue 28) side by side with the issue-12 recipe, and the probe-fitted head with precise BN (the
default since 86f227a), all on the same subset of
``search_spaces/mini_deep_full.yaml``'s grid (prompt length {5, 20} x init {random, spt-mean} x base
lr {4, 2, 1}, weight decay 0; its fixed params and 15-epoch recipe; seed 0; train800 / val200).

Each cell is one :func:`vptsearch.train.run_trial` on one thread, two at a time in worker
processes; finished cells are appended to ``results/rung_signal_cells.jsonl`` (key = recipe + task
+ config), so an interrupted run resumes. Prints one JSON object: per recipe and task the Spearman
correlation of every epoch's val with the last epoch's, the best config's final val, and the
recipe's mean final val; writes it to ``results/rung_signal.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "mini_deep_full.yaml"
TASKS = ("mini/digits", "mini/textures", "mini/dsprites_loc")
GRID = {"prompt.length": [5, 20], "prompt.init": ["random", "spt-mean"], "optim.base_lr": [4, 2, 1]}
FIXED = {"method": "vpt", "prompt.depth": "deep", "head.norm": "batchnorm", "optim.weight_decay": 0.0}
RECIPES = {
    "issue12": {"head.init": "random", "optim.head_lr_scale": 1.0},  # what the README table measured
    "probe_head": {"head.init": "probe", "optim.head_lr_scale": 0.1},  # the defaults since issue 28
    "probe_head_precise_bn": {"head.init": "probe", "optim.head_lr_scale": 0.1},
}
# Spec overrides per recipe: the first two were measured before precise BN (86f227a) and keep the
# training's running averages, so their cached cells stay what they measured; the third is today's
# default (the head norm's statistics recomputed from 256 training images before every val pass).
RECIPE_OVERRIDES = {
    "issue12": ["training.precise_bn_images=0"],
    "probe_head": ["training.precise_bn_images=0"],
    "probe_head_precise_bn": ["training.precise_bn_images=256"],
}
EPOCHS_SHOWN = (1, 3, 6, 9, 12)


def configs(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def cell_key(recipe: str, task: str, config: dict[str, Any]) -> str:
    return f"{recipe}|{task}|" + "|".join(f"{k}={config[k]}" for k in sorted(config))


def train_cell(recipe: str, task: str, config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """One trial (in a worker process, one thread): its val curve."""
    import torch

    from vptsearch.spec import load_spec
    from vptsearch.train import ListReporter, run_trial

    torch.set_num_threads(1)
    spec = load_spec(SPACE, [*overrides, *RECIPE_OVERRIDES[recipe]])
    rep = ListReporter()
    t0 = time.perf_counter()
    res = run_trial({**FIXED, **config, **RECIPES[recipe]}, task=task, spec=spec, reporter=rep)
    return {
        "key": cell_key(recipe, task, config),
        "recipe": recipe,
        "task": task,
        "config": config,
        "status": res.status,
        "val_curve": [r.get("val_acc", 0.0) for r in rep.results],
        "head": res.init.get("head"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    rho = spearmanr(a, b).statistic
    return round(float(rho), 3) if rho == rho else float("nan")


def summarise(cells: list[dict[str, Any]], tasks: tuple[str, ...], epochs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for recipe in RECIPES:
        per_task = {}
        for task in tasks:
            rows = [
                c
                for c in cells
                if c["recipe"] == recipe and c["task"] == task and len(c["val_curve"]) == epochs
            ]
            if len(rows) < 3:
                continue
            final = [c["val_curve"][-1] for c in rows]
            best = max(rows, key=lambda c: c["val_curve"][-1])
            per_task[task] = {
                "configs": len(rows),
                "spearman_vs_final": {
                    e: spearman([c["val_curve"][e - 1] for c in rows], final)
                    for e in EPOCHS_SHOWN
                    if e < epochs
                },
                "best_final_val": round(max(final), 4),
                "best_config": best["config"],
                "mean_final_val": round(sum(final) / len(final), 4),
            }
        out[recipe] = per_task
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="2 configs, 1 task, 3 epochs, temp results")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    grid, tasks, overrides = GRID, TASKS, []
    if args.smoke:
        grid = {"prompt.length": [5], "prompt.init": ["random", "spt-mean"], "optim.base_lr": [2]}
        tasks, overrides = ("mini/digits",), ["training.epochs=3", "scheduler.grace_period=1"]
    epochs = 3 if args.smoke else 15
    args.results.mkdir(parents=True, exist_ok=True)
    store = args.results / ("rung_signal_cells_smoke.jsonl" if args.smoke else "rung_signal_cells.jsonl")
    done = {}
    if store.exists():
        done = {c["key"]: c for c in map(json.loads, store.read_text().splitlines()) if c}
    todo = [(r, t, c) for r in RECIPES for t in tasks for c in configs(grid) if cell_key(r, t, c) not in done]
    load = os.getloadavg()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool, store.open("a") as f:
        recipes, task_names, cfgs = (list(x) for x in zip(*todo, strict=True)) if todo else ([], [], [])
        for cell in pool.map(train_cell, recipes, task_names, cfgs, [overrides] * len(todo)):
            done[cell["key"]] = cell
            f.write(json.dumps(cell) + "\n")
            f.flush()
            print(
                f"  {cell['key']}: final val {cell['val_curve'][-1]:.3f} ({cell['seconds']} s)",
                file=sys.stderr,
            )
    summary = {
        "benchmark": "rung_signal",
        "grid": grid,
        "fixed": FIXED,
        "recipes": RECIPES,
        "recipe_overrides": RECIPE_OVERRIDES,
        "tasks": list(tasks),
        "epochs": epochs,
        "seed": 0,
        "trained_now": len(todo),
        "seconds": round(time.perf_counter() - t0, 1),
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "by_recipe": summarise(list(done.values()), tasks, epochs),
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if not args.smoke:
        (args.results / "rung_signal.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
