"""Running the ``vptsearch`` CLI in-process from the data tests: exit code, stdout, stderr."""

from __future__ import annotations

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
