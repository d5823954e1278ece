"""The launch's Optuna journal (``<run_dir>/optuna.journal``): its writer, its readers.

One journal holds the studies of all tasks of a launch (one study per task, named after it). The
format is Optuna's own, so ``optuna.load_study``, optuna-dashboard and ``--resume`` read it unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from vptsearch.search._compat import JournalStorageHooks


def journal_storage(path: str | Path) -> JournalStorage:
    """A plain Optuna journal storage: re-reads the file on every access (right for readers of a
    journal that another process may be writing: warm start, inspection)."""
    return JournalStorage(JournalFileBackend(str(path)))


def load_studies(journal: str | Path) -> dict[str, optuna.Study]:
    """The per-task Optuna studies of a launch (``<run_dir>/optuna.journal``)."""
    storage = journal_storage(journal)
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
        for s in optuna.get_all_study_summaries(storage)
    }


class WorkingCopyJournalStorage(JournalStorageHooks):
    """The launch's own journal: the in-memory replay is the working copy, the file the durable log.

    Optuna's ``JournalStorage`` over a file re-reads the file on every read and takes a file lock,
    writes and fsyncs once per record (a trial writes ~16: its params, intermediate values,
    attributes, state); measured over 400 trials that was 3/4 of the searcher's time. Here, as the
    launch is the journal's only writer:

    - a read is served from memory; the file is replayed only into an empty working copy (first
      use, or after unpickling on a restore) or when it grew by bytes another writer appended;
    - a write applies its record to memory (JSON round-tripped, exactly as a replay decodes it) and
      appends it without fsync; inside :meth:`batch` the records of one searcher call are appended
      together at its end, in one write;
    - :meth:`sync` fsyncs; the searcher calls it before Tune saves its state, so the journal on disk
      is never older than a searcher snapshot that refers to its trials.

    Every record reaches the OS before the searcher call that wrote it returns, so a killed driver
    (Ctrl-C, SIGKILL) loses nothing; a machine crash can lose the records since the last sync, those
    of trials the restored snapshot does not know (Tune runs them again). The file format is
    Optuna's: ``load_studies``, ``--resume`` and optuna-dashboard replay it unchanged. A record
    another process appends while this one has records in flight would make the in-memory trial
    ids differ from the file's; that raises instead of diverging silently.
    """

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._replayed_size = 0  # bytes of the file that are in the in-memory replay
        self._pending: list[bytes] | None = None  # records of the open batch, not yet appended
        self._file: BinaryIO | None = None
        super().__init__(JournalFileBackend(self._path))  # replays the file: the fields above first

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_file", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)  # a fresh, empty replay: the next access reads the whole file
        self._replayed_size = 0
        self._pending = None
        self._file = None

    def before_access(self) -> None:
        size = os.stat(self._path).st_size
        if size != self._replayed_size:  # the file on a first use or restore, or another writer
            if self._pending:
                raise self._foreign_writer()
            self.replay_backend()
            self._replayed_size = size

    def write_record(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        if self._pending is None:
            self._append(line)
        else:
            self._pending.append(line)
        self.apply_to_replay(json.loads(line))

    def _append(self, data: bytes) -> None:
        # No Optuna file lock: its symlink + unlink cost ~3 ms per append here (two metadata
        # operations on the run dir's disk), and a launch's journal has one writer (the run dir is
        # claimed atomically); a write by anyone else shows as bytes we did not write.
        if self._file is None:
            self._file = open(self._path, "ab")  # noqa: SIM115  # kept open: one write per call
        if os.fstat(self._file.fileno()).st_size != self._replayed_size:
            raise self._foreign_writer()
        self._file.write(data)
        self._file.flush()  # to the OS now: a killed driver loses nothing
        self._replayed_size += len(data)

    def _foreign_writer(self) -> RuntimeError:
        return RuntimeError(f"{self._path}: another process appended to this launch's Optuna journal")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Append the records written inside the block in one write at its end (also on an error:
        memory already holds them)."""
        if self._pending is not None:  # nested: the outer batch appends
            yield
            return
        self._pending = []
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if pending:
                self._append(b"".join(pending))

    def sync(self) -> None:
        """fsync the journal: what is in memory is on disk."""
        if self._file is not None:
            os.fsync(self._file.fileno())


def journal_batch(storage: BaseStorage | None) -> contextlib.AbstractContextManager[None]:
    """``storage``'s :meth:`WorkingCopyJournalStorage.batch`, or nothing for other storages."""
    return storage.batch() if isinstance(storage, WorkingCopyJournalStorage) else contextlib.nullcontext()


def sync_working_copies(storages: Iterable[BaseStorage | None]) -> None:
    """Write out every working-copy journal among ``storages``, each once (one storage backs every
    study of a launch)."""
    for storage in {id(s): s for s in storages}.values():
        if isinstance(storage, WorkingCopyJournalStorage):
            storage.sync()
