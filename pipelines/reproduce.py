"""Reproduce the VPT / SPT / "VPT or full fine-tuning?" claims in miniature, through vptsearch itself.

    mkdir -p runs/repro                                      # then the full run, in the background:
    nohup nice -n 5 .venv/bin/python pipelines/reproduce.py >> runs/repro/full.log 2>&1 &
    .venv/bin/python pipelines/reproduce.py --quick          # CI smoke: every code path, a few minutes
    .venv/bin/python pipelines/reproduce.py --report-only    # tables, plots, docs/results.md from records
    .venv/bin/python pipelines/reproduce.py --plan           # the launches and the wall-time estimate
    git add docs/results/launches && git commit                # after every sitting: the progress

The full plan (38 launches, 15 epochs, 3 lr values per method x 2 head-lr multiples but for full
fine-tuning, 3 seeds, 2 backbones, 5 tasks) is estimated at ~15 h on an idle 2-core machine
(``--plan`` prints the estimate per study); it runs the launches that decide the claims first, and
the same command continues it after any stop.

Every experiment is an ordinary search space run by ``vptsearch.search.launch`` (the same preflight,
Ray Tune + Optuna grid, MLflow tracking, final seeds and export that ``vptsearch launch`` uses):
per shipped backbone (supervised and MAE-style) the main table (full, linear, bias, adapter,
VPT-shallow, VPT-deep random, SPT-deep with spt-mean/max/sample/kmeans; select on val200, retrain
on train800val200 with 3 seeds, test, ensemble the seeds, probe the frozen features), the prompt-length
ablation (random vs SPT init, lr tuned per p), frozen-after-init prompts, and a train-size sweep
(100 / 800 / 3 800 MNIST images, full vs VPT). The plan and its sizes are in
``pipelines/_repro_plan.py``; tables, claims (paired differences, bootstrap intervals) and plots in
``pipelines/_repro_report.py``.

Progress is the launch records, not the run folders: every session starts on a fresh machine from a
clean clone, and ``runs/`` and ``mlflow.db`` are not tracked. Each launch that finishes writes
``docs/results/launches/<launch>.json`` (quick: ``runs/repro-quick/launches/``; sorted keys, written
atomically): its spec identity (``IDENTITY_KEYS``), its whole ``results.json``, wall time, date,
machine and versions. **Rule: commit ``docs/results/launches/*.json`` after every sitting** (after a
stop, too: what finished is kept), e.g. ``git add docs/results/launches docs/results.md docs/results``.

Incremental: a launch whose record holds the same spec identity is done and skipped, with or without a
run folder; a record of another identity (the space or sizes changed) is stale and the launch is
redone (the log and ``--plan`` say so). Without a record, the latest run folder of this machine
(``runs/repro/<launch>/<stamp>``) decides: ``results.json`` of the same spec = done (harvested into a
record), no results = resumed (``launch(resume=True)``). Stop it any time and run the same command
again to continue. One Ray instance serves every launch.
Outputs: ``docs/results.md`` + ``docs/results/*.png`` (quick: ``runs/repro-quick/``), built from the
records alone, and an MLflow experiment ``repro`` (quick: ``repro-quick``) with a ``repro-report``
parent run holding the tables, claims and plots as artifacts. That experiment only holds the launches
run on this machine (the store is local): the page and claims cover every record, the per-launch
MLflow runs do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _repro_plan import FULL, QUICK, Launch, Sizes, estimate_seconds, plan, spec_dict
from _repro_report import Finished, cpu_model

FULL_CMD = ("mkdir -p runs/repro && nohup nice -n 5 .venv/bin/python pipelines/reproduce.py "
            ">> runs/repro/full.log 2>&1 &")


# What makes two launches the same experiment (new spec sections, e.g. storage, do not).
IDENTITY_KEYS = (
    "name", "suite", "backbone", "method", "params", "search", "scheduler", "training", "protocol"
)
RECORDS = "docs/results/launches"  # the tracked progress of the full run (quick: <run dir>/launches)
RECORD_FORMAT = 1
VERSIONED = ("vptsearch", "torch", "ray", "optuna", "mlflow", "numpy")


def _identity(spec_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: spec_dict.get(k) for k in IDENTITY_KEYS}


def _canonical(x: Any) -> Any:
    """The JSON form (tuples as lists, keys as strings) in which identities are stored and compared."""
    return json.loads(json.dumps(x, sort_keys=True))


def spec_identity(spec: Any) -> dict[str, Any]:
    return _canonical(_identity(spec.to_dict()))


def _as_parsed_today(recorded: dict[str, Any], spec: Any) -> dict[str, Any]:
    """A recorded identity as today's spec parser reads it: a spec field added to vptsearch since the
    record was written (with its default) must not make every record stale and cost the whole run."""
    from vptsearch._errors import ConfigError
    from vptsearch.spec import spec_from_dict

    params = recorded.get("params")
    if isinstance(params, dict) and "head.init" not in params:
        # before issue 28 every head started at nn.Linear's draw and trained at the prompts' lr
        recorded = {**recorded, "params": {**params, "head.init": "random", "optim.head_lr_scale": 1.0}}
    training = recorded.get("training")
    if isinstance(training, dict) and "precise_bn_images" not in training:
        # before precise BN (issue 28) evaluations used the training's running averages
        recorded = {**recorded, "training": {**training, "precise_bn_images": 0}}
    try:
        return spec_identity(spec_from_dict({**spec.to_dict(), **recorded}, source="record"))
    except ConfigError:  # a field vptsearch no longer knows: not the same experiment any more
        return _canonical(recorded)


# --- records: one tracked JSON file per finished launch (runs/ is not tracked) --------------------
def record_path(records: Path, name: str) -> Path:
    return records / f"{name}.json"


def read_record(records: Path, name: str) -> dict[str, Any] | None:
    path = record_path(records, name)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # e.g. a merge conflict: say which file, never redo silently
        raise SystemExit(f"{path}: not a launch record ({exc}); restore it from git or delete it") from None


def record_text(record: dict[str, Any]) -> str:
    """Sorted keys, fixed indent: the same record gives the same bytes (clean diffs in git)."""
    return json.dumps(record, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_record(records: Path, record: dict[str, Any]) -> Path:
    """Atomically (temp file + rename in the same folder): a stop mid-write leaves the old record or none."""
    path = record_path(records, record["launch"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(record_text(record))
    os.replace(tmp, path)
    return path


def make_record(name: str, identity: dict[str, Any], results: dict[str, Any], *, seconds: float | None,
                launch_seconds: float | None, finished: str, machine: dict[str, Any],
                versions: dict[str, Any]) -> dict[str, Any]:
    """Everything the report needs of one launch, independent of the machine's run folders."""
    return _canonical({
        "format": RECORD_FORMAT, "launch": name, "identity": identity, "results": results,
        "timing": {"seconds": seconds, "launch_seconds": launch_seconds}, "finished": finished,
        "machine": machine, "versions": versions,
    })


