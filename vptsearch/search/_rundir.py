"""A launch's run folder ``<run_dir>/<name>/<stamp>``: claimed atomically, found again for ``--resume``.

The folder's name is the launch id; it holds the driver's own files (``spec.yaml``,
``results.json``, ``optuna.journal``, the MLflow spool, the report, the final seeds' weights) and
``launch.lock``, which the launch running in it holds (:mod:`vptsearch.search._runlock`).
Nothing here imports Ray or torch: ``vptsearch report`` and ``export`` find their launch through it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from vptsearch._errors import ConfigError
from vptsearch.search import _runlock
from vptsearch.search._exports import stamp_key
from vptsearch.spec import SearchSpec, read_yaml, spec_from_dict
from vptsearch.spec._fields import unsafe_name

SPEC_FILE, RESULTS_FILE = "spec.yaml", "results.json"


def safe_leaf(value: str, what: str) -> str:
    """``value`` when it is one folder name that stays where it is put, else a ConfigError.

    The spec's ``name`` is checked when the spec is parsed; this checks again where folders are
    formed (defence in depth: a spec built another way, a stamp), leaving valid names as they are.
    """
    problem = unsafe_name(value)
    if problem:
        raise ConfigError(f"{what}: {problem}")
    return value


def launches_dir(spec: SearchSpec) -> Path:
    return Path(spec.run_dir).resolve() / safe_leaf(spec.name, "name")


def latest_run_dir(spec: SearchSpec, *, running: bool = False) -> Path | None:
    """The newest launch folder of the space that has its spec.yaml (written once Ray is up);
    with ``running`` also one whose launch holds its lock but is still in its checks."""
    base = launches_dir(spec)

    def found(p: Path) -> bool:
        return (p / SPEC_FILE).is_file() or (running and _runlock.holder(p) is not None)

    runs = [p for p in base.glob("*") if found(p)] if base.is_dir() else []
    # chronological, not lexical: ``...-10`` (the 10th launch in a second) comes after ``...-2``
    return max(runs, key=lambda p: stamp_key(p.name)) if runs else None


def allocate_run_dir(base: Path, stamp: str | None = None) -> Path:
    """Create and return a launch folder ``base/<stamp>`` that no other launch has.

    ``mkdir`` without ``exist_ok`` is the atomic claim: two launches started in the same second
    both try ``<stamp>``, one wins, the other moves on to ``<stamp>-1`` (then ``-2`` ...). The
    folder's name is the launch id, so a launch owns its Tune experiment, Optuna journal, MLflow
    runs and bundles from its first moment (the stamp used to be created only after preflight
    and Ray start, with ``exist_ok=True``, and two launches shared everything).
    """
    stamp = safe_leaf(stamp or time.strftime("%Y%m%d-%H%M%S"), "launch stamp")
    base.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        path = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise ConfigError(f"{base}: 10000 launches named {stamp!r} already; remove old run folders")


def _created_dirs(path: Path) -> list[Path]:
    """``path`` and its missing parents (what allocating it will create), innermost first."""
    out = []
    while not path.exists():
        out.append(path)
        path = path.parent
    return out


def remove_empty(dirs: list[Path]) -> None:
    """Undo the folders a launch created if it failed before writing anything in them (its lock
    file aside: the launch that took it is the one giving up)."""
    for d in dirs:
        with contextlib.suppress(OSError):
            if [p.name for p in d.iterdir()] == [_runlock.LOCK_FILE]:
                (d / _runlock.LOCK_FILE).unlink()
        try:
            d.rmdir()  # only ever removes an empty folder: nothing computed is lost
        except OSError:
            if os.path.lexists(d):  # there, and not empty: what is above it stays too
                return
            # never made (mkdir failed on it, or on a name too long): its parents may have been


def prepare_run_dir(spec: SearchSpec, resume: bool) -> tuple[Path, SearchSpec, list[Path]]:
    """The launch folder (allocated now, or the latest one with ``--resume``), the spec to use,
    and the folders created here (removed again if the launch fails before using them).

    The folder's lock (:mod:`._runlock`) is taken before anything is read or written there, and
    is this process's from then on: the caller releases it (``_runlock.release``) when it is done.
    """
    if resume:
        run_dir = latest_run_dir(spec)
        if run_dir is None:
            raise ConfigError(
                f"--resume: no earlier launch of {spec.name!r} under {launches_dir(spec)}; "
                "run without --resume first"
            )
        _runlock.hold(run_dir)  # a launch still running there refuses this one, which wrote nothing
        try:
            # The saved (merged) spec is authoritative (what may differ: see _resume_check).
            saved = spec_from_dict(read_yaml(run_dir / SPEC_FILE), source=str(run_dir / SPEC_FILE))
        except BaseException:
            _runlock.release(run_dir)
            raise
        return run_dir, saved, []
    base = launches_dir(spec)
    created = _created_dirs(base)
    try:
        run_dir = allocate_run_dir(base)
    except OSError as exc:
        remove_empty(created)
        raise ConfigError(
            f"run_dir {str(base)!r}: cannot create a launch folder there ({exc.strerror}); "
            "accepted: a writable folder"
        ) from None
    try:
        _runlock.hold(run_dir)  # new, so only a --resume of it could contend (once it has spec.yaml)
    except BaseException:
        remove_empty([run_dir, *created])
        raise
    return run_dir, spec, [run_dir, *created]
