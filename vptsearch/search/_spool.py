"""Durable MLflow writes: an append-only spool in the run dir, drained by a background writer.

Every MLflow write of a launch (runs, params, metrics, tags, run ends, artifacts) is first appended
as one JSON line to ``<run_dir>/mlflow.spool.jsonl`` and only then applied to the tracking store by
a writer thread, so a slow or vanished tracking server never blocks or breaks a trial. Records name
runs by their identifying tags (a *ref*), never by MLflow run id, which makes them replayable into
any store: ``vptsearch sync`` applies the unsynced tail later, or everything into another server.

Replays are idempotent: a run is found again by its tags before one is created, params already
set are skipped, and a metric is written once per ``(key, step)``. The byte offset up to which a
store has received the spool is kept per tracking URI in ``mlflow.spool.pos.json``, so sync is
incremental. A torn last line (driver killed mid-write) is ignored and cut off on the next open.

Record shapes (``op`` field):
  run       ref, name, tags (all, incl. the key tags), parent (ref or null), new (no look-up needed)
  log       ref, params {k: v}, metrics [[key, value, timestamp_ms, step], ...], tags {k: v}
  end       ref, status (FINISHED | FAILED | ...)
  artifact  ref, path (file or folder), artifact_path
  prune     match (tags), key (tag), keep: delete the runs matching ``match`` whose ``key`` tag is
            not in ``keep`` (trials a killed driver started that the restored experiment re-ran)
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SPOOL_FILE = "mlflow.spool.jsonl"
POS_FILE = "mlflow.spool.pos.json"
MAX_BATCH_METRICS, MAX_BATCH_PARAMS, MAX_BATCH_TAGS = 900, 100, 100  # log_batch limits (1000/100/100)


def run_ref(key: dict[str, str]) -> str:
    """The spool's name of a run: its identifying tags, canonically encoded."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


# --- the file ---------------------------------------------------------------------------------------
def read_records(path: Path, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(end offset, record)`` of every complete record after byte ``start``.

    Stops at a line without its newline or that does not parse: what a crash mid-append leaves.
    """
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        fh.seek(start)
        offset = start
        for line in fh:
            if not line.endswith(b"\n"):
                return
            try:
                rec = json.loads(line)
            except ValueError:
                return
            offset += len(line)
            yield offset, rec


def _complete_size(path: Path) -> int:
    """Size of the file up to its last complete record (0 when missing)."""
    return max((offset for offset, _ in read_records(path)), default=0)


class Positions:
    """Per tracking URI, the spool offset its store has received (atomically rewritten JSON)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def read(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.path.read_text()).items()}
        except (OSError, ValueError):
            return {}

    def get(self, uri: str) -> int:
        return self.read().get(uri, 0)

    def set(self, uri: str, offset: int) -> None:
        with self._lock:
            pos = self.read()
            pos[uri] = offset
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(pos, indent=1))
            os.replace(tmp, self.path)