def this_machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "cpu": cpu_model(),
            "system": f"{platform.system()} {platform.release()}"}


def versions() -> dict[str, Any]:
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["commit"] = _git_commit()
    return out


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# --- the state of a launch: record first, then this machine's run folders -------------------------
@dataclass(frozen=True)
class State:
    """``done``: a record (or a finished run folder) of this very spec; ``resume``: a run folder of
    this spec without results; ``new``. ``stale``: the launch's record is of another spec (redone)."""

    state: str
    run_dir: Path | None = None  # resume: the folder to continue; done: the finished folder, if here
    record: dict[str, Any] | None = None  # done: the record (harvested from run_dir if not on disk)
    recorded: bool = False  # done: the record is already on disk
    stale: bool = False


def _run_dir_state(spec: Any) -> tuple[str, Path | None]:
    """This machine's latest run folder of the launch: done / resume (same spec) or new."""
    from vptsearch.search import latest_run_dir
    from vptsearch.spec import read_yaml

    latest = latest_run_dir(spec)
    if latest is None:
        return "new", None
    raw = read_yaml(latest / "spec.yaml")
    saved = _canonical({k: raw[k] for k in IDENTITY_KEYS if k in raw})
    if _as_parsed_today(saved, spec) != spec_identity(spec):  # space, sizes or recipe changed: fresh
        return "new", None
    results = latest / "results.json"
    # a launch that failed after its search writes results.json with its error: resume, not done
    done = results.is_file() and "error" not in json.loads(results.read_text())
    return ("done" if done else "resume"), latest


