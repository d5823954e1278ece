"""What a launch found, typed: handed from the phases to export in process, saved as results.json.

results.json is the on-disk record of a launch (``vptsearch report``, ``export``, ``--resume``,
pipelines read it); :meth:`LaunchResults.to_dict` writes exactly its keys, in its order:
``{"launch_id", "tasks": {task: TaskResult}, "rows": [one summary row per task], "error"?,
"bundles_dir"?}``. Seeds are ``int`` here and string keys in the file (JSON has no others).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vptsearch._atomic import write_atomic
from vptsearch.search._protocol import TaskSelection, TrialRecord, mean_std
from vptsearch.search._rundir import RESULTS_FILE

COUNTED = ("completed", "pruned", "diverged", "failed")  # the summary row's trial counts


@dataclass
class FinalRun:
    """One final-phase trial: the task's best configuration retrained with one seed, tested once."""

    status: str
    test_acc: float | None
    config: dict[str, Any]
    weights: str | None = None  # the saved trained tensors (completed runs with a checkpoint)

    def to_dict(self) -> dict[str, Any]:
        out = {"status": self.status, "test_acc": self.test_acc, "config": self.config}
        return out if self.weights is None else {**out, "weights": self.weights}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinalRun:
        return cls(d["status"], d.get("test_acc"), d["config"], d.get("weights"))


@dataclass
class TaskResult:
    """One task of a launch: its selection, its final seeds, what export and the probe added.

    ``group`` is the task's (shown in its summary row, not stored in its results.json entry).
    ``probed``: the probe step ran (the entry then has ``probe``, ``null`` when it was skipped);
    ``bundled``: export wrote the task's bundle (its row then has ``ensemble_test``).
    """

    group: str
    best: TrialRecord | None
    per_init: dict[str, TrialRecord]
    per_method: dict[str, TrialRecord]
    counts: dict[str, int]
    seeds: list[int]  # final seeds that ran, in the spec's order
    test_accs: dict[int, float]  # completed final seeds only
    test_mean: float
    test_std: float
    exported_seed: int | None  # the first completed seed with saved weights
    final: dict[int, FinalRun]
    probe: dict[str, Any] | None = None
    probed: bool = False
    ensemble_test_acc: float | None = None  # the bundle's ensemble (several members), set by export
    bundled: bool = False

    def member_seeds(self) -> list[int]:
        """Final seeds with a test accuracy and saved weights, the exported one first."""
        done = [
            s
            for s in self.seeds
            if s in self.test_accs and (f := self.final.get(s)) is not None and f.weights is not None
        ]
        return [] if self.exported_seed is None else \
            [self.exported_seed, *[s for s in done if s != self.exported_seed]]  # fmt: skip

    def row(self, task: str) -> dict[str, Any]:
        """The task's line of the summary table (results.json ``rows``, summary.md)."""
        best = self.best
        cfg = best.config if best else {}
        out: dict[str, Any] = {
            "task": task,
            "group": self.group,
            "method": cfg.get("method"),
            "p": cfg.get("prompt.length"),
            "init": cfg.get("prompt.init"),
            "tuned_percent": best.tuned_percent if best else None,
            "val_acc": best.val_acc if best else None,
            "test_mean": self.test_mean,
            "test_std": self.test_std,
            **{k: self.counts.get(k, 0) for k in COUNTED},
        }
        if self.probed:
            pr = self.probe
            out.update(
                probe_val=pr and pr["val_acc"],
                probe_test=pr and pr["test_acc"],
                gap_to_probe=self.gap_to_probe(),
            )
        if self.bundled:
            out["ensemble_test"] = self.ensemble_test_acc
        return out

    def gap_to_probe(self) -> float | None:
        """Test mean of the final seeds minus the probe's test accuracy, in points (None without
        both): how far the tuned winner is above (or under) the frozen-feature reference."""
        pr = self.probe
        if not pr or pr.get("test_acc") is None or not self.test_accs or self.test_mean != self.test_mean:
            return None
        return round(100 * (self.test_mean - pr["test_acc"]), 2)

    def to_dict(self) -> dict[str, Any]:
        """The task's results.json entry."""
        out: dict[str, Any] = {
            "best": dataclasses.asdict(self.best) if self.best else None,
            "per_init": {k: dataclasses.asdict(v) for k, v in self.per_init.items()},
            "per_method": {k: dataclasses.asdict(v) for k, v in self.per_method.items()},
            "counts": self.counts,
            "seeds": self.seeds,
            "test_accs": self.test_accs,
            "test_mean": self.test_mean,
            "test_std": self.test_std,
            "exported_seed": self.exported_seed,
            "final": {s: run.to_dict() for s, run in self.final.items()},
        }
        if self.probed:
            out["probe"] = self.probe
        if self.ensemble_test_acc is not None:
            out["ensemble_test_acc"] = self.ensemble_test_acc
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], row: dict[str, Any]) -> TaskResult:
        """A results.json entry and its summary row back into a TaskResult."""
        best = d.get("best")
        return cls(
            group=row.get("group", ""),
            best=TrialRecord(**best) if best else None,
            per_init={k: TrialRecord(**v) for k, v in d.get("per_init", {}).items()},
            per_method={k: TrialRecord(**v) for k, v in d.get("per_method", {}).items()},
            counts=d.get("counts", {}),
            seeds=[int(s) for s in d.get("seeds", [])],
            test_accs={int(s): a for s, a in d.get("test_accs", {}).items()},
            test_mean=d.get("test_mean", float("nan")),
            test_std=d.get("test_std", float("nan")),
            exported_seed=d.get("exported_seed"),
            final={int(s): FinalRun.from_dict(f) for s, f in d.get("final", {}).items()},
            probe=d.get("probe"),
            probed="probe" in d,
            ensemble_test_acc=d.get("ensemble_test_acc"),
            bundled="ensemble_test" in row,
        )


