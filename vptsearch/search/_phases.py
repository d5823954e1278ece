"""One Tune phase of a launch (``search`` or ``final``): its Tuner, fresh or restored, and what it left.

All tasks share one Tune experiment per phase (see :mod:`vptsearch.search._searcher` for why),
stored under the launch's Tune storage so ``--resume`` restores it with its searcher state. The
search's experiment also runs each task's final trials once that task's search has ended
(:mod:`vptsearch.search._final_queue`); the ``final`` phase's own Tuner is left for a launch
folder whose search ran before that (or a benchmark of the launch path as it was).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from safetensors.torch import save_file

from vptsearch._atomic import write_atomic
from vptsearch._errors import VptsearchError
from vptsearch.search import _bundle, _trainable, _trial_failures
from vptsearch.search._checkpoints import CheckpointPruner
from vptsearch.search._compat import cached_trainable_lookups
from vptsearch.search._protocol import TrialRecord
from vptsearch.search._result_keys import trial_status
from vptsearch.search._results import FinalRun
from vptsearch.search._scheduler import PerTaskScheduler
from vptsearch.search._storage import Storage, launch_storage
from vptsearch.spec import SearchSpec

# in the run dir: how the launch's phases run (``{"finals_in_search": true}``: each task's finals in
# the search's experiment); a launch folder without it ran its finals in a final phase of their own
PHASES_FILE = "phases.json"


class LaunchInterrupted(VptsearchError):
    """The driver stopped before every trial finished; ``--resume`` continues it.

    ``space``: the search space file to name in the resume hint (the CLI sets the one it was given);
    ``cause``: why it stopped when it was not Ctrl-C (trials killed for memory, see
    :mod:`vptsearch.search._trial_failures`), said before the resume hint.
    """

    def __init__(
        self, phase: str, finished: int, total: int, space: str | None = None, cause: str | None = None
    ) -> None:
        self.phase, self.finished, self.total, self.space, self.cause = phase, finished, total, space, cause
        super().__init__(phase, finished, total, space, cause)

    def __str__(self) -> str:
        why, then = (f": {self.cause}", "then ") if self.cause else ("", "")
        return (
            f"the {self.phase} phase stopped with {self.finished}/{self.total} trials finished{why}; "
            f"{then}continue with `vptsearch launch --space {self.space or 'SPACE.yaml'} --resume`"
        )


@dataclass(frozen=True)
class TuneSetup:
    """What every phase's Tuner of one launch shares.

    ``store``: the Tune storage the launch checked (default ``launch_storage(spec, run_dir)``);
    ``backbone``: the driver's weights in the object store (``_cluster.share_backbone``), else each
    trial loads the spec's; ``resume``: restore a phase's experiment when its state is there.
    """

    spec: SearchSpec
    run_dir: Path
    store: Storage | None = None
    backbone: Any = None
    resume: bool = False
    splits: Any = None  # the launch's decoded splits (_split_store.RaySplitStore), None: per worker
    # Tune's own checkpoint pruning and pending-trial limit instead of the launch's (benchmarks
    # measure the launch path as it was with them): ``num_to_keep`` and ``TUNE_MAX_PENDING_TRIALS_PG``
    tune_num_to_keep: int | None = None
    max_pending_trials: int | None = None
    # each task's final trials start in the search's experiment when its search ends (_final_queue);
    # False: a second Tuner runs every final after the last search trial (the launch before that)
    finals_in_search: bool = True


def run_tuner(
    setup: TuneSetup,
    name: str,
    searcher: Any,
    scheduler: Any,
    num_samples: int,
    callbacks: list,
    expected: Callable[[tune.ResultGrid], int] | None = None,
) -> tune.ResultGrid:
    """Run (or, with ``setup.resume``, restore and finish) the phase ``name``; its results.

    Raises :class:`LaunchInterrupted` when fewer trials really ended than ``expected(results)``
    (default ``num_samples``, Tune's limit: a search that runs its finals too knows how many it
    runs only from the winners its trials gave).
    """
    # local run dir, NFS, or a pyarrow filesystem (S3)
    store, path = _experiment(setup, name)
    # looked up on the module: the benchmarks swap in a stand-in trainable
    trainable = _trainable.make_trainable(setup.spec, setup.backbone, setup.splits)
    # the launch keeps each trial's newest checkpoint (see _checkpoints: Tune's num_to_keep forces
    # an experiment snapshot per checkpoint)
    pruner = [CheckpointPruner()] if setup.tune_num_to_keep is None else []
    if restores(setup, name):
        tuner = tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=True,
            storage_filesystem=store.fs,
        )  # fmt: skip
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=num_samples, reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=store.path,
                storage_filesystem=store.fs,
                callbacks=[*callbacks, _trainable.NoTensorBoard(), *pruner],
                verbose=0,  # ProgressCallback prints one line per finished trial
                # a lost worker or node, or a worker Ray's memory monitor killed (_trial_failures)
                failure_config=tune.FailureConfig(max_failures=setup.spec.training.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=setup.tune_num_to_keep),
            ),
        )
    pending = setup.max_pending_trials or trial_slots(setup.spec)
    epochs = setup.spec.training.epochs
    with (
        _quiet_tune_restore_hint(), cached_trainable_lookups(), _max_pending_trials(pending),
        _trial_failures.memory_kills_retried(),
    ):  # fmt: skip
        try:
            results = tuner.fit()
        except Exception as exc:  # a memory kill Tune could not retry: one line, not its traceback
            cause = _trial_failures.crash_cause(exc)
            if cause is None:
                raise
            _trial_failures.end_open_trial_runs(callbacks)
            raise LaunchInterrupted(name, _ended_on_disk(path, trainable, store, epochs), num_samples,
                                    cause=cause) from None  # fmt: skip
    finished = finished_trials(results, epochs)
    want = num_samples if expected is None else expected(results)
    killed = _trial_failures.memory_stop(results, setup.spec.training.max_failures)
    if killed is not None:  # retries spent: --resume restores them (resume_errored) once memory allows
        raise LaunchInterrupted(name, finished - killed[0], want, cause=killed[1])
    if finished < want:
        raise LaunchInterrupted(name, finished, want)
    return results


def _experiment(setup: TuneSetup, name: str) -> tuple[Storage, str]:
    store = setup.store or launch_storage(setup.spec, setup.run_dir)
    return store, f"{store.path}/{name}"


def restores(setup: TuneSetup, name: str) -> bool:
    """Whether :func:`run_tuner` restores the phase ``name`` (resuming, and Tune saved its state)."""
    store, path = _experiment(setup, name)
    return setup.resume and tune.Tuner.can_restore(path, storage_filesystem=store.fs)


def finals_in_search(setup: TuneSetup) -> bool:
    """Whether the search's experiment runs each task's finals (:mod:`._final_queue`): yes for a
    search started now (``setup.finals_in_search``); a restored one only if it was started so
    (``PHASES_FILE``: a launch folder from before has none, and its final phase runs on its own)."""
    mark = setup.run_dir / PHASES_FILE
    if setup.finals_in_search and not restores(setup, "search"):
        write_atomic(mark, json.dumps({"finals_in_search": True}))
    return mark.is_file() and bool(json.loads(mark.read_text()).get("finals_in_search"))


def _ended_on_disk(path: str, trainable: Any, store: Storage, max_epochs: int) -> int:
    """The trials of the experiment at ``path`` that really ended, as its saved state has them
    (after ``Tuner.fit`` raised, the Tuner has no results to ask)."""
    try:
        results = tune.Tuner.restore(path, trainable=trainable, storage_filesystem=store.fs).get_results()
    except Exception:  # no state saved yet
        return 0
    return finished_trials(results, max_epochs)


def finished_trials(results: Any, max_epochs: int) -> int:
    """Trials that really ended: errored; their last result is one a trial ends itself with (every
    one of ``max_epochs`` epochs trained, diverged, or a recorded failure); it is Tune's ``done``
    (stopped by ASHA); or a scheduler of this process stopped them (a restored scheduler's stop
    need not set ``done``).

    Tune's ``done`` alone is not enough either way. After Ctrl-C Tune's cleanup marks the trials it
    interrupts TERMINATED (``num_terminated`` counted them as finished) and their last result is
    not ``done``. And Ray 2.60 can snapshot a trial whose function returned as TERMINATED with its
    last result from before ``done`` was set (its "duplicate" end result updates the result in
    memory without marking the trial for the snapshot): restored from that snapshot (measured on S3
    storage, the final phase), an ended trial lacks ``done``.
    """
    stopped = PerTaskScheduler.stopped_trial_ids

    def ended(r: Any) -> bool:
        last = r.metrics or {}
        if r.error is not None or bool(last.get("done")) or last.get("trial_id") in stopped:
            return True
        return bool(last) and trial_status(last, max_epochs) != "pruned"

    return sum(1 for r in results if ended(r))


def trial_slots(spec: SearchSpec) -> int:
    """How many trials the Ray cluster holds at once (its CPUs and GPUs over one trial's share).

    Tune stages one pending trial at a time for any searcher but its own random/grid ones
    (``TUNE_MAX_PENDING_TRIALS_PG``): after a wave of trials ends, free slots then fill one per
    controller step. With as many pending as slots, a free slot takes a staged trial at once.
    """
    import ray

    have = ray.cluster_resources()
    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    fits = [int(have.get(k, 0.0) // v) for k, v in need.items() if v > 0]
    return max(1, min(fits, default=1))


@contextlib.contextmanager
def _max_pending_trials(n: int) -> Iterator[None]:
    """``TUNE_MAX_PENDING_TRIALS_PG`` = ``n`` while the Tuner runs (Tune reads it when the run
    starts), unless the user set it."""
    if "TUNE_MAX_PENDING_TRIALS_PG" in os.environ:
        yield
        return
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(n)
    try:
        yield
    finally:
        os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)


@contextlib.contextmanager
def _quiet_tune_restore_hint() -> Iterator[None]:
    """Silence Tune's own "Resume experiment with: Tuner.restore(path=..., trainable=...)" warning
    after Ctrl-C (logger ``ray.tune.tune``): that is Tune's Python API, the user's is
    ``vptsearch launch --resume``, which LaunchInterrupted prints. Tune's other warnings from
    that logger (the "Stop signal received" line) stay."""

    class _NoRestoreHint(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Tuner.restore(" not in record.getMessage()

    f = _NoRestoreHint()
    tune_log = logging.getLogger("ray.tune.tune")
    tune_log.addFilter(f)
    try:
        yield
    finally:
        tune_log.removeFilter(f)


def _of_phase(results: Any, phase: str) -> list[Any]:
    """The results of ``phase``'s trials (a search experiment runs its tasks' finals too). A trial
    that never reported (a Ctrl-C right after Tune started it) has no config: it has nothing to
    select on either, and the phase's count of finished trials says the launch is unfinished."""
    return [r for r in results if r.config is not None and r.config.get("phase", "search") == phase]


