"""Durable MLflow writes: an append-only spool in the run dir, drained by a background writer.

Every MLflow write of a launch (runs, params, metrics, tags, run ends, artifacts) is first appended
as one JSON line to ``<run_dir>/mlflow.spool.jsonl`` and only then applied to the tracking store by
a writer thread, so a slow or vanished tracking server never blocks or breaks a trial. The lines
are :mod:`vptsearch.search._records` records; they name runs by their identifying tags (a *ref*),
never by MLflow run id, which makes them replayable into any store: ``vptsearch sync`` applies the
unsynced tail later, or everything into another server (idempotently: see
:mod:`vptsearch.search._applier`).

The byte offset up to which a store has received the spool is kept per tracking URI in
``mlflow.spool.pos.json``, so sync is incremental. A torn last line (driver killed mid-write) is
ignored and cut off on the next open.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vptsearch._errors import ConfigError
from vptsearch.search._applier import Applier
from vptsearch.search._records import Record, record_from_json
from vptsearch.search._tracking_store import check_tracking_uri, client

SPOOL_FILE = "mlflow.spool.jsonl"
POS_FILE = "mlflow.spool.pos.json"


# --- the file ---------------------------------------------------------------------------------------
def read_records(path: Path, start: int = 0) -> Iterator[tuple[int, Record]]:
    """``(end offset, record)`` of every complete record after byte ``start``.

    Stops at a line without its newline or that does not parse: what a crash mid-append leaves.
    A complete line with an ``op`` this version does not know raises ValueError naming it.
    """
    for offset, obj in _read_lines(path, start):
        yield offset, record_from_json(obj)


def _read_lines(path: Path, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(end offset, JSON object)`` of every complete line after byte ``start``."""
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
    return max((offset for offset, _ in _read_lines(path)), default=0)


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

    def set(self, uri: str, offset: int) -> bool:
        """Record ``offset``; False when the file could not be written (a full disk): the old
        offsets stay, and a later sync replays a little more (replays are idempotent)."""
        with self._lock:
            pos = self.read()
            pos[uri] = offset
            tmp = self.path.with_name(self.path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(pos, indent=1))
                os.replace(tmp, self.path)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                return False
            return True


class Spool:
    """Append-only JSON-lines file, one record (``Record.to_json()``) a line. ``append`` is one
    unbuffered ``write`` (a killed driver loses nothing it appended: the OS has it); ``sync``
    (fsync, in batches) guards against power loss."""

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

    def append(self, obj: dict[str, Any]) -> int:
        """Write one record's JSON object as a line; returns its end offset.

        A write that fails (a full disk) is cut off again, so the file still ends on a whole
        line and the next append after space is freed starts clean; the OSError names the file.
        """
        line = (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            try:
                written = self._fh.write(line)
                if written != len(line):  # a short write: the disk filled up in the middle
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fh.fileno(), self.end)
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None
            self.end += len(line)
            return self.end

    def sync(self) -> None:
        with self._lock:
            if not self._fh.closed:
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk: what the OS has is kept all the same
            self.sync()
        with self._lock:
            self._fh.close()


def replay(spool_dir: Path, applier: Applier, uri: str, batch: int = 500) -> int:
    """Apply the records after ``uri``'s synced offset; returns how many it applied.

    Raises the store's error after recording how far it got (the next sync resumes there).
    """
    path, positions = Path(spool_dir) / SPOOL_FILE, Positions(Path(spool_dir) / POS_FILE)
    start = positions.get(uri)
    chunk: list[Record] = []
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
def error_line(exc: BaseException) -> str:
    """The store error a writer reports: its first line, at most 200 characters, or its type."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


class Writer(threading.Thread):
    """Drains the spool into the store in order, with retries and backoff; never raises.

    Records appended while the store is down wait in memory (and on disk); when it is back the
    writer catches up. Batches are spaced ``interval_s`` apart so bursts of trial results become
    a few ``log_batch`` calls instead of one transaction per result.
    """

    def __init__(self, spool: Spool, applier: Applier, uri: str, interval_s: float = 0.5) -> None:
        super().__init__(name="vptsearch-mlflow-writer", daemon=True)
        self.spool, self.applier, self.uri, self.interval_s = spool, applier, uri, interval_s
        self._queue: list[tuple[int, Record, bool]] = []  # (end offset, record, live)
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

    def submit(self, rec: Record) -> None:
        offset = self.spool.append(rec.to_json())
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
            live = all(item[2] for item in batch)
            try:
                self.spool.sync()  # durable before it can count as synced (a full disk: retried)
                self.applier.apply([rec for _, rec, _ in batch], trust_new=live)
            except Exception as exc:  # the store is down or refused: keep everything, retry later
                self.applier.forget()
                with self._cv:
                    self._queue = [(o, r, False) for o, r, _ in self._queue]  # retries look up
                    self.last_error = error_line(exc)
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


# --- vptsearch sync -----------------------------------------------------------------------------
def sync(run_dir: Path | str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Replay a launch's unsynced MLflow writes (or all of them, into another store).

    Returns counts: ``records`` applied, ``runs_created``, ``runs_found``, ``metrics``,
    ``metrics_skipped`` (already in the store), ``params``, ``tags``, ``ends``, ``artifacts``,
    and ``left`` (records still unsynced: 0 unless the store failed, which raises ConfigError).
    """
    run_dir = Path(run_dir)
    info_file = run_dir / "tracking.json"
    if not info_file.is_file() or not (run_dir / SPOOL_FILE).is_file():
        raise ConfigError(
            f"{str(run_dir)!r} is not a launch folder with an MLflow spool (no tracking.json or "
            f"{SPOOL_FILE}); pass runs/<name>/<stamp> of a launch"
        )
    info = json.loads(info_file.read_text())
    uri = check_tracking_uri(tracking_uri or info["uri"])
    art = info.get("artifact_location")
    if tracking_uri and art and art.startswith("file:") and uri.startswith(("http://", "https://")):
        art = None  # a server of its own keeps artifacts in its artifact store
    applier = Applier(client(uri), info["experiment"], art)
    try:
        replay(run_dir, applier, uri)
    except ConfigError:
        raise
    except Exception as exc:
        left = unsynced(run_dir, uri)
        raise ConfigError(
            f"sync to {uri!r} stopped with {left} write(s) left: {str(exc).splitlines()[0][:200]}; "
            "run `vptsearch sync` again when the store is reachable"
        ) from None
    return {"uri": uri, **dict(applier.counts), "left": unsynced(run_dir, uri)}