@dataclass
class LaunchResults:
    """Every task of one launch, in the suite's order; ``error``: why it failed after its search."""

    launch_id: str
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    error: str | None = None
    bundles_dir: str | None = None  # where export put this launch's bundles

    def rows(self) -> list[dict[str, Any]]:
        return [t.row(task) for task, t in self.tasks.items()]

    def best_configs(self) -> dict[str, dict[str, Any]]:
        """Each task's winning trial config (tasks without a completed trial are left out)."""
        return {task: t.best.config for task, t in self.tasks.items() if t.best is not None}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "launch_id": self.launch_id,
            "tasks": {task: t.to_dict() for task, t in self.tasks.items()},
            "rows": self.rows(),
        }
        if self.error is not None:
            out["error"] = self.error
        if self.bundles_dir is not None:
            out["bundles_dir"] = self.bundles_dir
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LaunchResults:
        rows = {r["task"]: r for r in d.get("rows", [])}
        tasks = {task: TaskResult.from_dict(t, rows.get(task, {})) for task, t in d["tasks"].items()}
        return cls(d["launch_id"], tasks, d.get("error"), d.get("bundles_dir"))

    def save(self, run_dir: Path) -> Path:
        """Write ``<run_dir>/results.json`` (the same bytes the driver always wrote)."""
        # whole or not at all: report, export and resume read it back
        return write_atomic(Path(run_dir) / RESULTS_FILE, json.dumps(self.to_dict(), indent=2, default=str))

    @classmethod
    def load(cls, run_dir: Path) -> LaunchResults:
        return cls.from_dict(json.loads((Path(run_dir) / RESULTS_FILE).read_text()))


def collect(
    launch_id: str,
    selection: dict[str, TaskSelection],
    finals: dict[str, dict[int, FinalRun]],
    seeds: tuple[int, ...],
    groups: dict[str, str],
) -> LaunchResults:
    """The results of the tasks in ``groups`` (task -> group, in the suite's order) from their
    selection and their final runs of the spec's final ``seeds``."""
    out = LaunchResults(launch_id)
    for task, group in groups.items():
        sel, fin = selection[task], finals.get(task, {})
        ran = [s for s in seeds if s in fin]
        # a completed final trial always reported its test accuracy (the trainable's last result)
        accs = {s: acc for s in ran if fin[s].status == "completed" and (acc := fin[s].test_acc) is not None}
        mean, std = mean_std(list(accs.values()))
        exported = next((s for s in ran if s in accs and fin[s].weights is not None), None)
        out.tasks[task] = TaskResult(
            group=group, best=sel.best, per_init=sel.per_init, per_method=sel.per_method,
            counts=sel.counts, seeds=ran, test_accs=accs, test_mean=mean, test_std=std,
            exported_seed=exported, final={s: fin[s] for s in ran},
        )  # fmt: skip
    return out


@dataclass
class LaunchSummary:
    """What :func:`~vptsearch.search.launch` returns: where the launch is and its summary rows."""

    launch_id: str
    run_dir: Path
    tracking_uri: str
    experiment: str
    rows: list[dict[str, Any]]
    bundles: dict[str, Path] = field(default_factory=dict)
    dashboard_url: str | None = None
    seconds: float = 0.0
    unsynced: int = 0  # MLflow writes still in the spool (tracking store unreachable at the end)

    def problems(self) -> list[str]:
        """Why the launch has no result for some task (the CLI then exits 1): a task whose search
        completed no trial, a task with no exported bundle, or nothing exported at all."""
        out = []
        for r in self.rows:
            counts = ", ".join(f"{r.get(k, 0)} {k}" for k in ("completed", "pruned", "diverged", "failed"))
            if r.get("val_acc") is None:
                out.append(f"task {r['task']} has no completed trial ({counts})")
            elif r["task"] not in self.bundles:
                out.append(f"task {r['task']} was not exported (no final seed completed)")
        if not self.bundles:
            out.append("nothing was exported")
        return out
