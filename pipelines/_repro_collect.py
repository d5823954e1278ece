"""The reproduction's results, gathered from the finished launches' records (pure: the finder says
which launches are done and where their records lie)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _repro_plan import Launch


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
