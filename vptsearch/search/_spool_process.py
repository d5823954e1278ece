"""The spool's writer in a process of its own: MLflow's store work off the driver's GIL.

The thread writer (:class:`vptsearch.search._spool.Writer`) applies the launch's MLflow records
in the driver process; measured with 1 000 no-op trials (benchmarks/bench_platform_overhead.py,
2026-12-07) its SQLAlchemy work held the GIL for ~31 ms per trial and the driver's cost per trial
rose from 39 to 59 ms (stock Tune running the same TPE search: 36 ms). This writer is a child
process that tails the spool file instead: the driver only appends lines (one ``write`` each),
the child applies them in order with the same batching, retries and backoff, and records how far
it got in the spool's positions file, exactly as the thread did. Records of the spool from before
it started (a killed driver's tail) are replayed, never trusted as new.

The launch's writer (``Tracker(writer_process=False)`` keeps the thread). It was not, until the
cause of a "malformed" sqlite store was found: the store check before a resumed launch opened and
closed the database file with Python's ``open``, which drops every POSIX lock the process's live
SQLite connections hold on it, so this process saw no other reader, checkpointed and deleted the
WAL under them (tests/search/test_sqlite_locks.py; the check now asks SQLite itself).

The driver ends it by closing its stdin (after one line with the drain limits): it drains what is
on disk and exits. A driver that dies closes the pipe too, so the child still drains the spool
and exits; what a store that stays down keeps from it waits for ``vptsearch sync``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vptsearch.search._spool import (
    POS_FILE,
    SPOOL_FILE,
    Positions,
    Spool,
    error_line,
    read_records,
    unsynced,
)

STATUS_FILE = "mlflow.spool.writer.json"  # the child's last error, for the driver's one-line warning
BATCH = 2000  # records per store call, as the thread writer
NICENESS = 10  # the child's scheduling priority below the driver's (os.nice increment)


class WriterProcess:
    """Same use as the thread writer: ``submit`` appends, ``close`` drains and stops."""

    def __init__(
        self, spool: Spool, uri: str, experiment: str, artifact_location: str | None, interval_s: float = 0.5
    ) -> None:
        self.spool, self.uri = spool, uri
        self.run_dir = spool.path.parent
        self._status = self.run_dir / STATUS_FILE
        with contextlib.suppress(OSError):
            self._status.unlink()
        args = [str(self.run_dir), uri, experiment, artifact_location or "", str(spool.end), str(interval_s)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vptsearch.search._spool_process", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # its errors go to the status file
            text=True,
            start_new_session=True,  # a Ctrl-C for the launch must not kill it before it drained
        )

    def submit(self, rec: Any) -> None:
        self.spool.append(rec.to_json())

    @property
    def backlog(self) -> int:
        """Records on disk the store has not received yet."""
        return unsynced(self.run_dir, self.uri)

    @property
    def last_error(self) -> str | None:
        try:
            return json.loads(self._status.read_text()).get("error")
        except (OSError, ValueError):
            return None

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, drain_s: float = 120.0, down_grace_s: float = 5.0) -> int:
        """Drain what can be drained (up to ``drain_s``; ``down_grace_s`` once the store fails) and
        stop; returns the number of records left unsynced."""
        self.spool.sync()
        with contextlib.suppress(OSError, ValueError):  # a child that already ended: nothing to tell
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"drain_s": drain_s, "down_grace_s": down_grace_s}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=drain_s + 35.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # what it had not applied is on disk: `vptsearch sync` replays it
            self.proc.wait()
        self.spool.close()
        return unsynced(self.run_dir, self.uri)


# --- the child ---------------------------------------------------------------------------------------
class _Stop:
    """Set when the driver closes the pipe; carries the drain limits it sent before."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.drain_s, self.down_grace_s = 120.0, 5.0

    def watch(self, stream: Any) -> None:
        for line in stream:
            with contextlib.suppress(ValueError, TypeError):
                limits = json.loads(line)
                self.drain_s, self.down_grace_s = float(limits["drain_s"]), float(limits["down_grace_s"])
        self.event.set()


def _fsync(path: Path) -> None:
    """Durable before it can count as synced (any descriptor of the file flushes it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_status(path: Path, exc: Exception) -> None:
    with contextlib.suppress(OSError):
        path.write_text(json.dumps({"error": error_line(exc)}))


def _drain(run_dir: Path, applier: Any, uri: str, live_from: int, interval_s: float, stop: _Stop) -> int:
    """Apply the spool's records in order until the driver stopped and the file is drained;
    returns the exit status (1: gave up on a failing store, the rest is left for sync)."""
    path, positions = run_dir / SPOOL_FILE, Positions(run_dir / POS_FILE)
    status = run_dir / STATUS_FILE
    synced = positions.get(uri)
    for offset, rec in read_records(path):  # what the store already has: learn its runs' ids
        if offset > synced:
            break
        applier.learn(rec)
    delay, failing_since, stopped_at = 0.5, None, None
    while True:
        if stop.event.is_set() and stopped_at is None:
            stopped_at = time.monotonic()
        batch = []
        for item in read_records(path, synced):
            batch.append(item)
            if len(batch) >= BATCH:
                break
        if not batch:
            if stopped_at is not None:
                return 0
            stop.event.wait(interval_s)
            continue
        if stopped_at is not None and time.monotonic() - stopped_at > stop.drain_s:
            return 1
        try:
            _fsync(path)
            # records from before this writer started are a killed driver's tail: looked up, not trusted
            applier.apply([rec for _, rec in batch], trust_new=batch[0][0] > live_from)
        except Exception as exc:  # the store is down or refused: keep everything, retry later
            applier.forget()
            failing_since = failing_since or time.monotonic()
            _write_status(status, exc)
            if stopped_at is not None:
                if time.monotonic() - failing_since > stop.down_grace_s:
                    return 1
                time.sleep(min(delay, stop.down_grace_s))
            else:
                stop.event.wait(delay)  # a stop wakes it: the grace period starts then
            delay = min(delay * 2, 30.0)
            continue
        delay, failing_since = 0.5, None
        synced = batch[-1][0]
        positions.set(uri, synced)
        if stopped_at is None:
            stop.event.wait(interval_s)


def main(argv: list[str]) -> int:
    run_dir, uri, experiment, art, live_from, interval_s = argv
    from vptsearch.search._applier import Applier
    from vptsearch.search._tracking_store import client

    # Below the driver and the trials: on a busy node the store's writes can wait, they cannot block
    with contextlib.suppress(OSError, AttributeError):  # (AttributeError: no os.nice on Windows)
        os.nice(NICENESS)
    stop = _Stop()
    threading.Thread(target=stop.watch, args=(sys.stdin,), daemon=True).start()
    applier = Applier(client(uri), experiment, art or None)
    return _drain(Path(run_dir), applier, uri, int(live_from), float(interval_s), stop)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