class Spool:
    """Append-only JSON-lines file. ``append`` is one unbuffered ``write`` (a killed driver loses
    nothing it appended: the OS has it); ``sync`` (fsync, in batches) guards against power loss."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / SPOOL_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = _complete_size(self.path)
        if self.path.is_file() and self.path.stat().st_size != size:
            with open(self.path, "r+b") as fh:  # drop a torn last line so appends start clean
                fh.truncate(size)
        self.end = size
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the launch
        self._lock = threading.Lock()
        self.positions = Positions(Path(run_dir) / POS_FILE)

    def append(self, rec: dict[str, Any]) -> int:
        """Write one record; returns its end offset."""
        line = (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            self._fh.write(line)
            self.end += len(line)
            return self.end

    def sync(self) -> None:
        with self._lock:
            if not self._fh.closed:
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        self.sync()
        with self._lock:
            self._fh.close()


# --- applying records to MLflow -------------------------------------------------------------------
class Applier:
    """Applies spool records to one tracking store, idempotently (see module docstring)."""

    def __init__(self, client: Any, experiment: str, artifact_location: str | None) -> None:
        self.client, self.experiment, self.artifact_location = client, experiment, artifact_location
        self._experiment_id: str | None = None
        self.defs: dict[str, dict[str, Any]] = {}  # ref -> its run record (to create it if missing)
        self.ids: dict[str, str] = {}  # ref -> MLflow run id
        self.fresh: set[str] = set()  # runs this applier created: their content is known, no reads
        self._params: dict[str, set[str]] = {}
        self._steps: dict[str, dict[str, set[int]]] = {}
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

    def learn(self, rec: dict[str, Any]) -> None:
        """Remember a run definition without applying it (records before the synced offset)."""
        if rec.get("op") == "run":
            self.defs[rec["ref"]] = rec

    def apply(self, records: list[dict[str, Any]], trust_new: bool = False) -> None:
        """Apply records in order; consecutive ``log`` records of a run become one ``log_batch``.

        ``trust_new``: records marked ``new`` are created without a look-up (only the live first
        attempt may trust that; a replay or retry may find the run already there).
        """
        pending: dict[str, dict[str, Any]] = {}
        for rec in records:
            op, ref = rec["op"], rec["ref"]
            if op == "log":
                merged = pending.setdefault(ref, {"params": {}, "metrics": [], "tags": {}})
                merged["params"].update(rec.get("params") or {})
                merged["metrics"].extend(rec.get("metrics") or [])
                merged["tags"].update(rec.get("tags") or {})
                continue
            if ref in pending:  # keep per-run order: its logs go before its end/artifact
                self._log(ref, pending.pop(ref))
            if op == "run":
                self.defs[ref] = rec
                self._resolve(ref, trust_new and rec.get("new", False), reopen=True)
            elif op == "end":
                self.client.set_terminated(self._resolve(ref), status=rec["status"])
                self.counts["ends"] += 1
                self.fresh.discard(ref)  # its caches are not needed any more
                self._params.pop(ref, None)
                self._steps.pop(ref, None)
            elif op == "artifact":
                path = Path(rec["path"])
                log = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
                if path.exists():
                    log(self._resolve(ref), str(path), artifact_path=rec.get("artifact_path"))
                    self.counts["artifacts"] += 1
                else:
                    self.counts["artifacts_missing"] += 1
            elif op == "prune":
                self._prune(rec["match"], rec["key"], set(rec["keep"]))
            else:
                raise ValueError(f"spool record with unknown op {op!r}")
            self.counts["records"] += 1
        for ref, merged in pending.items():
            self._log(ref, merged)
        self.counts["records"] += sum(1 for r in records if r["op"] == "log")

    def _prune(self, match: dict[str, str], key: str, keep: set[str]) -> None:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in match.items())
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=1000,
                                           page_token=token)  # fmt: skip
            for run in page:
                if run.data.tags.get(key) not in keep:
                    self.client.delete_run(run.info.run_id)
                    self.ids = {r: i for r, i in self.ids.items() if i != run.info.run_id}
                    self.counts["runs_deleted"] += 1
            token = page.token
            if not token:
                return

    def _resolve(self, ref: str, new: bool = False, reopen: bool = False) -> str:
        if ref in self.ids:
            return self.ids[ref]
        rec = self.defs.get(ref)
        key = json.loads(ref)
        run = None
        if not new:
            flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in key.items())
            found = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=1)
            run = found[0] if found else None
        if run is not None:
            if reopen and run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            self.counts["runs_found"] += 1
            self.ids[ref] = run.info.run_id
            return run.info.run_id
        if rec is None:
            raise KeyError(f"spool names run {ref} but holds no record creating it")
        tags = {**rec["tags"], **key}
        if rec.get("parent"):
            tags["mlflow.parentRunId"] = self._resolve(rec["parent"])
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=rec["name"]).info.run_id
        self.counts["runs_created"] += 1
        self.ids[ref] = run_id
        self.fresh.add(ref)
        return run_id

    def _log(self, ref: str, merged: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id = self._resolve(ref)
        fresh = ref in self.fresh
        have = self._params.get(ref)
        if have is None:
            have = set() if fresh else set(self.client.get_run(run_id).data.params)
            self._params[ref] = have
        params = [Param(k, str(v)) for k, v in merged["params"].items() if k not in have]
        steps = self._steps.setdefault(ref, {})
        metrics = []
        for key, value, ts, step in merged["metrics"]:
            seen = steps.get(key)
            if seen is None:
                seen = steps[key] = (
                    set() if fresh else {m.step for m in self.client.get_metric_history(run_id, key)}
                )
            if step in seen:
                self.counts["metrics_skipped"] += 1
                continue
            seen.add(step)
            metrics.append(Metric(key, float(value), int(ts), int(step)))
        tags = [RunTag(k, str(v)) for k, v in merged["tags"].items()]
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


def replay(spool_dir: Path, applier: Applier, uri: str, batch: int = 500) -> int:
    """Apply the records after ``uri``'s synced offset; returns how many it applied.

    Raises the store's error after recording how far it got (the next sync resumes there).
    """
    path, positions = Path(spool_dir) / SPOOL_FILE, Positions(Path(spool_dir) / POS_FILE)
    start = positions.get(uri)
    chunk: list[dict[str, Any]] = []
    applied, end = 0, start
    for offset, rec in read_records(path):
        if offset <= start:
            applier.learn(rec)
            continue
        chunk.append(rec)
        end = offset
        if len(chunk) >= batch:
            applier.apply(chunk)
            positions.set(uri, end)
            applied += len(chunk)
            chunk = []
    if chunk:
        applier.apply(chunk)
        positions.set(uri, end)
        applied += len(chunk)
    return applied


def unsynced(spool_dir: Path, uri: str) -> int:
    """Records of the spool that ``uri``'s store has not received yet."""
    start = Positions(Path(spool_dir) / POS_FILE).get(uri)
    return sum(1 for _ in read_records(Path(spool_dir) / SPOOL_FILE, start))


