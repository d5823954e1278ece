"""Full disks end a launch in one line and lose nothing: Tune's experiment state kept recoverable.

Ray Tune 2.60 writes its experiment state (``experiment_state-<session>.json``, the searcher's
``searcher-state-<session>.pkl``, ``search_gen_state-<session>.json``) into a driver staging folder
with plain ``open(..., "w")`` and copies it into the storage with pyarrow, in place: a disk that
fills up mid-copy leaves the storage's copy truncated, and ``Tuner.restore`` then logs "Failed to
restore the run state" and starts the phase afresh (the completed trials are gone and every
``--resume`` stops short of its budget). So the launch keeps its own copy:

- :class:`StateKeeper` (a Tune callback) copies the staging folder's state files into
  ``<experiment>/.vptsearch-last-good/state-<n>`` each time Tune snapshots (from ``get_state``,
  which Tune calls right after it has written them), as one set: written into a temp folder and
  renamed, so a copy is either whole or absent;
- :func:`heal` (before a phase is restored) puts that copy back when a state file in the storage
  does not parse, keeping the damaged file as ``<name>.damaged``.

Object stores (S3) need neither: an object is written whole or not at all.

Any ``OSError`` ENOSPC / EDQUOT / EROFS in a launch (the MLflow spool, Tune, a trial's checkpoint)
becomes :class:`DiskFull`: one line naming the path and ``--resume``; the MLflow runs stay open
(it is a :class:`LaunchInterrupted`, which the driver and the CLI treat as resumable).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pickletools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import tune

from vptsearch._atomic import write_atomic
from vptsearch._errors import ConfigError
from vptsearch.search._compat import tune_staging_dir
from vptsearch.search._phases import LaunchInterrupted

log = logging.getLogger(__name__)

LAST_GOOD = ".vptsearch-last-good"
# what each errno means for the user, and what frees it
FULL = {
    errno.ENOSPC: ("no space left on device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space (or raise the quota)"),
    errno.EROFS: ("read-only file system", "make it writable"),
}
_TEXT = {  # how the errors read in a trial's error.txt (pyarrow says "[errno 28]")
    errno.ENOSPC: ("errno 28]", "No space left on device"),
    errno.EDQUOT: ("errno 122]", "Disk quota exceeded"),
    errno.EROFS: ("errno 30]", "Read-only file system"),
}


class DiskFull(LaunchInterrupted):
    """A write of the launch failed for want of space (or a writable disk); ``--resume`` continues.

    ``resumable``: the launch folder has its spec.yaml (else the hint is to run the launch again).
    """

    def __init__(self, code: int, path: str, space: str | None = None, resumable: bool = True) -> None:
        super().__init__("", 0, 0, space)
        self.code, self.path, self.resumable = code, path, resumable

    def __str__(self) -> str:
        what, fix = FULL[self.code]
        home = os.path.expanduser("~")
        if self.code == errno.EROFS and self.path.startswith(home.rstrip("/") + "/"):
            fix = f"HOME ({home}) must be writable (Ray keeps ~/.ray there): make it writable or set HOME"
        space = self.space or "SPACE.yaml"
        again = f"vptsearch launch --space {space}" + (" --resume" if self.resumable else "")
        return f"{what} writing {self.path}; {fix} and continue with `{again}`"


def disk_full(exc: BaseException | None) -> DiskFull | None:
    """The :class:`DiskFull` that ``exc`` is, carries (cause, context) or wraps (a RayTaskError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return exc
        if isinstance(exc, OSError) and exc.errno in FULL:
            return DiskFull(exc.errno, str(exc.filename or "the launch's files"))
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError
        # `raise ... from None` replaced its context (a preflight's own one-line error): not a full disk
        context = None if exc.__suppress_context__ else exc.__context__
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or context)
    return None


def raise_if_disk_full(exc: BaseException) -> None:
    """Raise ``exc`` as a :class:`DiskFull` when it is one (else return)."""
    found = disk_full(exc)
    if found is not None:
        raise found from None


@contextlib.contextmanager
def disk_full_is_one_line(run_dir: Path) -> Iterator[None]:
    """Whatever a launch raises that is a full (or read-only) disk leaves as one :class:`DiskFull`."""
    try:
        yield
    except BaseException as exc:
        found = disk_full(exc)
        if found is None:
            raise
        found.resumable = (Path(run_dir) / "spec.yaml").is_file()
        raise found from None


