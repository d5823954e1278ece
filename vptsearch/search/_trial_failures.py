"""Trials killed by Ray's memory monitor: retried like a lost worker, else one line that says so.

When a node runs low on memory, Ray's memory monitor kills workers; the actor task a trial was
running then fails with ``ray.exceptions.OutOfMemoryError`` ("N worker(s) were killed due to the
node running low on memory"). Tune 2.60's actor manager expects only ``RayActorError`` (the actor
died) or ``RayTaskError`` (the trial raised) there and raises ``RuntimeError("Caught unexpected
exception: ...")`` out of ``Tuner.fit`` for anything else: no ``FailureConfig`` retry, a traceback of
hundreds of lines, the trials' MLflow runs left RUNNING. :func:`memory_kills_retried` hands Tune
the kill as what it is, the trial's actor died (:class:`KilledForMemory`), so Tune retries the trial
from its last checkpoint (``training.max_failures``) and goes on with the other trials. A trial
whose retries are spent ends ERROR; the phase then stops in one line (:func:`memory_stop`, raised by
``_phases.run_tuner``) that names the memory monitor, the knobs and ``--resume``, which restores the
errored trials from their checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from ray.exceptions import OutOfMemoryError, RayActorError

from vptsearch.search._compat import actor_task_errors
from vptsearch.search._tracking import PREFIX

# what Ray's own kill message recommends, as the spec and the environment spell it
MEMORY_HINT = (
    "run fewer trials at once (`search.max_concurrent`, or more `resources.cpu`/`resources.gpu` per "
    "trial) or raise Ray's kill threshold `RAY_memory_usage_threshold` (default 0.95)"
)
_OOM_TEXT = "running low on memory"  # in every kill message of Ray's memory monitor


class KilledForMemory(RayActorError):
    """A trial's worker killed by Ray's memory monitor, as Tune handles a dead actor (retried).

    The message is Ray's (node, memory used, threshold); it is the trial's error in Tune's result.
    """

    def __init__(self, message: str) -> None:
        super().__init__(error_msg=message)


@contextlib.contextmanager
def memory_kills_retried() -> Iterator[None]:
    """While a Tuner runs: an ``OutOfMemoryError`` of a trial's actor task reaches Tune as
    :class:`KilledForMemory` (a ``RayActorError``), which Tune retries per ``FailureConfig``.

    Why: see the module docstring; where Tune sorts a failed actor task is a Tune internal
    (``_compat.actor_task_errors``). Should a kill still reach ``Tuner.fit`` as an exception, the
    launch says so in one line too (:func:`crash_cause`).
    """

    def as_actor_death(exception: Exception) -> Exception:
        return KilledForMemory(str(exception)) if isinstance(exception, OutOfMemoryError) else exception

    tune_log, short = logging.getLogger("ray.tune.execution.tune_controller"), _OneLineKills()
    tune_log.addFilter(short)
    try:
        with actor_task_errors(as_actor_death):
            yield
    finally:
        tune_log.removeFilter(short)


class _OneLineKills(logging.Filter):
    """Tune logs every failed trial with its exception (``Trial task failed for trial X``); for a
    memory kill that is Ray's whole report (its top-10 memory users table, ~50 lines) each time.
    One line instead: the trial, Ray's first line (memory used / limit on the node), the retry."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, KilledForMemory):
            first = str(exc).splitlines()[0] if str(exc) else "killed by Ray's memory monitor"
            record.msg = (
                f"{record.getMessage()}: {first} (Tune retries it while training.max_failures allows)"
            )
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def killed_for_memory(error: BaseException | None) -> bool:
    """Whether a trial's error (or an exception out of ``Tuner.fit``, with its chain) is a memory kill."""
    seen = 0
    while error is not None and seen < 10:  # the chain Tune and Ray wrap it in
        if isinstance(error, (KilledForMemory, OutOfMemoryError)) or _OOM_TEXT in str(error):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def memory_stop(results: Any, max_failures: int) -> tuple[int, str] | None:
    """``(trials, cause)`` when trials of a finished Tuner ended ERROR for memory, their retries
    spent (None when none did): the cause for ``LaunchInterrupted``, one line."""
    killed = sum(1 for r in results if killed_for_memory(getattr(r, "error", None)))
    if not killed:
        return None
    retries = (
        f"after {max_failures} retr{'y' if max_failures == 1 else 'ies'} each"
        if max_failures > 0
        else "with no retries (`training.max_failures: 0`)"
    )
    trials = "1 trial was" if killed == 1 else f"{killed} trials were"
    return killed, (
        f"{trials} killed by Ray's memory monitor (the node ran low on memory) {retries}; {MEMORY_HINT}"
    )


def crash_cause(exc: BaseException) -> str | None:
    """The cause to name when ``Tuner.fit`` itself raised for memory (Tune did not retry); else None."""
    if not killed_for_memory(exc):
        return None
    return f"Ray's memory monitor killed trial workers (the node ran low on memory); {MEMORY_HINT}"


def end_open_trial_runs(callbacks: Iterable[Any]) -> None:
    """After ``Tuner.fit`` raised: the MLflow runs of the trials that were still running end KILLED
    (``--resume`` reopens and continues them). The launch's TrackingCallback knows them; Tune
    already ended the errored ones (``on_experiment_end``)."""
    for cb in callbacks:
        end = getattr(cb, "end_open_runs", None)  # TrackingCallback's (Tune's own callbacks have none)
        if callable(end):
            end()


def end_stopped_runs(launch: Any, exc: BaseException) -> None:
    """A launch whose phase stopped for memory (a ``LaunchInterrupted`` with a ``cause``): its task
    and launch runs end KILLED, the cause as ``vptsearch.error`` (``--resume`` reopens them).
    Ctrl-C (no cause) leaves them RUNNING, as before."""
    cause = getattr(exc, "cause", None)
    tracker = getattr(launch, "tracker", None)
    if not cause or tracker is None:
        return
    refs = [*getattr(launch, "parents", {}).values()]
    if getattr(launch, "launch_run", None):
        refs.append(launch.launch_run)
    error = f"the {getattr(exc, 'phase', '?')} phase stopped: {cause}"[:500]
    for ref in refs:
        tracker.set_tags(ref, {PREFIX + "status": "stopped", PREFIX + "error": error})
        tracker.end(ref, "KILLED")