def launch_state(spec: Any, records: Path) -> State:
    """Where the launch stands; reads only (a finished run folder without a record is harvested by
    :func:`finished`, not here, so that ``--plan`` writes nothing)."""
    record = read_record(records, spec.name)
    same = record is not None and _as_parsed_today(record["identity"], spec) == spec_identity(spec)
    state, run_dir = _run_dir_state(spec)
    if same:
        return State("done", run_dir if state == "done" else None, record, recorded=True)
    stale = record is not None
    if state == "done" and run_dir is not None:
        return State("done", run_dir, harvest(spec, run_dir), stale=stale)
    return State(state, run_dir, stale=stale)


def harvest(spec: Any, run_dir: Path) -> dict[str, Any]:
    """The record of a launch finished before records existed (or whose record was never written):
    its results.json, its time from the old runs/repro/timings.json, the date results.json was written;
    machine and versions are this machine's now (the run folder does not say which it ran with)."""
    results_file = run_dir / "results.json"
    legacy = run_dir.parent.parent / "timings.json"  # <run dir>/<launch>/<stamp> -> <run dir>/timings.json
    timing = (json.loads(legacy.read_text()) if legacy.is_file() else {}).get(spec.name, {})
    if timing.get("status") != "done" or Path(timing.get("run_dir", "")).resolve() != run_dir.resolve():
        timing = {}
    return make_record(spec.name, spec_identity(spec), json.loads(results_file.read_text()),
                       seconds=timing.get("seconds"), launch_seconds=timing.get("launch_seconds"),
                       finished=_utc(results_file.stat().st_mtime), machine=this_machine(),
                       versions=versions())


def finished(spec: Any, records: Path) -> Finished | None:
    """The finder of :func:`_repro_report.collect`: the launch's record if it is done (a finished run
    folder without one is harvested into its record now), else None."""
    st = launch_state(spec, records)
    if st.state != "done" or st.record is None:
        return None
    path = record_path(records, spec.name) if st.recorded else write_record(records, st.record)
    return Finished(st.record, path, st.run_dir)


def state_text(st: State) -> str:
    """The state column of --plan and the run log."""
    if st.state == "done":
        return "done" if st.recorded else "done (run folder; its record is written on the next run)"
    return st.state + (" (its record is of an older spec: redone)" if st.stale else "")


def specs(launches: list[Launch], sizes: Sizes, args: argparse.Namespace) -> list[Any]:
    from vptsearch.data import data_root
    from vptsearch.spec import spec_from_dict

    root = str(data_root(args.root))
    return [
        spec_from_dict(spec_dict(lc, sizes, run_dir=args.run_dir, tracking_uri=args.tracking_uri,
                                 experiment=args.experiment, data_root=root), source=lc.name)
        for lc in launches
    ]