# --- what parses ---------------------------------------------------------------------------------
def _state_files(folder: Path) -> list[Path]:
    """The files Tune restores a phase from: top-level ``*.json`` and ``*.pkl`` (Ray 2.60 downloads
    exactly these on restore), without Tune's own ``tmp-*`` files."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix in (".json", ".pkl") and not p.name.startswith("tmp-")
    )  # fmt: skip


def damage(path: Path) -> str | None:
    """Why ``path`` (a JSON or pickle state file) does not parse; None when it does.

    A pickle (Tune names some of its pickles ``*.json``: ``search_gen_state``, ``basic-variant-state``)
    is walked opcode by opcode to its STOP (no class is imported), which catches any truncation;
    JSON is parsed.
    """
    try:
        data = path.read_bytes()
        if path.suffix == ".pkl" or data[:1] == b"\x80":  # pickle protocol 2+
            for _ in pickletools.genops(data):
                pass
        else:
            json.loads(data)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return (str(exc).splitlines() or [type(exc).__name__])[0][:120]
    return None


def _last_good(exp_dir: Path) -> Path | None:
    sets = [p for p in (exp_dir / LAST_GOOD).glob("state-*") if p.name[6:].isdigit()]
    return max(sets, key=lambda p: int(p.name[6:]), default=None)


# --- keeping the last good copy ------------------------------------------------------------------
class StateKeeper(tune.Callback):
    """Keeps the last whole copy of one phase's Tune state beside it (local or NFS storage).

    Tune calls :meth:`get_state` while it saves a snapshot, after the experiment and searcher state
    are in the staging folder (an error writing them would have stopped the save before it); the
    files are copied from there. A copy that fails (the disk is full) is removed and the previous
    one kept. A trial that failed for want of space stops the launch (:class:`DiskFull`) instead of
    burning its retries and the remaining trials on the same full disk.
    """

    def __init__(self, experiment_dir: str | Path) -> None:
        self.experiment_dir = str(experiment_dir)
        self._staging: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"experiment_dir": self.experiment_dir, "_staging": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._staging = self._staging or tune_staging_dir(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._stop_if_disk_full(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._stop_if_disk_full(trial)

    def get_state(self) -> dict | None:
        if self._staging:
            self.keep(Path(self._staging))
        return None  # nothing of ours in Tune's callback state

    def keep(self, staging: Path) -> Path | None:
        """Copy ``staging``'s state files (and tuner.pkl) as the new last good set; its folder."""
        exp_dir = Path(self.experiment_dir)
        files = [*_state_files(staging), *[p for p in [exp_dir / "tuner.pkl"] if p.is_file()]]
        if not files or any(damage(p) for p in files):
            return None
        base = exp_dir / LAST_GOOD
        tmp = base / f"tmp-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for p in files:
                shutil.copyfile(p, tmp / p.name)
            prev = _last_good(exp_dir)
            n = int(prev.name[6:]) + 1 if prev else 1
            os.rename(tmp, base / f"state-{n}")
        except OSError as exc:  # the previous copy stays; the launch's own write will say it
            shutil.rmtree(tmp, ignore_errors=True)
            log.debug("could not keep a copy of Tune's state in %s: %s", base, exc)
            return None
        if prev is not None:
            shutil.rmtree(prev, ignore_errors=True)
        return base / f"state-{n}"

    def _stop_if_disk_full(self, trial: Any) -> None:
        code = _trial_disk_error(getattr(trial, "error_file", None))
        if code is not None:
            raise DiskFull(code, str(getattr(trial, "path", None) or self.experiment_dir))


def _trial_disk_error(error_file: str | None) -> int | None:
    """The errno (of :data:`FULL`) of a trial's latest failure, read from its ``error.txt``."""
    if not error_file:
        return None
    try:
        text = Path(error_file).read_text(errors="replace")
    except OSError:
        return None
    last = text.rsplit("Failure # ", 1)[-1]
    for code, marks in _TEXT.items():
        if any(m in last for m in marks):
            return code
    return None


def state_guard(store: Any, phase: str, resume: bool) -> list[tune.Callback]:
    """The phase's :class:`StateKeeper` (none on object storage); with ``resume``, the phase's
    state healed first (:func:`heal`), before Tune reads it."""
    if store.remote:
        return []
    exp_dir = Path(store.path) / phase
    if resume:
        heal(exp_dir)
    return [StateKeeper(exp_dir)]


def heal(exp_dir: Path) -> list[str]:
    """Put the last good copy of a phase's Tune state back where a state file does not parse.

    Returns the names of the files put back (empty when nothing was damaged). A damaged state with
    no copy to put back is a ConfigError naming the file: Tune would start the phase from nothing.
    """
    files = _state_files(exp_dir)
    bad = {p.name: why for p in files if (why := damage(p))}
    if not bad:
        return []
    name, why = next(iter(bad.items()))
    good = _last_good(exp_dir)
    if good is None:
        raise ConfigError(
            f"Tune's state {exp_dir / name} is damaged ({why}) and no good copy of it was kept; "
            f"accepted: a launch folder whose {exp_dir.name} phase state parses (remove {exp_dir} "
            "to run that phase again from its start)"
        )
    keep = {p.name for p in _state_files(good)}
    for p in files:  # damaged or newer than the copy: Tune must not pick them (it takes the newest)
        if p.name in bad or p.name not in keep:
            os.replace(p, p.with_name(p.name + ".damaged"))
    for p in _state_files(good):
        write_atomic(exp_dir / p.name, p.read_bytes())
    log.warning(
        "vptsearch: Tune's state %s was damaged (%s): restored the %s phase from its last good copy "
        "(%s); the damaged file is kept as %s.damaged", exp_dir / name, why, exp_dir.name, good, name,
    )  # fmt: skip
    return sorted(keep)