# --- the background writer ----------------------------------------------------------------------------
class Writer(threading.Thread):
    """Drains the spool into the store in order, with retries and backoff; never raises.

    Records appended while the store is down wait in memory (and on disk); when it is back the
    writer catches up. Batches are spaced ``interval_s`` apart so bursts of trial results become
    a few ``log_batch`` calls instead of one transaction per result.
    """

    def __init__(self, spool: Spool, applier: Applier, uri: str, interval_s: float = 0.5) -> None:
        super().__init__(name="vptsearch-mlflow-writer", daemon=True)
        self.spool, self.applier, self.uri, self.interval_s = spool, applier, uri, interval_s
        self._queue: list[tuple[int, dict[str, Any], bool]] = []  # (end offset, record, live)
        self._cv = threading.Condition()
        self._stopping = False
        self.synced = spool.positions.get(uri)
        self.failing_since: float | None = None
        self.last_error: str | None = None
        # The tail a killed driver left unsynced goes first (replayed: never trusted as new).
        for offset, rec in read_records(spool.path):
            if offset <= self.synced:
                applier.learn(rec)
            else:
                self._queue.append((offset, rec, False))

    def submit(self, rec: dict[str, Any]) -> None:
        offset = self.spool.append(rec)
        with self._cv:
            self._queue.append((offset, rec, True))
            self._cv.notify()

    @property
    def backlog(self) -> int:
        with self._cv:
            return len(self._queue)

    def run(self) -> None:
        delay = 0.5
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue:
                    return
                batch = self._queue[:2000]
            self.spool.sync()  # durable before it can count as synced
            live = all(item[2] for item in batch)
            try:
                self.applier.apply([rec for _, rec, _ in batch], trust_new=live)
            except Exception as exc:  # the store is down or refused: keep everything, retry later
                self.applier.forget()
                with self._cv:
                    self._queue = [(o, r, False) for o, r, _ in self._queue]  # retries look up
                    self.last_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                    self.failing_since = self.failing_since or time.monotonic()
                    if self._stopping:
                        return
                    self._cv.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            with self._cv:
                del self._queue[: len(batch)]
                self.failing_since = None
                self.synced = batch[-1][0]
            self.spool.positions.set(self.uri, self.synced)
            if not self._stopping:
                time.sleep(self.interval_s)

    def close(self, drain_s: float = 120.0, down_grace_s: float = 5.0) -> int:
        """Drain what can be drained and stop; returns the number of records left unsynced.

        Waits while the writer makes progress (up to ``drain_s``); gives up ``down_grace_s`` after
        the store started failing.
        """
        deadline = time.monotonic() + drain_s
        self.interval_s = 0.0
        with self._cv:
            self._cv.notify()
        while self.is_alive() and time.monotonic() < deadline:
            with self._cv:
                if not self._queue:
                    break
                failing = self.failing_since
            if failing is not None and time.monotonic() - failing > down_grace_s:
                break
            time.sleep(0.05)
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self.join(timeout=35.0)
        self.spool.close()
        with self._cv:
            return len(self._queue)