def run_all(launches: list[Launch], sizes: Sizes, args: argparse.Namespace) -> None:
    """Run (or resume, or skip) every launch; each one that finishes gets its record."""
    from _repro_data import build_size_tasks

    from vptsearch._errors import VptsearchError
    from vptsearch.search import LaunchInterrupted, launch

    size_tasks = sorted({t for lc in launches if lc.study == "size" for t in lc.tasks})
    if size_tasks:
        build_size_tasks(args.root, tuple(size_tasks))
    ray_started = False
    for i, (lc, spec) in enumerate(zip(launches, specs(launches, sizes, args), strict=True), 1):
        st = launch_state(spec, args.records)
        head = f"[{i}/{len(launches)}] {lc.name}"
        if st.state == "done":
            note = ""
            if not st.recorded and st.record is not None:  # finished before records existed
                path = write_record(args.records, st.record)
                note = f" (its run folder harvested into {os.path.relpath(path)})"
            print(f"{head}: done, skipped{note}", flush=True)
            continue
        if not ray_started:
            import ray

            # address="local": always our own instance, never a `ray start` cluster another process runs
            ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING")
            ray_started = True
        stale = " (its record is of an older spec: redone)" if st.stale else ""
        print(f"{head}: {'resuming' if st.state == 'resume' else 'starting'}{stale}", flush=True)
        t0 = time.perf_counter()
        try:
            summary = launch(spec, resume=st.state == "resume", dashboard=False,
                             say=lambda m: print(f"    {m}", flush=True))
        except LaunchInterrupted:
            raise
        except VptsearchError as exc:  # one broken launch must not cost the others
            print(f"{head}: FAILED: {exc}", flush=True)
            continue
        path = record_finished(spec, summary.run_dir, seconds=time.perf_counter() - t0,
                               launch_seconds=summary.seconds, records=args.records)
        print(f"{head}: record {os.path.relpath(path)}", flush=True)


def record_finished(spec: Any, run_dir: Path, *, seconds: float, launch_seconds: float,
                    records: Path) -> Path:
    """Write the record of a launch that has just finished in ``run_dir``."""
    results = json.loads((run_dir / "results.json").read_text())
    record = make_record(spec.name, spec_identity(spec), results, seconds=round(seconds, 1),
                         launch_seconds=round(launch_seconds, 1), finished=_utc(time.time()),
                         machine=this_machine(), versions=versions())
    return write_record(records, record)


def print_plan(launches: list[Launch], sizes: Sizes, args: argparse.Namespace) -> None:
    """The launches in run order with their state (from the records, then the run folders here) and
    estimated minutes."""
    left = 0.0
    for i, (lc, spec) in enumerate(zip(launches, specs(launches, sizes, args), strict=True), 1):
        st = launch_state(spec, args.records)
        minutes = estimate_seconds([lc], sizes)["total"] / 60
        left += 0 if st.state == "done" else minutes
        print(f"{i:3d}. {lc.name:<40} {lc.study:<7} {len(lc.tasks)} task(s) x {len(lc.lrs)} lr  "
              f"~{minutes:5.1f} min  {state_text(st)}")
    est = estimate_seconds(launches, sizes)
    print(f"estimate: {est['total'] / 3600:.1f} h in all (" + ", ".join(
        f"{k} {v / 3600:.1f} h" for k, v in est.items() if k != "total") + f"); left: {left / 60:.1f} h; "
        f"records: {args.records}")


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
    ap.add_argument("--records", default=None,
                    help=f"launch records, the progress to commit (default: {RECORDS}; "
                         "quick: in the run dir)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                    help="CPUs for the local Ray (default: all)")
    args = ap.parse_args(argv)
    tag = "repro-quick" if args.quick else "repro"
    args.run_dir = args.run_dir or f"runs/{tag}"
    args.experiment = args.experiment or tag
    args.records = Path(args.records or (f"{args.run_dir}/launches" if args.quick else RECORDS))
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
    from _repro_report import collect, publish, timings_of

    results = collect(launches, specs(launches, sizes, args), lambda spec: finished(spec, args.records))
    publish(results, sizes, out=out, command=command, timings=timings_of(results),
            tracking_uri=args.tracking_uri, experiment=args.experiment, full_cmd=command, launches=launches,
            records=os.path.relpath(args.records))
    print(f"results: {out}  ({results['finished']}/{results['total']} launches finished; "
          f"this invocation took {time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
