"""The reproduction's claims: each a paired difference with its bootstrap interval and a verdict by
the rule of ``_repro_stats`` (TRUE / FALSE / UNDECIDED, or n/a while a launch it needs is missing)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from _repro_plan import SPT_INITS
from _repro_stats import bootstrap_ci, paired, seed_accs, verdict
from _repro_tables import (
    DEEP_PROMPT_ROWS,
    TableResults,
    ci_points,
    num,
    points,
    seed_ranges,
    short,
    train_images,
)

SPT_ROWS = tuple(f"{s}-deep" for s in SPT_INITS)  # the SPT claims' rows
Gains = dict[str, dict[str, dict[str, float]]]  # backbone -> task -> seed -> SPT gain over VPT-deep


def _ci_text(ci: dict[str, float] | None, what: str) -> str:
    if ci is None:
        return "no paired values yet"
    return (f"Δ {points(ci['mean'], True)} points, 95 % CI [{points(ci['lo'], True)}, "
            f"{points(ci['hi'], True)}] over {ci['units']} {what} ({ci['cells']} paired values)")


def _done(res: dict[str, Any], study: str, variants: Sequence[str] | None = None) -> bool:
    """Every launch of ``study`` (restricted to ``variants``) in the plan has finished."""
    return all(x["done"] for x in res["launches"]
               if x["study"] == study and (variants is None or x["variant"] in variants))


def _units_text(units: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {points(statistics.fmean(v), True)}" for k, v in units.items() if v)


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
            parts.append(f"{bb} {ci_points(ci)}")
    return "per backbone: " + ", ".join(parts) if len(parts) > 1 else ""


def _tasks_of(table: TableResults, row: str) -> list[str]:
    return sorted(table.get(row, {}))


def claims(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The six statements, each with a verdict (TRUE / FALSE / UNDECIDED / n/a), its rule, the paired
    per-unit differences and the bootstrap interval."""
    gain = _spt_gains(res)
    return [_spt_beats_vpt(res, gain), _spt_gain_larger_on_mae(res, gain), _vpt_beats_linear_structured(res),
            _spt_less_length_sensitive(res), _full_gains_with_data(res), _ensemble_beats_seed_mean(res)]


def _spt_gains(res: dict[str, Any]) -> Gains:
    """Per backbone, task and final seed: the mean test accuracy of the SPT initialisers minus VPT-deep's."""
    gain: Gains = {}
    for bb, table in res["main"].items():
        for t in _tasks_of(table, "vpt-deep"):
            vpt = seed_accs(table["vpt-deep"].get(t))
            # the SPT initialisers in the plan (all four in the full plan; _done() guards partial runs)
            spt = [seed_accs(table[r].get(t)) for r in SPT_ROWS if r in table]
            if not spt or not all(spt):
                continue
            common = set(vpt).intersection(*spt)
            gain.setdefault(bb, {})[t] = {s: statistics.fmean(x[s] for x in spt) - vpt[s]
                                          for s in sorted(common, key=int)}
    return gain


def _spt_beats_vpt(res: dict[str, Any], gain: Gains) -> dict[str, Any]:
    """1. SPT-deep (mean of the four initialisers) > random VPT-deep; units: backbone × task, cells: seeds."""
    units = {f"{bb}/{short(t)}": list(v.values()) for bb, ts in gain.items() for t, v in ts.items()}
    ready = _done(res, "main", ("vpt-deep", *SPT_ROWS)) and bool(units)
    return _claim(
        "spt_beats_vpt", "SPT-deep > random-init VPT-deep",
        "paired per (backbone, task, seed): mean test accuracy of the four SPT initialisers minus VPT-deep "
        "random; TRUE if the bootstrap 95 % CI of the mean difference is above 0", units, ready,
        "backbone × task units", _per_backbone(units))


def _spt_gain_larger_on_mae(res: dict[str, Any], gain: Gains) -> dict[str, Any]:
    """1b. The SPT gain is larger with the MAE backbone; units: task, cells: seeds (seed s of both)."""
    units = {}
    for t in sorted(set(gain.get("mae", {})) & set(gain.get("sup", {}))):
        g_mae, g_sup = gain["mae"][t], gain["sup"][t]
        units[short(t)] = [g_mae[s] - g_sup[s] for s in sorted(set(g_mae) & set(g_sup), key=int)]
    ready = _done(res, "main", ("vpt-deep", *SPT_ROWS)) and bool(units)
    return _claim(
        "spt_gain_larger_on_mae", "… especially with the MAE-style backbone",
        "paired per (task, seed): SPT gain (above) with vptsearch-tiny-mae minus the gain with "
        "vptsearch-tiny-sup; TRUE if the CI is above 0", units, ready, "task units")


