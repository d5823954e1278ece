"""The Ray Tune and Optuna internals vptsearch relies on, each in one place with the version it targets.

The rest of the search engine uses public APIs only (Optuna's ``ask``/``tell``, ``Trial.report``,
``enqueue_trial``, the storages' public methods; Tune's ``Searcher`` and ``TrialScheduler``). What is
here has no public equivalent. Each item names the versions it was written against (the pins of
``constraints.txt``: Ray 2.60, Optuna 5.0) and why it exists; :func:`missing_internals` lists what an
installed version lacks, and ``tests/search/test_compat.py`` fails with that list (and checks that
the hooks are still called) when an upgrade moves one of them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.storages import JournalStorage
from ray.tune import registry
from ray.tune.schedulers import ASHAScheduler


# --- Ray Tune 2.60: ASHAScheduler's trial -> bracket map -------------------------------------------
def asha_tracks(asha: ASHAScheduler, trial_id: str) -> bool:
    """Whether ``asha`` holds ``trial_id`` in one of its brackets.

    Why: ASHA's ``on_trial_result``, ``on_trial_complete`` and ``on_trial_remove`` raise ``KeyError``
    for a trial it was never given (a trial of a restored launch, an errored one already removed),
    and Tune has no public way to ask. Ray 2.60: ``ASHAScheduler._trial_info``, trial id -> bracket.
    """
    return trial_id in asha._trial_info


# --- Optuna 5.0: JournalStorage's read and write paths ---------------------------------------------
class JournalStorageHooks(JournalStorage):
    """Optuna's ``JournalStorage`` with its two private choke points given names of our own.

    Why: the launch's journal keeps its replay in memory and appends records in batches
    (:class:`vptsearch.search._journal.WorkingCopyJournalStorage`, measured 3/4 of the searcher's
    time otherwise); that needs the storage's read and write paths. Optuna 5.0: every storage method
    calls ``_sync_with_backend()`` (replay what the backend gained) before it reads or writes, every
    write goes through ``_write_log(op_code, extra_fields)``, and the in-memory replay is
    ``_replay_result`` (``apply_logs``, ``worker_id``). The defaults here are Optuna's own behaviour.
    """

    def _sync_with_backend(self) -> None:
        self.before_access()

    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        self.write_record({"op_code": op_code, "worker_id": self._replay_result.worker_id, **extra_fields})

    def before_access(self) -> None:
        """Called before every storage read or write (Optuna's own: :meth:`replay_backend`)."""
        self.replay_backend()

    def write_record(self, record: dict[str, Any]) -> None:
        """Called with every journal record a write produces (Optuna's own: append it to the file)."""
        self._backend.append_logs([record])

    def replay_backend(self) -> None:
        """Apply the records of the backend that the in-memory replay has not seen yet."""
        JournalStorage._sync_with_backend(self)

    def apply_to_replay(self, record: dict[str, Any]) -> None:
        """Apply one record to the in-memory replay only (the caller writes it to the file)."""
        self._replay_result.apply_logs([record])


# --- Optuna 5.0: how TPESampler reads a study, and its good-set size -------------------------------
class StudyView:
    """``study`` with the trials its sampler reads replaced by ``trials``; all else is the study's own.

    Why: :class:`vptsearch.search._tpe.WindowedTPESampler` fits TPE to a window of a long study.
    Optuna 5.0: ``TPESampler`` and the search spaces it infers (``_GroupDecomposedSearchSpace``,
    ``IntersectionSearchSpace``) read trials only through the private
    ``Study._get_trials(deepcopy, states, use_cache)``, the one method replaced here.
    """

    def __init__(self, study: optuna.Study, trials: list[Any]) -> None:
        self._study = study
        self._trials = trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = False, states: Any = None, use_cache: bool = False) -> list[Any]:
        trials = self._trials if states is None else [t for t in self._trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


def set_tpe_gamma(sampler: optuna.samplers.TPESampler, gamma: Callable[[int], int]) -> None:
    """Set the size of TPE's good set as a function of the number of trials it models.

    Why: the window models fewer trials than the study has, but its good set must keep the whole
    study's size. Optuna 5.0: ``TPESampler._gamma`` (the public ``gamma`` argument is deprecated
    since 4.9 and goes in 6.0, and is fixed at construction).
    """
    sampler._gamma = gamma


def tpe_default_gamma(n: int) -> int:
    """Optuna's default good-set size for ``n`` modelled trials (``min(ceil(n / 10), 25)``).

    Optuna 5.0: ``optuna.samplers._tpe.sampler.default_gamma`` (not exported).
    """
    from optuna.samplers._tpe.sampler import default_gamma

    return int(default_gamma(n))


# --- Ray 2.60: the driver's node, token auth, the temp dir, the Prometheus discovery file's name ----
def joined_cluster() -> bool:
    """Whether this driver joined a running cluster (``ray.init`` made no head node of its own).

    Why: the launch banner says where the dashboard token comes from, which differs for a local Ray
    and a joined cluster; Ray has no public "am I the head" call. Ray 2.60: ``ray._private.worker.
    _global_node`` is the driver's node, ``.head`` true when this process started it.
    """
    import ray._private.worker as worker

    node = getattr(worker, "_global_node", None)
    return node is not None and not getattr(node, "head", True)


def token_auth_enabled() -> bool:
    """Whether this process's Ray uses token authentication (after ``ray.init`` set it up).

    Why: the launch banner tells the user how to get past the dashboard's token dialog only when
    there is one. Ray 2.60: ``ray._raylet.get_authentication_mode``; a Ray without token auth: False.
    """
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return False
    return bool(get_authentication_mode() == AuthenticationMode.TOKEN)


def default_ray_temp_dir() -> str:
    """Ray's temp dir (``$RAY_TMPDIR``/ray, else /tmp/ray), where the metrics discovery link lives.

    Why: Ray computes it in a private helper. Ray 2.60: ``ray._common.utils.get_default_ray_temp_dir``;
    another layout falls back to Ray's documented default.
    """
    try:
        from ray._common.utils import get_default_ray_temp_dir
    except ImportError:
        return "/tmp/ray"
    return str(get_default_ray_temp_dir())


def prometheus_discovery_file_name() -> str:
    """The name of the file in Ray's temp dir that lists the metrics export targets.

    Why: ``vptsearch monitor`` points a local Prometheus at it; Ray documents the file but exports its
    name only as a private constant. Ray 2.60: ``ray._private.ray_constants``.
    """
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    return str(PROMETHEUS_SERVICE_DISCOVERY_FILE)


# --- Ray Tune 2.60: the trainable registry ----------------------------------------------------------
@contextlib.contextmanager
def cached_trainable_lookups() -> Iterator[None]:
    """Answer Tune's trainable look-ups from a cache while one ``fit`` runs.

    Tune asks Ray's registry for the trainable five times per trial (three existence checks, two
    class loads), each a round trip to the GCS key-value store plus an unpickle: ~4 ms per trial
    on this machine. Within one ``fit`` the registered trainable does not change, so an answer
    once found is kept (a trainable not yet registered is asked again); outside it the registry
    is Ray's own again. Why here: Ray 2.60 keeps the registry in ``ray.tune.registry._global_registry``
    and Tune offers no hook for caching its look-ups.
    """
    reg = registry._global_registry
    get, contains = reg.get, reg.contains
    found: dict[tuple[str, str], Any] = {}

    def cached_get(category: str, key: str) -> Any:
        if category != registry.TRAINABLE_CLASS:
            return get(category, key)
        if (category, key) not in found:
            found[category, key] = get(category, key)
        return found[category, key]

    def cached_contains(category: str, key: str) -> bool:
        if category != registry.TRAINABLE_CLASS or (category, key) in found:
            return (category, key) in found or contains(category, key)
        if not contains(category, key):
            return False
        cached_get(category, key)  # loaded next anyway
        return True

    reg.get, reg.contains = cached_get, cached_contains  # type: ignore[method-assign]
    try:
        yield
    finally:
        vars(reg).pop("get", None)
        vars(reg).pop("contains", None)



# --- Ray Tune 2.60: the driver's staging folder of an experiment ------------------------------------
def tune_staging_dir(trial: Any) -> str | None:
    """The folder where Tune writes a phase's experiment state before it copies it into the storage.

    Why: the launch keeps the last whole copy of that state (:mod:`vptsearch.search._tune_state`),
    and Tune writes it in place, without a temp file; the staging copy is complete once Tune calls
    its callbacks' ``get_state``. Tune passes trials to callbacks but names the folder only on
    their storage context. Ray 2.60: ``Trial.storage`` (a ``ray.train._internal.storage.
    StorageContext``), ``.experiment_driver_staging_path``.
    """
    storage = getattr(trial, "storage", None)
    path = getattr(storage, "experiment_driver_staging_path", None)
    return str(path) if path else None


# --- Ray 2.60: a local Ray on loopback only; the session a local Ray runs -----------------------------
@contextlib.contextmanager
def loopback_node_ip() -> Iterator[None]:
    """While a local Ray starts: its node IP may be 127.0.0.1, so Ray binds every server to loopback.

    Why: Ray 2.60 binds gcs, raylet, the agents and the workers to loopback only when the node IP is
    127.0.0.1, and ``ray.init(_node_ip_address="127.0.0.1")`` alone turns that into the machine's
    routable IP (``services.resolve_ip_for_localhost``) unless ``ray._private.ray_constants.
    ENABLE_RAY_CLUSTER`` is off (Ray's Windows/macOS default; its variable
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is read once, when Ray is imported). Restored afterwards:
    a later ``ray start`` or join from this process is Ray's own again.
    """
    import ray._private.ray_constants as ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def own_session() -> tuple[str, str] | None:
    """``(session dir, temp dir)`` of the local Ray this process started; None for a joined one.

    Why: the launch removes the Prometheus discovery link its Ray's dashboard wrote, which lives in
    the temp dir that Ray was started with and names its session's file; Ray has no public call for
    either. Ray 2.60: ``ray._private.worker._global_node`` (``.head``, ``.get_session_dir_path()``,
    ``.get_temp_dir_path()``).
    """
    import ray._private.worker as worker

    node = getattr(worker, "_global_node", None)
    if node is None or not getattr(node, "head", False):
        return None
    return str(node.get_session_dir_path()), str(node.get_temp_dir_path())


# --- Ray Tune 2.60: how Tune sorts a trial's failed actor task ---------------------------------------
@contextlib.contextmanager
def actor_task_errors(convert: Callable[[Exception], Exception]) -> Iterator[None]:
    """While a Tuner runs: the exception of a trial's failed actor task goes through ``convert``
    before Tune sorts it.

    Why: Tune 2.60 handles a ``RayActorError`` (the actor died: retried per ``FailureConfig``) or a
    ``RayTaskError`` (the trial raised) there and raises ``RuntimeError("Caught unexpected exception:
    ...")`` out of ``Tuner.fit`` for anything else, e.g. the ``OutOfMemoryError`` of a worker Ray's
    memory monitor killed (see :mod:`vptsearch.search._trial_failures`). Ray 2.60:
    ``ray.air.execution._internal.actor_manager.RayActorManager._actor_task_failed(
    tracked_actor_task, exception)``.
    """
    from ray.air.execution._internal.actor_manager import RayActorManager

    original = RayActorManager._actor_task_failed

    def task_failed(self: Any, tracked_actor_task: Any, exception: Exception) -> Any:
        return original(self, tracked_actor_task=tracked_actor_task, exception=convert(exception))

    RayActorManager._actor_task_failed = task_failed  # type: ignore[method-assign]
    try:
        yield
    finally:
        RayActorManager._actor_task_failed = original  # type: ignore[method-assign]


# --- the list the test checks ----------------------------------------------------------------------
def missing_internals() -> list[str]:
    """The internals above that the installed Ray/Optuna lack (empty when all are there)."""
    import os
    import tempfile

    import ray._private.ray_constants as ray_constants
    import ray._private.worker as ray_worker
    from optuna.samplers._tpe import sampler as tpe_module
    from optuna.storages.journal import JournalFileBackend
    from ray._private.node import Node
    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.train._internal.storage import StorageContext

    with tempfile.TemporaryDirectory() as d:
        journal = JournalStorage(JournalFileBackend(os.path.join(d, "probe.journal")))
        probes: list[tuple[str, object, str]] = [  # (what is probed, the object, its attribute path)
            ("ray.tune.schedulers.ASHAScheduler()", ASHAScheduler(), "_trial_info"),
            ("optuna.storages.JournalStorage(...)", journal, "_sync_with_backend"),
            ("optuna.storages.JournalStorage(...)", journal, "_write_log"),
            ("optuna.storages.JournalStorage(...)", journal, "_backend.append_logs"),
            ("optuna.storages.JournalStorage(...)", journal, "_replay_result.apply_logs"),
            ("optuna.storages.JournalStorage(...)", journal, "_replay_result.worker_id"),
            ("optuna.Study", optuna.Study, "_get_trials"),
            ("optuna.samplers.TPESampler()", optuna.samplers.TPESampler(), "_gamma"),
            ("optuna.samplers._tpe.sampler", tpe_module, "default_gamma"),
            ("ray._private.worker", ray_worker, "_global_node"),
            ("ray.tune.registry", registry, "_global_registry.get"),
            ("ray._private.ray_constants", ray_constants, "PROMETHEUS_SERVICE_DISCOVERY_FILE"),
            ("ray._private.ray_constants", ray_constants, "ENABLE_RAY_CLUSTER"),
            ("ray._private.node.Node", Node, "get_session_dir_path"),
            ("ray._private.node.Node", Node, "get_temp_dir_path"),
            ("ray.air.execution._internal.actor_manager", RayActorManager, "_actor_task_failed"),
            ("ray.train._internal.storage.StorageContext", StorageContext, "experiment_driver_staging_path"),
        ]
        return [f"{owner}.{path}" for owner, obj, path in probes if not _has(obj, path)]


def _has(obj: object, path: str) -> bool:
    for name in path.split("."):
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True
