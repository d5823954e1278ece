"""The one runner of the fuzz corpora (issue 31, item 8): a case makes its files in the test's folder,
runs ``vptsearch ARGV`` in-process there, and must end as it says.

A refused case exits 2 (or its ``code``) with exactly one stderr line ``vptsearch: error: ...``
matching ``err`` and no traceback, prints only what ``out`` allows, and leaves the folder as it was:
every file byte for byte, no folder or link added or removed, no temporary file, nothing beside it.
An accepted case (``err=None``) exits 0 with an empty stderr and no temporary file left; ``then``
checks what a case left (an accepted import's manifest). Either way no Ray is started, ``opens``
bounds the files read, and a ``fast`` case allocates under 64 MiB (and ends within seconds).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..data._cli_run import run, tree_digest

# generous on time (a loaded CI machine; timings belong in benchmarks/): what a ``fast`` case guards
# against is allocating from a huge size or label (C1: ``set(range(k))`` grew to 23 GB)
FAST_S, FAST_BYTES = 10.0, 64 << 20
Setup = Callable[[Path], object]  # makes or breaks a case's files in the test's folder


def nothing(folder: Path) -> None:
    """The setup of a case whose input the file's own preparation already made."""


@dataclass(frozen=True)
class Case:
    """One input and what the CLI must do with it (``argv``: paths relative to the folder, or under
    ``{folder}``, its absolute path: an escape that is not refused still lands in the folder)."""

    id: str
    setup: Setup  # run in the folder (the cwd), before its layout is taken
    argv: tuple[str, ...]
    err: str | None  # regex the one stderr line must match; None: accepted, stderr empty
    code: int | None = None  # default: 2 when refused, 0 when accepted
    out: str = ""  # regex all of stdout must match (default: nothing printed)
    then: Callable[[Path], bool] | None = None  # a check of what it left in the folder (e.g. a manifest)
    opens: tuple[str, ...] | None = None  # the only folders files may be opened in (None: not watched)
    fast: bool = False
    marks: tuple[Any, ...] = ()

    @property
    def exit_code(self) -> int:
        return self.code if self.code is not None else (0 if self.err is None else 2)


def params(cases: Iterable[Case]) -> list[Any]:
    """The cases as pytest parameters, each named by its id (ids must be unique)."""
    cases = list(cases)
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]


def layout(folder: Path) -> dict[str, str]:
    """What is under ``folder``: a file's sha256, ``dir`` for a folder, ``-> target`` for a link that
    is not a file (to a folder, dangling, a loop); links into folders are not followed."""
    if not folder.exists():
        return {}
    entries = {}
    for p in folder.rglob("*"):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            entries[rel] = f"-> {os.readlink(p)}"
        elif p.is_dir():
            entries[rel] = "dir"
    return {**entries, **tree_digest(folder)}


def _temporary(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".vptsearch-write")]


@contextlib.contextmanager
def _opens(watch: bool) -> Iterator[list[Path]]:
    """Every path opened through pathlib (list files, images, bundles) while it is open."""
    seen: list[Path] = []
    real_open = pathlib.Path.open

    def spy(self: Path, *args: Any, **kwargs: Any) -> Any:
        seen.append(Path(os.path.abspath(self)))
        return real_open(self, *args, **kwargs)

    if watch:
        pathlib.Path.open = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        pathlib.Path.open = real_open  # type: ignore[method-assign]


def check(
    case: Case, folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> str:
    """Run ``case`` in ``folder`` and assert everything it promises; returns its stderr."""
    monkeypatch.chdir(folder)
    case.setup(folder)
    before, beside = layout(folder), sorted(p.name for p in folder.parent.iterdir())
    capsys.readouterr()
    if case.fast:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        with _opens(case.opens is not None) as opened:
            code, out, err = run(capsys, *(a.replace("{folder}", str(folder)) for a in case.argv))
    finally:
        took = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if case.fast else 0
        if case.fast:
            tracemalloc.stop()
    assert code == case.exit_code, err
    assert "Traceback" not in out + err, err
    assert re.fullmatch(case.out, out, re.DOTALL), out
    if case.err is None:
        assert err == "", err
    else:
        assert err.startswith("vptsearch: error: ") and err.count("\n") == 1, err
        assert re.search(case.err, err), err
        after = layout(folder)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"a refused case changed, added or removed {changed[:5]}"
    assert not _temporary(folder), "temporary files left"
    assert case.then is None or case.then(folder), "what it left is not what the case expects"
    assert sorted(p.name for p in folder.parent.iterdir()) == beside, "wrote beside the test's folder"
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "started Ray"
    if case.opens is not None:
        roots = [(folder / d).resolve() for d in case.opens or ()]
        strays = [p for p in opened if not any(p.resolve().is_relative_to(r) for r in roots)]
        assert not strays, f"opened outside {case.opens}: {strays[:3]}"
    if case.fast:
        assert took < FAST_S and peak < FAST_BYTES, f"{took:.2f} s, {peak / 2**20:.0f} MiB at peak"
    return err
