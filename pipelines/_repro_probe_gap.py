"""The convergence check of the reproduction: main-table cells below the frozen-feature probe, and
the longer-budget learning curves of ``pipelines/repro_convergence.py`` (pure: dicts in, text out)."""

from __future__ import annotations

from typing import Any

from _repro_tables import pct, points, short, variant_rank

# A cell this far under the probe's test accuracy is listed: the linear row's model class contains the
# probe's, so a gap larger than seed noise (the rows' std is 0.1-4 points) means it did not converge.
PROBE_MARGIN = 0.03


def below_probe(res: dict[str, Any], margin: float = PROBE_MARGIN) -> list[dict[str, Any]]:
    """Every (backbone, row, task) whose mean test accuracy is more than ``margin`` under the probe."""
    out = []
    for bb, table in res.get("main", {}).items():
        probe = res.get("probe", {}).get(bb, {})
        for variant in sorted(table, key=variant_rank):
            for task, cell in sorted(table[variant].items()):
                ref = probe.get(task, {}).get("test")
                if ref is None or cell.get("mean") is None:
                    continue
                gap = cell["mean"] - ref
                if gap < -margin:
                    out.append({"backbone": bb, "row": variant, "task": task, "test": cell["mean"],
                                "probe": ref, "gap": gap})
    return out


def below_probe_md(res: dict[str, Any], margin: float = PROBE_MARGIN) -> str:
    """Per backbone and task: the rows more than ``margin`` under the probe, with their gap in points."""
    cells = below_probe(res, margin)
    if not cells:
        return f"No main-table cell is more than {100 * margin:.0f} points under the probe."
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        by.setdefault((c["backbone"], c["task"]), []).append(c)
    lines = ["| backbone | task | probe test | rows under it (gap in points) |", "|---|---|---|---|"]
    for (bb, task), cs in sorted(by.items()):
        rows = ", ".join(f"{c['row']} ({points(c['gap'], True)})" for c in cs)
        lines.append(f"| {bb} | {short(task)} | {pct(cs[0]['probe'])} | {rows} |")
    total = sum(len(t) for b in res.get("main", {}).values() for t in b.values())
    lines += ["", f"{len(cells)} of {total} main-table cells are more than {100 * margin:.0f} points under "
              "the probe."]
    return "\n".join(lines)


def verdict(short_run: dict[str, Any], long_run: dict[str, Any]) -> str:
    """``none to close`` (the short run is already within 2 points of the probe's val accuracy),
    ``closes`` the gap (the long run is), ``narrows`` it by at least half, or ``no``; judged on the
    mean of the last three epochs' val accuracy."""
    probe = long_run.get("probe_val")
    if probe is None:
        return "–"
    if short_run["val_last3"] >= probe - 0.02:
        return "none to close"
    if long_run["val_last3"] >= probe - 0.02:
        return "closes"
    gap = probe - short_run["val_last3"]
    return "narrows" if gap > 0 and long_run["val_last3"] - short_run["val_last3"] >= gap / 2 else "no"


def _by_cell(entries: dict[str, Any], kind: str) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """``(launch, task) -> epochs -> entry`` for the entries of one ``kind`` (``trial`` when unset)."""
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for e in entries.values():
        if e.get("kind", "trial") == kind:
            cells.setdefault((e["launch"], e["task"]), {})[int(e["epochs"])] = e
    return cells


def convergence_md(entries: dict[str, Any]) -> str:
    """One row per measured cell: val at the reproduction's budget and at the longer one vs the probe."""
    pairs = {k: v for k, v in _by_cell(entries, "trial").items() if len(v) >= 2}
    if not pairs:
        return ""
    lines = ["| launch | task | base lr | probe C | probe val | val, short | val, long "
             "| train acc short → long | more epochs |", "|---|---|---|---|---|---|---|---|---|"]
    for (launch, task), by in sorted(pairs.items()):
        lo, hi = by[min(by)], by[max(by)]
        lines.append(
            f"| {launch} | {short(task)} | {lo['config'].get('optim.base_lr')} | {lo.get('probe_C')} "
            f"| {pct(lo.get('probe_val'))} | {pct(lo['val_last3'])} ({min(by)} ep) | {pct(hi['val_last3'])} "
            f"({max(by)} ep) | {pct(lo['train_acc_last'])} → {pct(hi['train_acc_last'])} "
            f"| {verdict(lo, hi)} |")
    return "\n".join(lines)


def head_only_md(entries: dict[str, Any]) -> str:
    """The linear cells' head on cached features: val (train) accuracy per number of epochs."""
    cells = _by_cell(entries, "head_only")
    if not cells:
        return ""
    grid = sorted({ep for by in cells.values() for ep in by})
    lines = ["| launch | task | lr | " + " | ".join(f"{ep} ep" for ep in grid)
             + " | probe val (C) | probe val, C = 10⁴ |", "|---|---|---|" + "---|" * len(grid) + "---|---|"]
    for (launch, task), by in sorted(cells.items()):
        any_e = next(iter(by.values()))
        vals = " | ".join(f"{pct(by[ep]['val_acc'])} ({pct(by[ep]['train_acc'])})" if ep in by else "–"
                          for ep in grid)
        lines.append(f"| {launch} | {short(task)} | {any_e['lr']} | {vals} | {pct(any_e.get('probe_val'))} "
                     f"({any_e.get('probe_C')}) | {pct(any_e.get('probe_val_C1e4'))} |")
    return "\n".join(lines)
