"""Applying spool records to one MLflow tracking store, idempotently.

A run is found again by its identifying tags before one is created, params already set are
skipped, and a metric is written once per ``(key, step)``: replaying a spool (``vptsearch sync``,
or the writer retrying after a failure) never doubles anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vptsearch.search._records import (
    ArtifactRecord,
    EndRecord,
    LogRecord,
    MetricPoint,
    PruneRecord,
    Record,
    RunRecord,
    ref_key,
)
from vptsearch.search._tracking_store import find_run, find_runs

MAX_BATCH_METRICS, MAX_BATCH_PARAMS, MAX_BATCH_TAGS = 900, 100, 100  # log_batch limits (1000/100/100)


@dataclass
class _PendingLog:
    """Consecutive log records of one run, merged into one ``log_batch``."""

    params: dict[str, str] = field(default_factory=dict)
    metrics: list[MetricPoint] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def add(self, rec: LogRecord) -> None:
        self.params.update(rec.params or {})
        self.metrics.extend(rec.metrics or [])
        self.tags.update(rec.tags or {})


class Applier:
    """Applies spool records to one tracking store, idempotently (see the module docstring).

    ``rewrite_metrics``: write every metric point, also at a step its run already has (a summary
    run rebuilt in place, where MLflow shows the newest value). Only for writes that are never
    replayed: a replay would then double the points.
    """

    def __init__(
        self, client: Any, experiment: str, artifact_location: str | None, *, rewrite_metrics: bool = False
    ) -> None:
        self.client, self.experiment, self.artifact_location = client, experiment, artifact_location
        self.rewrite_metrics = rewrite_metrics
        self._experiment_id: str | None = None
        self.defs: dict[str, RunRecord] = {}  # ref -> its run record (to create it if missing)
        self.ids: dict[str, str] = {}  # ref -> MLflow run id
        self.fresh: set[str] = set()  # refs of runs this applier created: their content is known
        self._params: dict[str, set[str]] = {}  # ref -> param keys the run has
        self._steps: dict[str, dict[str, set[int]]] = {}  # ref -> metric key -> steps the run has
        self.counts: Counter[str] = Counter()

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = (
                exp.experiment_id
                if exp is not None
                else self.client.create_experiment(
                    self.experiment,
                    artifact_location=self.artifact_location,
                    # MLflow 3's UI opens experiments in its GenAI (traces) view unless told
                    # otherwise; this kind makes it show the runs table with our task/trial runs.
                    tags={"mlflow.experimentKind": "custom_model_development"},
                )
            )
        return self._experiment_id

    def forget(self) -> None:
        """After a failed write the store's state is unknown: read it back before writing again."""
        self.fresh.clear()
        self._params.clear()
        self._steps.clear()

    def learn(self, rec: Record) -> None:
        """Remember a run definition without applying it (records before the synced offset)."""
        if isinstance(rec, RunRecord):
            self.defs[rec.ref] = rec

    def apply(self, records: Sequence[Record], trust_new: bool = False) -> None:
        """Apply records in order; consecutive ``log`` records of a run become one ``log_batch``.

        ``trust_new``: records marked ``new`` are created without a look-up (only the live first
        attempt may trust that; a replay or retry may find the run already there).
        """
        pending: dict[str, _PendingLog] = {}
        for rec in records:
            if isinstance(rec, LogRecord):
                pending.setdefault(rec.ref, _PendingLog()).add(rec)
                continue
            if rec.ref in pending:  # keep per-run order: its logs go before its end/artifact
                self._log(rec.ref, pending.pop(rec.ref))
            self._apply_one(rec, trust_new)
            self.counts["records"] += 1
        for ref, merged in pending.items():
            self._log(ref, merged)
        self.counts["records"] += sum(1 for r in records if isinstance(r, LogRecord))

    def _apply_one(self, rec: Record, trust_new: bool) -> None:
        if isinstance(rec, RunRecord):
            self.defs[rec.ref] = rec
            self._resolve(rec.ref, trust_new and rec.new, reopen=True)
        elif isinstance(rec, EndRecord):
            self.client.set_terminated(self._resolve(rec.ref), status=rec.status)
            self.counts["ends"] += 1
            self.fresh.discard(rec.ref)  # its caches are not needed any more
            self._params.pop(rec.ref, None)
            self._steps.pop(rec.ref, None)
        elif isinstance(rec, ArtifactRecord):
            path = Path(rec.path)
            log = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
            if path.exists():
                log(self._resolve(rec.ref), str(path), artifact_path=rec.artifact_path)
                self.counts["artifacts"] += 1
            else:
                self.counts["artifacts_missing"] += 1
        elif isinstance(rec, PruneRecord):
            self._prune(rec)

    def _prune(self, rec: PruneRecord) -> None:
        keep = set(rec.keep)
        for run in find_runs(self.client, self.experiment_id, rec.match):
            if run.data.tags.get(rec.key) not in keep:
                self.client.delete_run(run.info.run_id)
                self.ids = {r: i for r, i in self.ids.items() if i != run.info.run_id}
                self.counts["runs_deleted"] += 1

    def _resolve(self, ref: str, new: bool = False, reopen: bool = False) -> str:
        """The MLflow id of the run ``ref`` names: known, found by its tags, or created now."""
        if ref in self.ids:
            return self.ids[ref]
        key = ref_key(ref)
        run = None if new else find_run(self.client, self.experiment_id, key)
        if run is not None:
            if reopen and run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            self.counts["runs_found"] += 1
            self.ids[ref] = run.info.run_id
            return str(run.info.run_id)
        rec = self.defs.get(ref)
        if rec is None:
            raise KeyError(f"spool names run {ref} but holds no record creating it")
        tags = {**rec.tags, **key}
        if rec.parent:
            tags["mlflow.parentRunId"] = self._resolve(rec.parent)
        run_id = str(self.client.create_run(self.experiment_id, tags=tags, run_name=rec.name).info.run_id)
        self.counts["runs_created"] += 1
        self.ids[ref] = run_id
        self.fresh.add(ref)
        return run_id

    def _new_metrics(self, ref: str, run_id: str, points: list[MetricPoint]) -> list[Any]:
        """The points the run does not have yet (each ``(key, step)`` once), as MLflow Metrics."""
        from mlflow.entities import Metric

        if self.rewrite_metrics:
            return [Metric(p.key, p.value, p.timestamp, p.step) for p in points]
        steps = self._steps.setdefault(ref, {})
        metrics = []
        for p in points:
            seen = steps.get(p.key)
            if seen is None:
                seen = steps[p.key] = (
                    set() if ref in self.fresh
                    else {m.step for m in self.client.get_metric_history(run_id, p.key)}
                )  # fmt: skip
            if p.step in seen:
                self.counts["metrics_skipped"] += 1
                continue
            seen.add(p.step)
            metrics.append(Metric(p.key, p.value, p.timestamp, p.step))
        return metrics

    def _log(self, ref: str, merged: _PendingLog) -> None:
        from mlflow.entities import Param, RunTag

        run_id = self._resolve(ref)
        have = self._params.get(ref)
        if have is None:
            have = set() if ref in self.fresh else set(self.client.get_run(run_id).data.params)
            self._params[ref] = have
        params = [Param(k, str(v)) for k, v in merged.params.items() if k not in have]
        metrics = self._new_metrics(ref, run_id, merged.metrics)
        tags = [RunTag(k, str(v)) for k, v in merged.tags.items()]
        n = max(len(metrics) // MAX_BATCH_METRICS, len(params) // MAX_BATCH_PARAMS,
                len(tags) // MAX_BATCH_TAGS)  # fmt: skip
        for i in range(n + 1):
            chunk = (
                metrics[i * MAX_BATCH_METRICS : (i + 1) * MAX_BATCH_METRICS],
                params[i * MAX_BATCH_PARAMS : (i + 1) * MAX_BATCH_PARAMS],
                tags[i * MAX_BATCH_TAGS : (i + 1) * MAX_BATCH_TAGS],
            )
            if any(chunk):
                self.client.log_batch(run_id, metrics=chunk[0], params=chunk[1], tags=chunk[2])
        have.update(p.key for p in params)
        self.counts["metrics"] += len(metrics)
        self.counts["params"] += len(params)
        self.counts["tags"] += len(tags)
