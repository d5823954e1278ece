"""Reproduce the VPT / SPT / "VPT or full fine-tuning?" claims in miniature, through vptsearch itself.

    mkdir -p runs/repro                                      # then the full run, in the background:
    nohup nice -n 5 .venv/bin/python pipelines/reproduce.py >> runs/repro/full.log 2>&1 &
    .venv/bin/python pipelines/reproduce.py --quick          # CI smoke: every code path, a few minutes
    .venv/bin/python pipelines/reproduce.py --report-only    # tables, plots, docs/results.md from disk
    .venv/bin/python pipelines/reproduce.py --plan           # the launches and the wall-time estimate

The full plan (38 launches, 15 epochs, 3 lr values per method, 3 seeds, 2 backbones, 5 tasks) is
estimated at ~11 h on an idle 2-core machine (``--plan`` prints the estimate per study); it runs the
launches that decide the claims first, and the same command continues it after any stop.

Every experiment is an ordinary search space run by ``vptsearch.search.launch`` (the same preflight,
Ray Tune + Optuna grid, MLflow tracking, final seeds and export that ``vptsearch launch`` uses):
per shipped backbone (supervised and MAE-style) the main table (full, linear, bias, adapter,
VPT-shallow, VPT-deep random, SPT-deep with spt-mean/max/sample/kmeans; select on val200, retrain
on train800val200 with 3 seeds, test, ensemble the seeds, probe the frozen features), the prompt-length
ablation (random vs SPT init, lr tuned per p), frozen-after-init prompts, and a train-size sweep
(100 / 800 / 3 800 MNIST images, full vs VPT). The plan and its sizes are in
``pipelines/_repro_plan.py``; tables, claims (paired differences, bootstrap intervals) and plots in
``pipelines/_repro_report.py``.

Incremental: a launch whose run folder (``runs/repro/<launch>/<stamp>``) holds ``results.json`` for
the same spec is skipped; an interrupted one is resumed (``launch(resume=True)``). Stop it any
time and run the same command again to continue. One Ray instance serves every launch.
Outputs: ``docs/results.md`` + ``docs/results/*.png`` (quick: ``runs/repro-quick/``), and an MLflow
experiment ``repro`` (quick: ``repro-quick``) holding every launch and a ``repro-report`` parent run
with the tables, claims and plots as artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _repro_plan import FULL, QUICK, Launch, Sizes, estimate_seconds, plan, spec_dict

FULL_CMD = ("mkdir -p runs/repro && nohup nice -n 5 .venv/bin/python pipelines/reproduce.py "
            ">> runs/repro/full.log 2>&1 &")


# What makes two launches the same experiment (new spec sections, e.g. storage, do not).
IDENTITY_KEYS = (
    "name", "suite", "backbone", "method", "params", "search", "scheduler", "training", "protocol"
)


def _identity(spec_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: spec_dict.get(k) for k in IDENTITY_KEYS}


def launch_state(spec: Any) -> tuple[str, Path | None]:
    """``done`` (results.json of this very spec), ``resume`` (same spec, unfinished) or ``new``."""
    from vptsearch.search import latest_run_dir
    from vptsearch.spec import read_yaml, spec_from_dict

    latest = latest_run_dir(spec)
    if latest is None:
        return "new", None
    saved = spec_from_dict(read_yaml(latest / "spec.yaml")).to_dict()
    if _identity(saved) != _identity(spec.to_dict()):  # space or sizes changed: a fresh launch
        return "new", None
    return ("done" if (latest / "results.json").is_file() else "resume"), latest


def finished_run_dir(spec: Any) -> Path | None:
    state, path = launch_state(spec)
    return path if state == "done" else None


def specs(launches: list[Launch], sizes: Sizes, args: argparse.Namespace) -> list[Any]:
    from vptsearch.data import data_root
    from vptsearch.spec import spec_from_dict

    root = str(data_root(args.root))
    return [
        spec_from_dict(spec_dict(lc, sizes, run_dir=args.run_dir, tracking_uri=args.tracking_uri,
                                 experiment=args.experiment, data_root=root), source=lc.name)
        for lc in launches
    ]


def run_all(launches: list[Launch], sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume, or skip) every launch; returns per-launch status and measured wall seconds."""
    from _repro_data import build_size_tasks

    from vptsearch._errors import VptsearchError
    from vptsearch.search import LaunchInterrupted, launch

    timings_path = Path(args.run_dir) / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    size_tasks = sorted({t for lc in launches if lc.study == "size" for t in lc.tasks})
    if size_tasks:
        build_size_tasks(args.root, tuple(size_tasks))
    ray_started = False
    for i, (lc, spec) in enumerate(zip(launches, specs(launches, sizes, args), strict=True), 1):
        state, _ = launch_state(spec)
        head = f"[{i}/{len(launches)}] {lc.name}"
        if state == "done":
            print(f"{head}: done, skipped", flush=True)
            continue
        if not ray_started:
            import ray

            # address="local": always our own instance, never a `ray start` cluster another process runs
            ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING")
            ray_started = True
        print(f"{head}: {'resuming' if state == 'resume' else 'starting'}", flush=True)
        t0 = time.perf_counter()
        try:
            summary = launch(spec, resume=state == "resume", dashboard=False,
                             say=lambda m: print(f"    {m}", flush=True))
        except LaunchInterrupted:
            raise
        except VptsearchError as exc:  # one broken launch must not cost the others
            print(f"{head}: FAILED: {exc}", flush=True)
            timings[lc.name] = {"status": "failed", "error": str(exc)}
        else:
            timings[lc.name] = {"status": "done", "seconds": round(time.perf_counter() - t0, 1),
                                "launch_seconds": round(summary.seconds, 1), "run_dir": str(summary.run_dir)}
        timings_path.parent.mkdir(parents=True, exist_ok=True)
        timings_path.write_text(json.dumps(timings, indent=1))
    return timings


