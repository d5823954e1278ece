"""``vptsearch --help | head -1``: a reader that goes away early is no error message and no failure.

argparse prints help inside ``parse_args`` and exits; stdout (block-buffered into a pipe) is only
written when the interpreter flushes it at exit, which printed ``Exception ignored ...
BrokenPipeError`` and exited 120 when the reader had closed the pipe.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "argv, code", [(["--help"], 0), (["launch", "--help"], 0), (["--version"], 0), ([], 2)]
)
def test_a_closed_pipe_on_stdout_is_quiet(argv: list[str], code: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as in a user's shell
    proc = subprocess.Popen(
        [sys.executable, "-m", "vptsearch.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before a byte is written (`| head -1` of a long output)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == code
    assert "BrokenPipeError" not in err and "Exception ignored" not in err, err
    if code == 0:
        assert err == ""
