"""The MLflow tracking store: where it is, whether it can be reached, a client for it, and run
look-ups by tag.

:func:`tag_filter` is the one place an MLflow filter string is built: MLflow strips the quotes
around a value and never unescapes inside them, so a value with a quote in it (a task or run
named ``it's``) needs the other quote kind, or, with both kinds in it, a ``LIKE`` whose matches
:func:`find_runs` narrows to the exact ones.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vptsearch._atomic import probe_writable
from vptsearch._errors import ConfigError, refuse_control_characters
from vptsearch._net import unreachable


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative sqlite/file store absolute, so the UI and reports find it from anywhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri:  # a plain path is a file store
        return Path(uri).resolve().as_uri()
    return uri


def tracking_uri_for(flag: str | None, spec_uri: str) -> str:
    """The launch's tracking URI: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the spec's."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or spec_uri


def check_tracking_uri(uri: str, timeout: float = 5.0) -> str:
    """Resolve ``uri`` and refuse (ConfigError naming it) when the store cannot be reached."""
    refuse_control_characters("tracking URI", uri)
    uri = resolve_tracking_uri(uri)
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "sqlite":
        check_sqlite_store(uri)
    elif scheme == "file":
        path = Path(urllib.parse.urlparse(uri).path)
        if not (path if path.exists() else path.parent).is_dir():
            raise ConfigError(f"tracking URI {uri!r}: {str(path.parent)!r} does not exist")
    elif scheme in ("http", "https"):
        parsed = urllib.parse.urlparse(uri)
        port = parsed.port or (443 if scheme == "https" else 80)
        reason = unreachable(parsed.hostname or "", port, timeout)
        if reason is not None:
            raise ConfigError(
                f"tracking URI {uri!r} is unreachable ({reason}); start the server "
                "or pass --tracking-uri sqlite:///mlflow.db"
            )
    else:
        raise ConfigError(
            f"tracking URI {uri!r}: unsupported scheme {scheme!r}; accepted: sqlite:///FILE, "
            "http(s)://HOST:PORT, file:///DIR or a folder path"
        )
    return uri


MIN_FREE = 1 << 20  # a store's folder with less free space than this fails its first transactions


def check_sqlite_store(uri: str) -> None:
    """A ``sqlite:///FILE`` store must be a SQLite database (or absent/empty: MLflow creates it),
    writable, in a folder where SQLite can create its journal files, on a disk with space left.

    Each is tried, not inferred from permission bits (root passes ``os.access`` on a read-only
    file; a read-only mount or a full disk shows only when written): SQLite opens the file and
    takes its write lock, and a probe file is created and removed in its folder. Else MLflow fails
    later, with dozens of tracebacks ending in "attempt to write a readonly database" or an
    autoflush hint.
    """
    path = Path(uri[len("sqlite:///") :])
    parent = path.parent
    accepted = "accepted: sqlite:///FILE with FILE a SQLite database (or new) in a writable folder"
    if not parent.is_dir():
        raise ConfigError(f"tracking URI {uri!r}: directory {str(parent)!r} does not exist; {accepted}")
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"tracking URI {uri!r}: {str(path)!r} is not a file; {accepted}")
        problem = _sqlite_file_problem(path.absolute())
        if problem == NOT_A_DATABASE:
            raise ConfigError(f"tracking URI {uri!r}: {str(path)!r} is not a SQLite database; {accepted}")
        if problem:
            raise ConfigError(
                f"tracking URI {uri!r}: {str(path)!r} cannot be written ({problem}); {accepted}"
            )
    try:
        probe_writable(parent, size=4096)
        free = shutil.disk_usage(parent).free
    except OSError as exc:
        raise ConfigError(
            f"tracking URI {uri!r}: directory {str(parent)!r} is not writable ({exc.strerror}); {accepted}"
        ) from None
    if free < MIN_FREE:
        raise ConfigError(
            f"tracking URI {uri!r}: no space left on device in {str(parent)!r} ({free} bytes free); "
            f"free space or pass --tracking-uri on another disk"
        )


NOT_A_DATABASE = "not a database"
SQLITE_BUSY, SQLITE_NOTADB = 5, 26  # SQLite's result codes (sqlite3 names them from Python 3.11 on)


def _sqlite_code(exc: Exception) -> int | None:
    """The primary SQLite result code of ``exc`` (Python 3.10 has only the message to go by)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF  # extended codes carry the primary one in their low byte
    message = str(exc)
    return SQLITE_NOTADB if "not a database" in message else SQLITE_BUSY if "locked" in message else None


def _sqlite_file_problem(path: Path) -> str | None:
    """Why SQLite cannot write the existing file ``path`` (``NOT_A_DATABASE`` or a reason), or None.

    Asked through SQLite, never a Python ``open``: closing any descriptor of a database file drops
    every POSIX lock this process's SQLite connections hold on it (fcntl semantics; SQLite defers
    its own closes), and a writer in another process that then sees no other reader checkpoints and
    deletes the WAL under them: a launch resumed in a process whose store was still open lost writes
    or left the file "malformed" (tests/search/test_sqlite_locks.py).
    """
    import sqlite3

    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, isolation_level=None, timeout=0.2)
    except sqlite3.Error as exc:
        return _os_reason(path) or str(exc)
    try:
        con.execute("PRAGMA schema_version")  # reads the header: SQLITE_NOTADB for any other file
        con.execute("BEGIN IMMEDIATE")  # the write lock (a read-only open takes it too), then a write
        version = int(con.execute("PRAGMA user_version").fetchone()[0])
        con.execute(f"PRAGMA user_version = {version}")  # SQLITE_READONLY where it cannot be written
        con.execute("ROLLBACK")
    except sqlite3.Error as exc:
        code = _sqlite_code(exc)
        if code == SQLITE_NOTADB:
            return NOT_A_DATABASE
        if code != SQLITE_BUSY:  # busy: another connection is writing it, so it is writable
            return _os_reason(path) or str(exc)
    finally:
        con.close()
    return None


def _os_reason(path: Path) -> str | None:
    """The operating system's word for a file that cannot be written, found without opening it."""
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    if not os.access(path, os.W_OK):
        return os.strerror(errno.EACCES)
    return None