def _vpt_beats_linear_structured(res: dict[str, Any]) -> dict[str, Any]:
    """2. VPT-deep > linear on the structured tasks; units: backbone × structured task, cells: seeds."""
    groups = res["groups"]
    units = {}
    for bb, table in res["main"].items():
        for t in _tasks_of(table, "vpt-deep"):
            if groups.get(t) == "structured" and t in table.get("linear", {}):
                units[f"{bb}/{short(t)}"] = paired(table["vpt-deep"][t], table["linear"][t])
    ready = _done(res, "main", ("vpt-deep", "linear")) and bool(units)
    return _claim(
        "vpt_beats_linear_structured", "VPT-deep > linear on the structured tasks",
        "paired per (backbone, structured task, seed): VPT-deep (random init) minus linear test "
        "accuracy; TRUE if the CI is above 0", units, ready, "backbone × task units", _per_backbone(units))


def _spt_less_length_sensitive(res: dict[str, Any]) -> dict[str, Any]:
    """3. SPT is less sensitive to the prompt length: per (backbone, task, seed) max − min over p."""
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
    return _claim(
        "spt_less_length_sensitive", "SPT is less sensitive to the prompt length than random init",
        "paired per (backbone, task, seed): max − min over p of VPT-deep random's test accuracy minus "
        "the same range with SPT init; TRUE if the CI is above 0", units, ready, "backbone × task units")


def _full_gains_with_data(res: dict[str, Any]) -> dict[str, Any]:
    """4. Full fine-tuning gains relative to VPT as the training set grows: gap(largest) − gap(smallest)."""
    full, vpt = res["size"].get("full", {}), res["size"].get("vpt-deep", {})
    order = sorted(set(full) & set(vpt), key=train_images)
    gaps = {t: paired(full[t], vpt[t]) for t in order}
    units = {}
    if len(order) >= 2:
        first, last = seed_accs(full[order[0]]), seed_accs(full[order[-1]])
        vf, vl = seed_accs(vpt[order[0]]), seed_accs(vpt[order[-1]])
        common = sorted(set(first) & set(last) & set(vf) & set(vl), key=int)
        units["mnist"] = [(last[s] - vl[s]) - (first[s] - vf[s]) for s in common]
    gap_cis = {t: bootstrap_ci([g]) for t, g in gaps.items()}
    extra = "gap full − VPT-deep per train size: " + ", ".join(
        f"n={train_images(t)} {ci_points(c)}" for t, c in gap_cis.items() if c)
    ready = _done(res, "size") and bool(units) and bool(units["mnist"])
    return _claim(
        "full_gains_with_data", "full fine-tuning gains relative to VPT as training data grows",
        "paired per final seed: (full − VPT-deep) test accuracy at the largest train size minus the same "
        "gap at the smallest; TRUE if the CI is above 0 (one task, so the interval is over seeds only)",
        units, ready, "task", extra if gap_cis else "",
        {f"gap_n{train_images(t)}": c and c["mean"] for t, c in gap_cis.items()})


def _ensemble_beats_seed_mean(res: dict[str, Any]) -> dict[str, Any]:
    """5. Ensembling the final seeds' prompts beats their mean (VPT Fig. 15); units: backbone × task,
    cells: the deep-prompt rows (VPT-deep random and the four SPT inits)."""
    units = {}
    for bb, table in res["main"].items():
        for t in sorted({t for r in DEEP_PROMPT_ROWS for t in table.get(r, {})}):
            diffs = []
            for r in DEEP_PROMPT_ROWS:
                c = table.get(r, {}).get(t) or {}
                ens, mean = num(c.get("ensemble")), num(c.get("mean"))
                if ens is not None and mean is not None:
                    diffs.append(ens - mean)
            if diffs:
                units[f"{bb}/{short(t)}"] = diffs
    ready = _done(res, "main", DEEP_PROMPT_ROWS) and bool(units)
    return _claim(
        "ensemble_beats_seed_mean", "an ensemble of the final seeds' prompts beats their mean (VPT Fig. 15)",
        "paired per (backbone, task, deep-prompt row): test accuracy of the bundle's logit-averaged "
        "ensemble of the final seeds minus the mean of the seeds' own test accuracies; TRUE if the CI is "
        "above 0", units, ready, "backbone × task units", _per_backbone(units))