def trial_records(results: Any, max_epochs: int) -> list[TrialRecord]:
    """The search phase's trials as the protocol selects on them."""
    out = []
    for r in _of_phase(results, "search"):
        last = dict(r.metrics or {})
        trial_id = last.get("trial_id") or Path(r.path).name
        out.append(TrialRecord.from_result(trial_id, dict(r.config), last, r.error is not None, max_epochs))
    return out


def final_runs(results: Any, run_dir: Path, max_epochs: int) -> dict[str, dict[int, FinalRun]]:
    """Per task and seed: status, test accuracy and the saved trained tensors (safetensors)."""
    out: dict[str, dict[int, FinalRun]] = {}
    for r in _of_phase(results, "final"):
        cfg, last = dict(r.config), dict(r.metrics or {})
        task, seed = cfg["task"], int(cfg["seed"])
        run = FinalRun(trial_status(last, max_epochs, r.error is not None), last.get("test_acc"), cfg)
        ckpt = r.checkpoint
        state = _trainable.load_state(ckpt) if ckpt is not None and run.status == "completed" else None
        if state is not None:
            path = run_dir / "final" / _bundle.task_dirname(task) / f"seed-{seed}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in state["trained"].items()}, str(path))
            run.weights = str(path)
        out.setdefault(task, {})[seed] = run
    return out
