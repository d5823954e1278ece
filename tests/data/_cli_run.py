"""Running the ``vptsearch`` CLI in-process from the data tests (exit code, stdout, stderr), and what a
folder holds (to show a refused import changed nothing)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vptsearch.cli import main
from vptsearch.data import clear_cache


def run(capsys, *argv) -> tuple[int, str, str]:
    """``vptsearch ARGV`` in this process (decoded splits cleared first): ``(exit code, out, err)``."""
    clear_cache()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv) -> str:
    """The stderr of a ``vptsearch ARGV`` that must fail as bad input: exit 2, one line, no traceback."""
    rc, _, err = run(capsys, *argv)
    assert rc == 2, err
    assert err.startswith("vptsearch: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` by relative name (``{}`` when it does not exist)."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }
