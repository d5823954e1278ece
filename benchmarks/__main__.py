"""One entry point for the benchmarks: the fast ones by default, the search-efficiency one with --full.

    python -m benchmarks                 # model step, data reader, platform overhead, SPT init, import memory
    python -m benchmarks --full          # + search efficiency (trains the missing grid cells, then replays)
                                         #   + the simulated-GPU launch (old vs new engine, local and S3)
    python -m benchmarks --smoke         # every benchmark in its smoke mode (what the CI-style tests run)
    python -m benchmarks --only spt_init,model_step

Each benchmark is loaded from its file and its ``main(argv)`` called in this process, one after the
other (never in parallel: they time things), with its own JSON diverted to stderr; stdout gets one
combined JSON object ({"benchmarks": {name: result}, "headline": ..., "errors": ...}) and stderr a
short table. The exit status is 1 when a benchmark raised (timings never fail a run).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# name -> argv of the default (fast) run, each sized to take about a minute or two on 2 cores.
FAST: dict[str, list[str]] = {
    "model_step": ["--repeats", "3", "--kmeans-images", "500"],
    "data_reader": ["--images", "2000", "--rounds", "3"],
    "platform_overhead": [],  # the 1 000 no-op trials
    "spt_init": [],
    "import_memory": [],  # 50 000 images imported twice (and 5 000): ~2 min
}
FULL: dict[str, list[str]] = {
    "gpu_sim": [],  # 16 slots, 19 tasks, old and new engine, local and S3: ~15-20 min on 2 cores
    "search_efficiency": ["--full"],
}


def _headline(name: str, r: dict[str, Any]) -> str:
    """The one figure of each benchmark that its target is about ('' if its JSON lacks the fields)."""
    try:
        return _figure(name, r)
    except (KeyError, TypeError, ValueError):  # a benchmark's JSON changed shape: say so, don't crash
        return ""


def _figure(name: str, r: dict[str, Any]) -> str:
    if name == "model_step":
        return ", ".join(f"{k}={v}" for k, v in r["ratios"].items() if k.startswith("prefix_kv_p")
                         or k.startswith("vpt_deep_prefix_kv"))
    if name == "data_reader":
        return f"shard/in-memory = {r['ratio_shard_over_list']} (target >= {r['target_ratio']})"
    if name == "platform_overhead":
        return (f"{r['overhead_ms_per_trial']} ms/trial (target <= {r['target_ms_per_trial']}; "
                f"stock Tune alone {r['tune_floor']['overhead_ms_per_trial']})")
    if name == "spt_init":
        worst = max(v["spt-kmeans"] for v in r["ratio_to_trial"].values() if "spt-kmeans" in v)
        return f"spt-kmeans <= {100 * worst:.2f} % of a {r['trial']['seconds']:.0f} s trial (target <= 5 %)"
    if name == "import_memory":
        target = f"target <= {r['target_mb']:.0f}"
        return f"peak RSS {r['peak_rss_mb']} MB importing {r['images']} images ({target})"
    if name == "gpu_sim":
        eff = r["steady_efficiency"]
        return ", ".join(f"{k}={v}" for k, v in eff.items()) + " (targets: new local >= 0.90, s3 >= 0.80)"
    if name == "search_efficiency":
        m = r["shipped_method"]
        o, ratio = r["overall_fraction_to_found"].get(m, {}), r["vs_random_asha_epochs_to_found"].get(m)
        return (f"{m} median {o.get('median')} of the grid's epochs to found, {ratio}x random_asha "
                "(targets <= 0.10, <= 0.5x)")
    return ""


def _met(r: dict[str, Any]) -> Any:
    met = r.get("meets_target", r.get("targets_met"))
    return all(met.values()) if isinstance(met, dict) else met


def load(name: str) -> Callable[[list[str]], dict[str, Any]]:
    """``benchmarks/bench_<name>.py``'s main, loaded by path (Ray then pickles its functions by value)."""
    path = HERE / f"bench_{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run(names: list[str], argv_of: dict[str, list[str]], say: Callable[[str], None]) -> dict[str, Any]:
    import torch

    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names:
        say(f"== {name} {' '.join(argv_of[name])}")
        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(sys.stderr):
                results[name] = load(name)(list(argv_of[name]))
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            errors[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        finally:
            torch.set_num_threads(threads)  # benchmarks set it process-wide
            seconds[name] = round(time.perf_counter() - t0, 1)
    return {
        "benchmarks": results,
        "headline": {n: _headline(n, r) for n, r in results.items()},
        "meets_target": {n: _met(r) for n, r in results.items()},
        "seconds": seconds,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    everything = [*FAST, *FULL]
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="also the search-efficiency and GPU-sim benchmarks")
    mode.add_argument("--smoke", action="store_true", help="every benchmark in smoke mode (seconds each)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(everything)}")
    ap.add_argument("--out", type=Path, default=None, help="also write the combined JSON here")
    args = ap.parse_args(argv)
    names = everything if (args.full or args.smoke) else list(FAST)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in names if n not in everything]
        if bad or not names:
            bad_name = bad[0] if bad else args.only
            ap.error(f"--only {bad_name!r}: unknown benchmark; accepted: {', '.join(everything)}")
    sized = {**FAST, **FULL}
    argv_of = {n: ["--smoke"] if args.smoke else sized[n] for n in names}

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    out = {"smoke": args.smoke, **run(names, argv_of, say)}
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)
    say(f"\n{'benchmark':<18} {'s':>6}  {'target':<6}  headline")
    for n in names:
        met = out["meets_target"].get(n)
        status = "ERROR" if n in out["errors"] else {True: "met", False: "missed"}.get(met, "-")
        figure = out["headline"].get(n) or out["errors"].get(n, "")
        say(f"{n:<18} {out['seconds'][n]:>6}  {status:<6}  {figure}")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
