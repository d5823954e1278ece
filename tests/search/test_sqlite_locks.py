"""The sqlite store's preflight must not drop this process's locks on the database file.

Closing any descriptor of a file drops every POSIX lock the process holds on it. A launch resumed in
a process whose store is still open (a notebook, a test, ``vptsearch sync`` after a launch) ran
the store check beside live SQLite connections; a writer in another process (the spool's writer
process, a second launch) then saw no reader, checkpointed and deleted the WAL under them, and
what they wrote next was lost or left the file "malformed".
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vptsearch import ConfigError
from vptsearch.search._tracking_store import check_sqlite_store

ROWS = 40
CHILD = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA journal_mode=WAL")
for _ in range({rows}):
    c.execute("INSERT INTO t(y) VALUES (?)", ("child" * 100,))
c.close()  # the last connection it sees: checkpoints, and deletes the WAL if it gets the lock
"""


def _insert(con: sqlite3.Connection) -> None:
    for _ in range(ROWS):
        con.execute("INSERT INTO t(y) VALUES (?)", ("driver" * 100,))


def test_check_beside_an_open_wal_connection_loses_no_write(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t(x INTEGER PRIMARY KEY, y TEXT)")
    _insert(con)
    rounds = 4
    for _ in range(rounds):
        check_sqlite_store(f"sqlite:///{db}")  # the resumed launch's preflight, connection still open
        subprocess.run([sys.executable, "-c", CHILD.format(rows=ROWS), str(db)], check=True)
        _insert(con)
    con.close()
    with contextlib.closing(sqlite3.connect(db)) as after:
        assert after.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert after.execute("SELECT COUNT(*) FROM t").fetchone()[0] == ROWS * (1 + 2 * rounds)


def test_check_still_tells_the_file_kinds_apart(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    check_sqlite_store(f"sqlite:///{empty}")  # MLflow creates the tables in an empty file
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database, but long enough to have a header of its own " * 4)
    with pytest.raises(ConfigError, match=r"notes\.txt' is not a SQLite database; accepted"):
        check_sqlite_store(f"sqlite:///{notes}")
    busy = tmp_path / "busy.db"
    writer = sqlite3.connect(busy, isolation_level=None)
    writer.execute("CREATE TABLE t(x)")
    writer.execute("BEGIN IMMEDIATE")  # another launch mid-transaction: busy, but writable
    check_sqlite_store(f"sqlite:///{busy}")
    writer.execute("ROLLBACK")
    writer.close()


def test_result_codes_without_sqlite_errorcode_come_from_the_message() -> None:
    """Python 3.10's sqlite3 errors carry no result code: the message decides (an error raised by
    hand has none on any version, as on 3.10)."""
    from vptsearch.search._tracking_store import SQLITE_BUSY, SQLITE_NOTADB, _sqlite_code

    assert _sqlite_code(sqlite3.DatabaseError("file is not a database")) == SQLITE_NOTADB
    assert _sqlite_code(sqlite3.OperationalError("database is locked")) == SQLITE_BUSY
    assert _sqlite_code(sqlite3.OperationalError("attempt to write a readonly database")) is None
