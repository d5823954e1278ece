"""The records of the MLflow spool: one frozen dataclass per write, and their JSON lines.

Every MLflow write of a launch is one of these records (see :mod:`vptsearch.search._spool` for
the file and its writer, :mod:`vptsearch.search._applier` for how a record reaches the store).
Records name runs by a *ref*, never by an MLflow run id: the run's identifying tags, canonically
encoded (:func:`run_ref`), so a replay into any store finds or creates the same runs.

On disk each record is one JSON object whose ``op`` field names its kind; the layouts below are
the spool's format (older spools replay, so fields are only ever added as optional):

  run       ref, name, tags (all, incl. the key tags), parent (ref or null), new (no look-up needed)
  log       ref, params {k: v}, metrics [[key, value, timestamp_ms, step], ...], tags {k: v}
            (each of the three only when given)
  end       ref, status (FINISHED | FAILED | ...)
  artifact  ref, path (file or folder), artifact_path
  prune     ref (always ""), match (tags), key (tag), keep: delete the runs matching ``match``
            whose ``key`` tag is not in ``keep`` (trials a killed driver started that the restored
            experiment re-ran)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

# The trial results' keys a trial run gets as MLflow metrics (one point per epoch); the rest of a
# result (config, Tune's bookkeeping, checkpoints' names) is not a metric a user plots.
LOGGED_METRICS = (
    "val_acc",
    "val_loss",
    "train_loss",
    "train_acc",
    "lr",
    "test_acc",
    "test_loss",
    "epoch_seconds",
    "head_init_seconds",  # the head's fit before the first step (head.init: probe), in every result
    "head_refit_seconds",  # the refit after the last epoch (head.refit: probe), in the last result
    "nmi_mean",
)
LOGGED_METRIC_PREFIXES = ("nmi_layer",)  # per-layer series, as many as the model has prompted layers


def run_ref(key: dict[str, str]) -> str:
    """The spool's name of a run: its identifying tags, canonically encoded."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def ref_key(ref: str) -> dict[str, str]:
    """The identifying tags a ref encodes (the inverse of :func:`run_ref`)."""
    key: dict[str, str] = json.loads(ref)
    return key


class MetricPoint(NamedTuple):
    """One metric value; a JSON array ``[key, value, timestamp_ms, step]`` on disk."""

    key: str
    value: float
    timestamp: int
    step: int


@dataclass(frozen=True)
class RunRecord:
    """Find the run ``ref`` names, or create it with ``name`` and ``tags`` (under ``parent``)."""

    ref: str
    name: str
    tags: dict[str, str]
    parent: str | None = None  # the parent run's ref
    new: bool = False  # cannot exist yet (a fresh launch's trial): created without a look-up

    def to_json(self) -> dict[str, Any]:
        return {"op": "run", "ref": self.ref, "name": self.name, "tags": self.tags, "parent": self.parent,
                "new": self.new}  # fmt: skip


@dataclass(frozen=True)
class LogRecord:
    """Params (each set once: immutable in MLflow), metric points and tags of one run.

    ``None`` is a field the write did not give (left out on disk), unlike an empty one.
    """

    ref: str
    params: dict[str, str] | None = None
    metrics: list[MetricPoint] | None = None
    tags: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": "log", "ref": self.ref}
        for name in ("params", "metrics", "tags"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class EndRecord:
    """Terminate the run with an MLflow status."""

    ref: str
    status: str = "FINISHED"

    def to_json(self) -> dict[str, Any]:
        return {"op": "end", "ref": self.ref, "status": self.status}


@dataclass(frozen=True)
class ArtifactRecord:
    """Upload a file or a whole folder (it must still be there when the record is applied)."""

    ref: str
    path: str
    artifact_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"op": "artifact", "ref": self.ref, "path": self.path, "artifact_path": self.artifact_path}


@dataclass(frozen=True)
class PruneRecord:
    """Delete the runs tagged ``match`` whose ``key`` tag is not in ``keep``."""

    match: dict[str, str]
    key: str
    keep: list[str]
    ref: str = ""  # names no single run; kept so every record has one

    def to_json(self) -> dict[str, Any]:
        return {"op": "prune", "ref": self.ref, "match": self.match, "key": self.key, "keep": self.keep}


Record = RunRecord | LogRecord | EndRecord | ArtifactRecord | PruneRecord


def record_from_json(obj: dict[str, Any]) -> Record:
    """The record a spool line holds; ValueError naming an ``op`` this version does not know."""
    op, ref = obj.get("op"), obj.get("ref", "")
    if op == "run":
        return RunRecord(ref, obj["name"], obj["tags"], obj.get("parent"), bool(obj.get("new", False)))
    if op == "log":
        metrics = obj.get("metrics")
        points = None if metrics is None else [
            MetricPoint(k, float(v), int(ts), int(step)) for k, v, ts, step in metrics
        ]  # fmt: skip
        return LogRecord(ref, obj.get("params"), points, obj.get("tags"))
    if op == "end":
        return EndRecord(ref, obj["status"])
    if op == "artifact":
        return ArtifactRecord(ref, obj["path"], obj.get("artifact_path"))
    if op == "prune":
        return PruneRecord(obj["match"], obj["key"], list(obj["keep"]), ref)
    raise ValueError(f"spool record with unknown op {op!r}")