def print_plan(launches: list[Launch], sizes: Sizes, args: argparse.Namespace) -> None:
    """The launches in run order with their state (done / resume / new) and estimated minutes."""
    left = 0.0
    for i, (lc, spec) in enumerate(zip(launches, specs(launches, sizes, args), strict=True), 1):
        state, _ = launch_state(spec)
        minutes = estimate_seconds([lc], sizes)["total"] / 60
        left += 0 if state == "done" else minutes
        print(f"{i:3d}. {lc.name:<40} {lc.study:<7} {len(lc.tasks)} task(s) x {len(lc.lrs)} lr  "
              f"~{minutes:5.1f} min  {state}")
    est = estimate_seconds(launches, sizes)
    print(f"estimate: {est['total'] / 3600:.1f} h in all (" + ", ".join(
        f"{k} {v / 3600:.1f} h" for k, v in est.items() if k != "total") + f"); left: {left / 60:.1f} h")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: one backbone, 2 tasks, 1 epoch")
    ap.add_argument("--plan", action="store_true",
                    help="print the launches in run order, whether each is done, and the time estimate")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild tables/plots/docs from finished launches")
    ap.add_argument("--root", default=None,
                    help="data root (default: $VPTSEARCH_DATA or ~/.cache/vptsearch/shards)")
    ap.add_argument("--run-dir", default=None,
                    help="launch folders (default: runs/repro, quick: runs/repro-quick)")
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                    help="MLflow store (default: %(default)s)")
    ap.add_argument("--experiment", default=None, help="MLflow experiment (default: repro / repro-quick)")
    ap.add_argument("--out", default=None,
                    help="results markdown (default: docs/results.md; quick: in the run dir)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                    help="CPUs for the local Ray (default: all)")
    args = ap.parse_args(argv)
    tag = "repro-quick" if args.quick else "repro"
    args.run_dir = args.run_dir or f"runs/{tag}"
    args.experiment = args.experiment or tag
    out = Path(args.out or (f"{args.run_dir}/results.md" if args.quick else "docs/results.md"))
    sizes = QUICK if args.quick else FULL
    launches = plan(args.quick)
    command = ".venv/bin/python pipelines/reproduce.py --quick" if args.quick else FULL_CMD
    if args.plan:
        print_plan(launches, sizes, args)
        return 0
    est = estimate_seconds(launches, sizes)
    hours = est["total"] / 3600
    when = f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.0f} min of training"
    print(f"plan: {len(launches)} launches, estimated {when} on an idle 2-core machine "
          "(finished launches are skipped)", flush=True)
    t0 = time.perf_counter()
    if not args.report_only:
        run_all(launches, sizes, args)
    from _repro_report import collect, publish

    results = collect(launches, specs(launches, sizes, args), finished_run_dir)
    timings_path = Path(args.run_dir) / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    publish(results, sizes, out=out, command=command, timings=timings, tracking_uri=args.tracking_uri,
            experiment=args.experiment, full_cmd=command, launches=launches)
    print(f"results: {out}  ({results['finished']}/{results['total']} launches finished; "
          f"this invocation took {time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