def client(uri: str) -> Any:
    # Fail fast instead of retrying for minutes against a dead server.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # set_terminated on a server otherwise prints two "View run" lines (and reads the run back)
    # for every run it ends: thousands of lines in a launch's output.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:"):
        return MlflowClient(tracking_uri=uri)
    with sqlite_store_lock(uri):
        # Opening the store (MlflowClient() does) creates a missing database and runs MLflow's
        # alembic migrations; two launches doing that at once make the second fail mid-migration,
        # so opening is serialised (the second then finds the tables and migrates nothing).
        c = MlflowClient(tracking_uri=uri)
        if os.environ.get("VPTSEARCH_SQLITE_WAL", "1") != "0":
            _sqlite_wal(c)
    return c


@contextlib.contextmanager
def sqlite_store_lock(uri: str) -> Iterator[None]:
    """An exclusive ``flock`` on the folder of a ``sqlite:///FILE`` store (no lock file left
    behind; the folder exists, check_tracking_uri made sure). Held across processes and threads."""
    import fcntl

    folder = Path(uri[len("sqlite:///") :]).parent
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sqlite_wal(c: Any) -> None:
    """Write-ahead log + synchronous=NORMAL on a sqlite store: one fsync per checkpoint instead of
    several per transaction, about half the cost of a trial's MLflow writes here (29 -> 16 ms).
    A crash can lose the last transactions but never corrupts the file, and the spool replays
    them. WAL needs a local disk (not NFS): set VPTSEARCH_SQLITE_WAL=0 to keep MLflow's default."""
    from sqlalchemy import event

    engine = getattr(getattr(getattr(c, "_tracking_client", None), "store", None), "engine", None)
    if engine is None or getattr(engine, "_vptsearch_wal", False):
        return

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    engine._vptsearch_wal = True
    engine.dispose()  # pooled connections were opened without the pragmas


def artifact_location(location: str | None, uri: str) -> str | None:
    """Where the experiment's artifacts go: a local folder (as a file URI) or a remote URI as given."""
    if location is None:
        return None
    if "://" in location:
        return location
    if uri.startswith(("http://", "https://")):
        return None  # the server's own artifact store
    return Path(location).resolve().as_uri()


# --- look-ups by tag ------------------------------------------------------------------------------
_LIKE_UNSAFE = "'\"\\"  # quotes have no escape in a filter; a backslash escapes in some SQL LIKEs


def _exact(tags: Mapping[str, str]) -> bool:
    """Whether :func:`tag_filter` can say ``tags`` with ``=`` alone (no value holds both quotes)."""
    return not any("'" in v and '"' in v for v in tags.values())


def _condition(key: str, value: str) -> str:
    if "`" in key:
        raise ValueError(f"tag key {key!r}: a backtick cannot be quoted in an MLflow filter")
    if "'" not in value:
        return f"tags.`{key}` = '{value}'"
    if '"' not in value:
        return f'tags.`{key}` = "{value}"'
    # both quote kinds: a LIKE with each unsayable character as the one-character wildcard
    pattern = "".join("_" if ch in _LIKE_UNSAFE else ch for ch in value)
    return f"tags.`{key}` LIKE '{pattern}'"


def tag_filter(tags: Mapping[str, str]) -> str:
    """An MLflow ``filter_string`` for runs carrying every tag of ``tags`` (key -> exact value).

    May match more runs than asked (see the module docstring): search with :func:`find_runs`.
    """
    return " and ".join(_condition(k, v) for k, v in tags.items())


def find_runs(
    client: Any, experiment_id: str, tags: Mapping[str, str], page_size: int = 1000
) -> Iterator[Any]:
    """The active runs of the experiment that carry exactly ``tags``, page by page."""
    flt, token = tag_filter(tags), None
    while True:
        page = client.search_runs([experiment_id], filter_string=flt, max_results=page_size, page_token=token)
        for run in page:
            if all(run.data.tags.get(k) == v for k, v in tags.items()):
                yield run
        token = page.token
        if not token:
            return


def find_run(client: Any, experiment_id: str, tags: Mapping[str, str]) -> Any | None:
    """The first active run carrying exactly ``tags`` (one round trip when the filter is exact)."""
    return next(find_runs(client, experiment_id, tags, page_size=1 if _exact(tags) else 1000), None)
