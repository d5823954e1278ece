"""The reproduction's tables: rows computed from the collected results and their markdown (pure:
plain dicts in, rows / text out)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from _repro_plan import SPT_INITS, main_variants
from _repro_stats import bootstrap_ci, paired, seed_accs

GROUP_ORDER = ("natural", "specialized", "structured")
TableResults = dict[str, dict[str, dict[str, Any]]]  # variant -> task -> {mean, std, seeds, ...}
PROBE_ROW = "probe (frozen features)"
DEEP_PROMPT_ROWS = ("vpt-deep", *(f"{s}-deep" for s in SPT_INITS))  # the ensembling claim's rows


# --- numbers and names ----------------------------------------------------------------------------
def num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def mean_of_all(xs: list[float | None]) -> float | None:
    """Mean of the values, or None if any is missing (a group mean over part of its tasks misleads)."""
    if not xs or any(x is None for x in xs):
        return None
    return statistics.fmean(x for x in xs if x is not None)


def pct(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def points(x: float | None, sign: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}"


def ci_points(ci: dict[str, float]) -> str:
    """An interval as signed points: ``+1.2 [-0.3, +2.8]``."""
    return f"{points(ci['mean'], True)} [{points(ci['lo'], True)}, {points(ci['hi'], True)}]"


def short(task: str) -> str:
    return task.split("/", 1)[-1]


def train_images(task: str) -> int:
    tail = task.rsplit("_n", 1)[-1]
    return 3800 if tail == "all" else int(tail) if tail.isdigit() else 0


def variant_rank(variant: str) -> int:
    order = [v[0] for v in main_variants(1)]
    return order.index(variant) if variant in order else len(order)


def group_rank(group: str) -> int:
    return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)


# --- the main table -------------------------------------------------------------------------------
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
        accs = {t: num((per_task.get(t) or {}).get("mean")) for t in tasks}
        row: dict[str, Any] = {"variant": variant, "tasks": accs,
                               "std": {t: num((per_task.get(t) or {}).get("std")) for t in tasks}}
        row["groups"] = {g: mean_of_all([accs[t] for t in tasks if groups.get(t) == g]) for g in present}
        row["mean"] = mean_of_all(list(accs.values()))
        if variant == reference:
            row["wins"] = None
        else:
            pairs = [(accs[t], num((ref.get(t) or {}).get("mean"))) for t in tasks]
            row["wins"] = sum(1 for a, b in pairs if a is not None and b is not None and a > b)
            row["wins_of"] = sum(1 for a, b in pairs if a is not None and b is not None)
        row["tuned_percent"] = mean_of_all([num((per_task.get(t) or {}).get("tuned_percent")) for t in tasks])
        rows.append(row)
    return rows


def main_table_md(rows: list[dict[str, Any]], tasks: list[str], groups: dict[str, str]) -> str:
    present = [g for g in GROUP_ORDER if any(groups.get(t) == g for t in tasks)]
    head = ["method", *(f"{short(t)} ({groups.get(t, '?')[:3]})" for t in tasks)]
    head += [*(f"**{g}**" for g in present), "**mean**", "wins vs full", "tuned %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        wins = "–" if r["wins"] is None else f"{r['wins']}/{r.get('wins_of', 0)}"
        tuned = "–" if r["tuned_percent"] is None else f"{r['tuned_percent']:.2f}"
        cells = [r["variant"], *(pct(r["tasks"][t], r["std"][t]) for t in tasks),
                 *(pct(r["groups"][g]) for g in present), pct(r["mean"]), wins, tuned]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the other studies ----------------------------------------------------------------------------
def seed_ranges(points: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Prompt-length sensitivity of one (init, task): per final seed, max − min of the test accuracy
    over the prompt lengths (only seeds tested at every p; none with fewer than 2 lengths)."""
    if len(points) < 2:
        return {}
    per_p = [seed_accs(c) for c in points.values()]
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
                cells = [pct(num((v.get(p) or {}).get("mean")), num((v.get(p) or {}).get("std")))
                         for p in ps]
                lines.append(f"| {init} | {short(task)} | " + " | ".join(cells) + f" | {pct(span)} |")
        lines.append("")
    return "\n".join(lines)


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
                accs = [num((table.get(t) or {}).get("mean")) for t in tasks]
                lines.append(f"| {label} | " + " | ".join(
                    pct(a, num((table.get(t) or {}).get("std"))) for a, t in zip(accs, tasks, strict=True))
                    + f" | {pct(mean_of_all(accs))} |")
        lin = trained.get("linear")
        if lin:
            accs = [num((lin.get(t) or {}).get("mean")) for t in tasks]
            cells = " | ".join(pct(a) for a in accs)
            lines.append(f"| (linear: no prompts) | {cells} | {pct(mean_of_all(accs))} |")
        lines.append("")
    return "\n".join(lines)


def ensemble_table_md(res: dict[str, Any]) -> str:
    """Per backbone and row: the final seeds' ensemble test accuracy and its gain over the seed mean."""
    lines = []
    for bb, table in res["main"].items():
        rows = {v: table[v] for v in sorted(table, key=variant_rank)
                if any(num(c.get("ensemble")) is not None for c in table[v].values())}
        if not rows:
            continue
        tasks = sorted({t for v in rows.values() for t in v},
                       key=lambda t: (group_rank(res["groups"][t]), t))
        lines += [f"**{bb}** (ensemble test accuracy, and in brackets minus the mean of the seeds)", "",
                  "| method | " + " | ".join(short(t) for t in tasks) + " | mean gain |",
                  "|" + "---|" * (len(tasks) + 2)]
        for v, per_task in rows.items():
            gains: list[float | None] = []
            cells = []
            for t in tasks:
                c = per_task.get(t) or {}
                ens, mean = num(c.get("ensemble")), num(c.get("mean"))
                gains.append(None if ens is None or mean is None else ens - mean)
                cells.append("–" if ens is None else f"{pct(ens)} ({points(gains[-1], True)})")
            lines.append(f"| {v} | " + " | ".join(cells) + f" | {points(mean_of_all(gains), True)} |")
        lines.append("")
    return "\n".join(lines)


def size_table_md(res: dict[str, Any]) -> str:
    if not res["size"]:
        return "(not run yet)"
    ts = sorted({t for v in res["size"].values() for t in v}, key=train_images)
    lines = ["| method | " + " | ".join(f"n={train_images(t)}" for t in ts) + " |",
             "|" + "---|" * (len(ts) + 1)]
    for variant, per_task in res["size"].items():
        cells = [pct(num((per_task.get(t) or {}).get("mean")), num((per_task.get(t) or {}).get("std")))
                 for t in ts]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    full, vpt = res["size"].get("full", {}), res["size"].get("vpt-deep", {})
    if full and vpt:
        cells = []
        for t in ts:
            ci = bootstrap_ci([paired(full.get(t), vpt.get(t))])
            cells.append("–" if ci is None else ci_points(ci))
        lines.append("| full − vpt-deep (95 % CI over seeds) | " + " | ".join(cells) + " |")
    probe = res.get("probe", {}).get("sup", {})
    if any(t in probe for t in ts):
        lines.append("| probe (frozen features) | " + " | ".join(pct((probe.get(t) or {}).get("test"))
                                                            for t in ts) + " |")
    return "\n".join(lines)
