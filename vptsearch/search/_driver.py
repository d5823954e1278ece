"""``launch``: preflight checks, the search Tuner, selection, the final Tuner, export, MLflow summary.

Everything that can be wrong with the input (spec, data, backbone, tracking URI, cluster address)
is checked before Ray starts a single trial. All tasks share one Tune experiment per phase
(``search``, ``final``; see :mod:`vptsearch.search._searcher` for why), stored under
``<run_dir>/<name>/<stamp>/ray`` so ``--resume`` restores both with their searcher state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vptsearch._errors import ConfigError, DataError, VptsearchError
from vptsearch._net import unreachable
from vptsearch.search import _bundle, _report
from vptsearch.search._protocol import TrialRecord, final_configs, mean_std, select
from vptsearch.search._tracking import (
    PREFIX,
    Tracker,
    artifact_location,
    check_tracking_uri,
    task_outcome,
    tracking_uri_for,
)
from vptsearch.spec import SearchSpec, read_yaml, spec_from_dict, trial_defaults

log = logging.getLogger("vptsearch")
SPEC_FILE, RESULTS_FILE = "spec.yaml", "results.json"


class LaunchInterrupted(VptsearchError):
    """The driver stopped before every trial finished; ``--resume`` continues it.

    ``space``: the search space file to name in the resume hint (the CLI sets the one it was given).
    """

    def __init__(self, phase: str, finished: int, total: int, space: str | None = None) -> None:
        self.phase, self.finished, self.total, self.space = phase, finished, total, space
        super().__init__(phase, finished, total, space)

    def __str__(self) -> str:
        return (
            f"the {self.phase} phase stopped with {self.finished}/{self.total} trials finished; "
            f"continue with `vptsearch launch --space {self.space or 'SPACE.yaml'} --resume`"
        )


class LaunchFailed(VptsearchError):
    """A step after the search failed (final phase, probe, export); the runs are ended FAILED."""


@dataclass
class LaunchSummary:
    launch_id: str
    run_dir: Path
    tracking_uri: str
    experiment: str
    rows: list[dict[str, Any]]
    bundles: dict[str, Path] = field(default_factory=dict)
    dashboard_url: str | None = None
    seconds: float = 0.0
    unsynced: int = 0  # MLflow writes still in the spool (tracking store unreachable at the end)

    def problems(self) -> list[str]:
        """Why the launch has no result for some task (the CLI then exits 1): a task whose search
        completed no trial, a task with no exported bundle, or nothing exported at all."""
        out = []
        for r in self.rows:
            counts = ", ".join(f"{r.get(k, 0)} {k}" for k in ("completed", "pruned", "diverged", "failed"))
            if r.get("val_acc") is None:
                out.append(f"task {r['task']} has no completed trial ({counts})")
            elif r["task"] not in self.bundles:
                out.append(f"task {r['task']} was not exported (no final seed completed)")
        if not self.bundles:
            out.append("nothing was exported")
        return out


# --- run folders ----------------------------------------------------------------------------------
def launches_dir(spec: SearchSpec) -> Path:
    return Path(spec.run_dir).resolve() / spec.name


def latest_run_dir(spec: SearchSpec) -> Path | None:
    from vptsearch.search._exports import stamp_key

    base = launches_dir(spec)
    runs = [p for p in base.glob("*") if (p / SPEC_FILE).is_file()] if base.is_dir() else []
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
    base.mkdir(parents=True, exist_ok=True)
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
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


def _remove_empty(dirs: list[Path]) -> None:
    """Undo the folders a launch created if it failed before writing anything in them."""
    for d in dirs:
        try:
            d.rmdir()  # only ever removes an empty folder: nothing computed is lost
        except OSError:
            return


def _prepare_run_dir(spec: SearchSpec, resume: bool) -> tuple[Path, SearchSpec, list[Path]]:
    """The launch folder (allocated now, or the latest one with ``--resume``), the spec to use,
    and the folders created here (removed again if the launch fails before using them)."""
    if resume:
        run_dir = latest_run_dir(spec)
        if run_dir is None:
            raise ConfigError(
                f"--resume: no earlier launch of {spec.name!r} under {launches_dir(spec)}; "
                "run without --resume first"
            )
        # The saved (merged) spec is authoritative: a resumed search must not change its space.
        saved = spec_from_dict(read_yaml(run_dir / SPEC_FILE), source=str(run_dir / SPEC_FILE))
        return run_dir, saved, []
    base = launches_dir(spec)
    created = _created_dirs(base)
    try:
        run_dir = allocate_run_dir(base)
    except OSError as exc:
        _remove_empty(created)
        raise ConfigError(
            f"run_dir {str(base)!r}: cannot create a launch folder there ({exc.strerror}); "
            "accepted: a writable folder"
        ) from None
    return run_dir, spec, [run_dir, *created]


# --- preflight ------------------------------------------------------------------------------------
def check_data(spec: SearchSpec, tasks: list[str], say: Any = print) -> None:
    """Every task's manifest must exist with its search and final splits (or be built, for mini)."""
    from vptsearch.data import build_mini, get_task, read_manifest
    from vptsearch.data._tasks import hint_for

    missing: list[str] = []
    for task in tasks:
        try:
            m = read_manifest(task, spec.data_root)
        except DataError:
            missing.append(task)
            continue
        info = get_task(task, spec.data_root)
        lacking = [s for s in (*info.search_splits, *info.final_splits) if s not in m.splits]
        if lacking:
            raise DataError(
                f"task {task!r} at {m.location} lacks split(s) {', '.join(lacking)}; "
                f"rebuild it with {hint_for(info, spec.data_root)}"
            )
    if not missing:
        return
    mini = [t for t in missing if get_task(t).suite == "mini"]
    if spec.build_missing and len(mini) == len(missing):
        say(f"building the offline mini suite ({', '.join(mini)}) under {spec.data_root} ...")
        available = set(build_mini(spec.data_root, tasks=mini, log_fn=say))
        still = [t for t in mini if t not in available]
        if still:
            raise DataError(f"could not build {', '.join(still)} (source missing); drop them from suite")
        return
    info = get_task(missing[0], spec.data_root)
    raise DataError(
        f"task {missing[0]!r} is not built under data root {spec.data_root}"
        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; build it with "
        f"{hint_for(info, spec.data_root)}"
    )


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse an unreachable ``--address`` before Ray spends a minute retrying it."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    reason = unreachable(host, int(port), timeout)
    if reason is not None:
        raise ConfigError(
            f"--address {address!r}: Ray cluster unreachable ({reason}); "
            "start it with `ray start --head` or omit --address for a local cluster"
        )


def start_ray(address: str | None, dashboard: bool) -> str | None:
    import ray

    # Without an address, ray.init() would join whatever cluster `ray start` left on this machine
    # (it reads /tmp/ray/ray_current_cluster); the docs promise a local Ray of our own unless the
    # user asks for one with --address or $RAY_ADDRESS.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ctx = ray.init(
            address=address,
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            logging_level=logging.WARNING,
            configure_logging=True,
            ignore_reinit_error=True,
            log_to_driver=False,  # workers only log checkpoint chatter; errors come back through Tune
        )
    except ConnectionError as exc:
        raise ConfigError(f"--address {address!r}: {str(exc).splitlines()[0]}") from None
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


# --- the two Tune phases --------------------------------------------------------------------------
def _run_tuner(
    name: str,
    spec: SearchSpec,
    run_dir: Path,
    searcher: Any,
    scheduler: Any,
    num_samples: int,
    callbacks: list,
    resume: bool,
    backbone: Any = None,
    store: Any = None,
) -> Any:
    from ray import tune

    from vptsearch.search._storage import launch_storage
    from vptsearch.search._trainable import NoTensorBoard, make_trainable

    # num_to_keep=1 makes Tune snapshot the experiment after every checkpoint (our per-epoch,
    # kilobyte-sized ones) and warn each time that snapshots are frequent; locally they are cheap.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # local run dir, NFS, or a pyarrow filesystem (S3); the launch passes the one it checked
    store = store or launch_storage(spec, run_dir)
    path = f"{store.path}/{name}"
    # backbone: the driver's weights in the object store (_cluster.share_backbone)
    trainable = make_trainable(spec, backbone)
    if resume and tune.Tuner.can_restore(path, storage_filesystem=store.fs):
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
                callbacks=[*callbacks, NoTensorBoard()],
                verbose=0,  # ProgressCallback prints one line per finished trial
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    with _quiet_tune_restore_hint(), _cached_trainable_lookups():
        results = tuner.fit()
    finished = finished_trials(results)
    if finished < num_samples:
        raise LaunchInterrupted(name, finished, num_samples)
    return results


@contextlib.contextmanager
def _cached_trainable_lookups() -> Iterator[None]:
    """Answer Tune's trainable look-ups from a cache while one ``fit`` runs.

    Tune asks Ray's registry for the trainable five times per trial (three existence checks, two
    class loads), each a round trip to the GCS key-value store plus an unpickle: ~4 ms per trial
    on this machine. Within one ``fit`` the registered trainable does not change, so an answer
    once found is kept (a trainable not yet registered is asked again); outside it the registry
    is Ray's own again.
    """
    from ray.tune import registry

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


def finished_trials(results: Any) -> int:
    """Trials that really ended: errored, their last result is Tune's ``done`` (completed, or
    stopped by ASHA), or a scheduler of this process stopped them (a restored scheduler's stop
    need not set ``done``). After Ctrl-C Tune's cleanup marks the trials it interrupts TERMINATED
    too (``num_terminated`` counted them as finished); their last result is not ``done``."""
    from vptsearch.search._scheduler import PerTaskScheduler

    stopped = PerTaskScheduler.stopped_trial_ids

    def ended(r: Any) -> bool:
        last = r.metrics or {}
        return r.error is not None or bool(last.get("done")) or last.get("trial_id") in stopped

    return sum(1 for r in results if ended(r))


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


def _records(results: Any, max_epochs: int) -> list[TrialRecord]:
    out = []
    for r in results:
        last = dict(r.metrics or {})
        out.append(
            TrialRecord.from_result(
                last.get("trial_id") or Path(r.path).name,
                dict(r.config),
                last,
                r.error is not None,
                max_epochs,
            )
        )
    return out


def _final_states(results: Any, run_dir: Path, max_epochs: int) -> dict[str, dict[int, dict[str, Any]]]:
    """Per task and seed: status, test accuracy and the saved trained tensors (safetensors)."""
    from safetensors.torch import save_file

    from vptsearch.search._searcher import trial_status
    from vptsearch.search._trainable import load_state

    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in results:
        cfg, last = dict(r.config), dict(r.metrics or {})
        task, seed = cfg["task"], int(cfg["seed"])
        status = trial_status(last, max_epochs, r.error is not None)
        entry: dict[str, Any] = {"status": status, "test_acc": last.get("test_acc"), "config": cfg}
        state = load_state(r.checkpoint) if r.checkpoint is not None and status == "completed" else None
        if state is not None:
            path = run_dir / "final" / _bundle.task_dirname(task) / f"seed-{seed}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in state["trained"].items()}, str(path))
            entry["weights"] = str(path)
        out.setdefault(task, {})[seed] = entry
    return out


# --- export ---------------------------------------------------------------------------------------
def bundle_meta(spec: SearchSpec, task: str, results: dict[str, Any], backbone: Any) -> dict[str, Any]:
    """``bundle.json`` content of one task (see docs/search.md, bundle contract).

    ``results``: the task's entry of results.json plus ``launch_id`` and ``run_dir``; every final
    seed that completed with saved weights becomes a member (the exported seed first).
    """
    from vptsearch import __version__
    from vptsearch.data import get_task, read_manifest
    from vptsearch.train import model_options

    info = get_task(task, spec.data_root)
    best = results["best"]
    cfg = best["config"]
    method = cfg.get("method", "vpt")
    full = {**trial_defaults(method), **cfg}  # the same defaults run_trial filled in
    b = spec.backbone
    name = str(Path(b.name).resolve()) if Path(b.name).is_file() else b.name
    exported = results["exported_seed"]
    seeds = member_seeds(results)
    accs = results["test_accs"]
    members = [{"seed": s, "file": _bundle.member_file(s, s == exported), "test_accuracy": accs[str(s)]}
               for s in seeds]  # fmt: skip
    options = model_options(cfg, spec)
    return {
        "task": task,
        "group": info.group,
        "num_classes": info.num_classes,
        "class_names": list(read_manifest(task, spec.data_root).class_names),
        "backbone": _bundle.backbone_record(backbone, name, b.weights),
        "image_size": spec.training.image_size or backbone.image_size,
        "preprocessing": info.preprocessing,  # vtab: resize; fgvc: resize 256/224 + centre crop
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "method": method,
        "method_options": options,
        "head": {"norm": options.get("head_norm", "none")},
        "prompt": (
            {"depth": full["prompt.depth"], "length": full["prompt.length"], "init": full["prompt.init"]}
            if method == "vpt"
            else None
        ),
        "hyperparameters": cfg,
        "training": dataclasses.asdict(spec.training),
        "seeds": results["seeds"],
        "exported_seed": exported,
        "members": members,
        "ensemble": {
            "seeds": seeds,
            "combine": "mean of the members' logits",
            "test_accuracy": results.get("ensemble_test_acc"),
        },
        "val_accuracy": best["val_acc"],
        "test_accuracy": results["test_accs"][str(exported)],
        "test_accuracies": results["test_accs"],
        "test_mean": results["test_mean"],
        "test_std": results["test_std"],
        "tuned_percent": best.get("tuned_percent"),
        "launch": results.get("launch_id"),
        "run_dir": results.get("run_dir"),
        "vptsearch_version": __version__,
    }


def member_seeds(res: dict[str, Any]) -> list[int]:
    """Final seeds of a task with a test accuracy and saved weights, the exported one first."""
    done = [int(s) for s in res.get("seeds", []) if str(s) in res["test_accs"]
            and "weights" in res["final"].get(str(s), {})]  # fmt: skip
    exported = res["exported_seed"]
    return [exported, *[s for s in done if s != exported]]


def export_bundles(
    run_dir: Path,
    out_dir: str | Path | None = None,
    tracker: Tracker | None = None,
    parents: dict[str, str] | None = None,
    results: dict[str, Any] | None = None,
    say: Any = None,
) -> dict[str, Path]:
    """(Re-)export the bundle of every task of a finished launch from its saved results.

    Bundles go to ``<export dir>/<launch stamp>/<suite>__<task>/`` and ``<export dir>/LATEST``
    (plus a ``latest`` symlink when local) names the newest launch there (see _exports), so a
    second launch never overwrites the first. A bundle of several final seeds gets its ensemble
    test accuracy here, once, by evaluating the written bundle on the test split in this process;
    it is stored in results.json (task ``ensemble_test_acc``, row ``ensemble_test``) and in
    bundle.json, and reused by later re-exports. ``results``: the launch's results.json content
    (read from the run dir when omitted), updated in place.

    An ``s3://`` (or other pyarrow URI) export dir gets the bundles written under
    ``<run_dir>/export/<stamp>`` first, then copied there; the returned paths are the local copies.
    """
    import torch

    from vptsearch.search._exports import check_export_dir, point_latest, point_latest_remote
    from vptsearch.search._storage import filesystem, is_uri, upload
    from vptsearch.train import get_backbone

    run_dir = Path(run_dir)
    spec = spec_from_dict(read_yaml(run_dir / SPEC_FILE))
    if results is None:
        results = json.loads((run_dir / RESULTS_FILE).read_text())
    dest = str(out_dir or spec.export_dir)
    stamp = run_dir.name
    remote = is_uri(dest)
    base = run_dir / "export" if remote else check_export_dir(dest)
    out = base / stamp
    backbone = get_backbone(spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = spec.training.precision
    precision = "bf16" if precision == "bf16" or (precision == "auto" and device == "cuda") else "fp32"
    bundles: dict[str, Path] = {}
    changed = False
    for task, res in results["tasks"].items():
        if res.get("exported_seed") is None:
            continue
        states = {s: _final_weights(res, s, run_dir) for s in member_seeds(res)}
        meta = bundle_meta(spec, task, {**res, "launch_id": results["launch_id"], "run_dir": str(run_dir)},
                           backbone)  # fmt: skip
        bundles[task] = _bundle.write_bundle(out / _bundle.task_dirname(task), states, meta)
        if len(states) > 1 and res.get("ensemble_test_acc") is None:
            if say is not None:
                say(f"  {task}: testing the {len(states)}-seed ensemble of the written bundle ...")
            res["ensemble_test_acc"] = _bundle.evaluate_bundle(
                bundles[task], root=spec.data_root, device=device, precision=precision
            )
            changed = True
        if len(states) > 1:
            meta["ensemble"]["test_accuracy"] = res["ensemble_test_acc"]
            _bundle.write_meta(bundles[task], meta)
        for row in results.get("rows", []):
            if row["task"] == task:
                row["ensemble_test"] = res.get("ensemble_test_acc")
        if tracker is not None and parents and task in parents:
            if res.get("ensemble_test_acc") is not None:
                tracker.log_metrics(parents[task], {"ensemble_test_acc": res["ensemble_test_acc"]})
            tracker.log_artifact(parents[task], bundles[task], artifact_path="bundle")
    where = f"{dest.rstrip('/')}/{stamp}" if remote else str(out)
    if bundles:
        if remote:
            upload(out, f"{dest.rstrip('/')}/{stamp}")
            fs, path = filesystem(dest)
            point_latest_remote(fs, path, stamp)
        else:
            point_latest(base, stamp)
        changed = changed or results.get("bundles_dir") != where
        results["bundles_dir"] = where
    if changed:  # cached for `vptsearch report` and later re-exports (computed once)
        (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    return bundles


def _bundles_line(results: dict[str, Any], n: int) -> str:
    """Where this launch's bundles are, and the ``latest`` path that reaches them (see _exports)."""
    where = results.get("bundles_dir")
    if not where:
        return f"bundles: none ({n} task(s) exported)"
    latest = where.rsplit("/", 1)[0] + "/latest"
    return f"bundles: {where}  ({n} task(s)); newest launch: {latest}/<suite>__<task>"


def _final_weights(res: dict[str, Any], seed: int, run_dir: Path) -> dict[str, Any]:
    path = Path(res["final"][str(seed)]["weights"])
    if not path.is_file():
        raise DataError(
            f"final weights {path} of seed {seed} are missing; the launch's {run_dir / 'final'} "
            f"folder must be kept to export (or rerun `vptsearch launch --resume`)"
        )
    return _bundle.read_tensors(path)


# --- launch ---------------------------------------------------------------------------------------
def launch(
    spec: SearchSpec,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    dashboard: bool = True,
    say: Any = print,
    storage: str | None = None,
) -> LaunchSummary:
    """Run a whole search space: search -> select -> final seeds -> export, tracked in MLflow.

    ``storage``: where Tune keeps experiment state and checkpoints (a local/NFS path or
    ``s3://...``; default ``$VPTSEARCH_STORAGE``, the spec's ``storage.path``, else the run dir).
    """
    from vptsearch.data import data_root, get_task, resolve_tasks
    from vptsearch.train import get_backbone

    t0 = time.perf_counter()
    # The launch folder is claimed first (atomically, see allocate_run_dir): its name is the
    # launch id every later step uses. A launch that fails its checks removes it again (empty).
    run_dir, spec, created = _prepare_run_dir(spec, resume)
    try:
        spec = dataclasses.replace(spec, data_root=str(data_root(spec.data_root)))
        tasks = resolve_tasks(spec.suite if isinstance(spec.suite, str) else list(spec.suite), spec.data_root)
        check_data(spec, tasks, say)
        verify_data(spec, tasks, say)
        get_backbone(spec)  # fails early on a bad backbone; cached for in-driver use
        uri = check_tracking_uri(tracking_uri_for(tracking_uri, spec.tracking.uri))
        check_export(spec)
        if address:
            check_address(address)
        from vptsearch.search._storage import check_storage, launch_storage, with_storage

        spec = with_storage(spec, storage)
        store = launch_storage(spec, run_dir)
        if spec.storage.path:
            check_storage(store)
    except BaseException:
        _remove_empty(created)
        raise
    import ray

    started_here = not ray.is_initialized()
    try:
        try:
            dashboard_url = start_ray(address, dashboard)
            # checks that need the cluster, still before any MLflow run or trial exists
            _check_resources(spec)
            from vptsearch.search._cluster import preflight

            preflight(spec, store, tasks, say)  # >1 node: shared storage, data
        except BaseException:
            _remove_empty(created)
            raise
        launch_id = f"{spec.name}/{run_dir.name}"
        run_dir.mkdir(parents=True, exist_ok=True)
        art_loc = artifact_location(spec.tracking.artifact_location, uri)
        # Every MLflow write of the launch goes through the run dir's spool (see _spool): a tracking
        # server going away mid-run never stops a trial; `vptsearch sync` replays what it missed.
        tracker = Tracker(uri, spec.experiment, art_loc, launch_id, run_dir=run_dir)
        spec.dump(run_dir / SPEC_FILE)
        (run_dir / "tracking.json").write_text(json.dumps(
            {"uri": uri, "experiment": spec.experiment, "launch_id": launch_id, "artifact_location": art_loc}
        ))  # fmt: skip
        try:
            launch_run = tracker.launch_run(launch_id)
            tracker.set_tags(launch_run, {PREFIX + "space": spec.name, PREFIX + "run_dir": str(run_dir)})
            tracker.log_artifact(launch_run, run_dir / SPEC_FILE)
            parents = {t: tracker.task_run(t, get_task(t, spec.data_root).group) for t in tasks}
            summary = _run_phases(
                spec, tasks, run_dir, store, tracker, launch_run, parents, dashboard_url, resume, say, t0
            )
            summary.unsynced = _close_tracker(tracker, say)
            return summary
        except BaseException:
            _close_tracker(tracker, say, drain_s=10.0)
            raise
    finally:
        if started_here:  # a cluster we started is ours to stop; a connected one is left alone
            ray.shutdown()


def verify_data(spec: SearchSpec, tasks: list[str], say: Any = print) -> None:
    """The shards of the splits a launch reads (search and final) match their manifests: size,
    sha256, sample count, every image decodes (vptsearch.data.verify_tasks). A pass is cached per
    manifest and shard stat, so a repeated launch reads no shard; a bad shard is one DataError
    naming it, before Ray starts (instead of every trial failing on it)."""
    from vptsearch.data import verify_tasks

    t0 = time.perf_counter()
    done = verify_tasks(tasks, spec.data_root)
    checked = sum(v.checked for v in done)
    if checked:
        say(f"verified {checked} samples of {len(done)} task(s) against their manifests "
            f"in {time.perf_counter() - t0:.1f} s (cached for the next launch)")  # fmt: skip


def check_export(spec: SearchSpec) -> None:
    """``export.dir`` must be a writable folder (or a creatable one) before any trial runs: a file
    or read-only folder there used to fail only after the whole search and final phase."""
    from vptsearch.search._exports import check_export_dir
    from vptsearch.search._storage import is_uri

    if not is_uri(str(spec.export_dir)):  # s3:// etc.: written through pyarrow at export time
        check_export_dir(spec.export_dir, create=False)


def _run_phases(
    spec: SearchSpec,
    tasks: list[str],
    run_dir: Path,
    store: Any,
    tracker: Tracker,
    launch_run: str,
    parents: dict[str, str],
    dashboard_url: str | None,
    resume: bool,
    say: Any,
    t0: float,
) -> LaunchSummary:
    from vptsearch.search._scheduler import build_scheduler
    from vptsearch.search._searcher import build_searcher
    from vptsearch.search._tracking import ProgressCallback, TrackingCallback

    uri, launch_id = tracker.uri, tracker.launch_id
    say(f"vptsearch: launch {launch_id}: {len(tasks)} task(s), {spec.search.trials_per_task} trials each")
    say(f"  run dir:        {run_dir}")
    if uri.startswith(("http://", "https://")):
        runs = f"#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
        say(f"  MLflow:         {uri.rstrip('/')}/{runs}")
    else:
        say(f"  MLflow:         {uri} (experiment {spec.experiment!r})")
        say(f"                  browse: `vptsearch ui --tracking-uri {uri}`")
    if dashboard_url:
        from vptsearch.search import _monitor

        say(f"  Ray dashboard:  {dashboard_url}")
        if _monitor.token_auth_enabled():  # Ray 2.60: the page opens on a token dialog
            say(f"                  {_monitor.token_hint()}")
        if not _monitor.joined_cluster():  # a cluster's own Prometheus/Grafana chart it there
            say("                  metrics charts: `vptsearch monitor` (a local Prometheus, docs/search.md)")
    from vptsearch.search import _cluster
    from vptsearch.search._metrics import MetricsCallback
    from vptsearch.train import get_backbone

    say(f"  Tune storage:   {store.uri}")
    backbone = _cluster.share_backbone(get_backbone(spec))  # once, not per trial or per node

    def callbacks(phase: str, n_trials: int) -> list:
        """MLflow logging, progress lines and Ray metrics of one phase's trials."""
        epochs = spec.training.epochs
        return [
            MetricsCallback(phase, epochs, tasks),
            TrackingCallback(
                uri, spec.experiment, None, launch_id, parents, epochs, resume=resume, run_dir=run_dir
            ),
            ProgressCallback(n_trials, epochs, phase),
        ]

    # search
    searcher = build_searcher(spec, tasks, journal=run_dir / "optuna.journal")
    budget = sum(searcher.budgets.values())
    results = _run_tuner(
        "search",
        spec,
        run_dir,
        searcher,
        build_scheduler(spec),
        budget,
        callbacks("search", budget),
        resume,
        backbone,
        store,
    )
    records = _records(results, spec.training.epochs)
    selection = select(records, tasks)
    trials = [dataclasses.asdict(r) for r in records]
    art = run_dir / "report"
    final_states: dict[str, dict[int, dict[str, Any]]] = {}
    out: dict[str, Any] | None = None
    try:
        # final: the best configuration of every task with each final seed on train+val, tested once
        from ray.tune.schedulers import FIFOScheduler

        from vptsearch.search._searcher import MultiTaskSearcher

        finals = final_configs(selection, spec.protocol.final_seeds)
        final_searcher = MultiTaskSearcher(
            None, {t: len(c) for t, c in finals.items()}, spec.search.max_concurrent, fixed=finals,
            metric=None,
        )  # fmt: skip
        n_final = sum(len(c) for c in finals.values())
        if n_final:
            fres = _run_tuner(
                "final",
                spec,
                run_dir,
                final_searcher,
                FIFOScheduler(),
                n_final,
                callbacks("final", n_final),
                resume,
                backbone,
                store,
            )
            final_states = _final_states(fres, run_dir, spec.training.epochs)

        # results, bundles, MLflow summary
        out = _collect(spec, tasks, selection, final_states, launch_id)
        if spec.protocol.probe:  # the frozen-feature reference, once per task, cached across launches
            from vptsearch.probe import launch_probes

            for task, pr in launch_probes(spec, tasks, say).items():
                out["tasks"][task]["probe"] = pr
                row = next(r for r in out["rows"] if r["task"] == task)
                row.update(probe_val=pr and pr["val_acc"], probe_test=pr and pr["test_acc"])
        (run_dir / RESULTS_FILE).write_text(json.dumps(out, indent=2, default=str))
        # the report exists before export: a failing export still leaves it (rewritten below)
        _write_report(out, trials, art)
        # also adds each task's ensemble test accuracy to `out` (rows included) and rewrites results.json
        bundles = export_bundles(run_dir, tracker=tracker, parents=parents, results=out, say=say)
        _log_tasks(tracker, parents, out)
    except (LaunchInterrupted, KeyboardInterrupt):
        raise  # --resume continues: the runs stay open
    except Exception as exc:
        _fail_launch(spec, tasks, selection, final_states, out, trials, run_dir, tracker, launch_run,
                     parents, exc, say)  # fmt: skip
        if isinstance(exc, (VptsearchError, OSError)):
            raise LaunchFailed(
                f"launch {launch_id} failed after its search: {_one_line(exc)}; the report is in {art} "
                f"and the trials are kept in {run_dir}"
            ) from None
        raise
    rows = out["rows"]
    paths = _write_report(out, trials, art)
    for p in [*paths, run_dir / RESULTS_FILE]:
        tracker.log_artifact(launch_run, p)
    seconds = time.perf_counter() - t0
    tracker.log_metrics(launch_run, {"wall_seconds": seconds, "tasks": len(tasks), "trials": len(records)})
    tracker.end(launch_run)
    say(_report.markdown_table(rows))
    say(_bundles_line(out, len(bundles)))
    say(f"summary: {art / 'summary.md'}   wall time {seconds:.0f} s")
    return LaunchSummary(launch_id, run_dir, uri, spec.experiment, rows, bundles, dashboard_url, seconds)


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, VptsearchError) else f"{type(exc).__name__}: {text}"


def _write_report(out: dict[str, Any], trials: list[dict[str, Any]], art: Path) -> list[Path]:
    """summary.{md,html,parquet}, the plots and trials.parquet in the run dir's report folder."""
    paths = list(_report.write_summary(out["rows"], art).values()) + _report.write_plots(trials, art)
    _write_trials(trials, art / "trials.parquet")
    return [*paths, art / "trials.parquet"]


def _fail_launch(
    spec: SearchSpec,
    tasks: list[str],
    selection: dict[str, Any],
    final_states: dict[str, Any],
    out: dict[str, Any] | None,
    trials: list[dict[str, Any]],
    run_dir: Path,
    tracker: Tracker,
    launch_run: str,
    parents: dict[str, str],
    exc: BaseException,
    say: Any,
) -> None:
    """After-search failure: write results.json and the report from what is done, end the task
    and launch runs FAILED with the error as ``vptsearch.error`` (they stayed RUNNING forever)."""
    error = _one_line(exc)[:500]
    try:
        if out is None:
            out = _collect(spec, tasks, selection, final_states, f"{spec.name}/{run_dir.name}")
        out["error"] = error
        (run_dir / RESULTS_FILE).write_text(json.dumps(out, indent=2, default=str))
        for p in [*_write_report(out, trials, run_dir / "report"), run_dir / RESULTS_FILE]:
            tracker.log_artifact(launch_run, p)
    except Exception as report_exc:  # the original error is the one to raise
        say(f"could not write the report of the failed launch: {_one_line(report_exc)}")
    for ref in [*parents.values(), launch_run]:
        tracker.set_tags(ref, {PREFIX + "status": "failed", PREFIX + "error": error})
        tracker.end(ref, "FAILED")


def _close_tracker(tracker: Tracker, say: Any, drain_s: float = 120.0) -> int:
    """Let the MLflow writer catch up, then say how to sync what the store did not take."""
    left = tracker.close(drain_s=drain_s)
    if left:
        say(tracker.unsynced_message(left))
    return left


def _check_resources(spec: SearchSpec) -> None:
    import ray

    have = ray.cluster_resources()
    for key, need in (("CPU", spec.resources.cpu), ("GPU", spec.resources.gpu)):
        if need > have.get(key, 0):
            raise ConfigError(
                f"resources.{key.lower()}: a trial needs {need} but the cluster has "
                f"{have.get(key, 0)}; lower it or add nodes"
            )


def _collect(
    spec: SearchSpec,
    tasks: list[str],
    selection: dict[str, Any],
    final_states: dict[str, Any],
    launch_id: str,
) -> dict[str, Any]:
    from vptsearch.data import get_task

    out: dict[str, Any] = {"launch_id": launch_id, "tasks": {}, "rows": []}
    for task in tasks:
        sel = selection[task]
        fin = final_states.get(task, {})
        seeds = [s for s in spec.protocol.final_seeds if s in fin]
        accs = {str(s): fin[s]["test_acc"] for s in seeds if fin[s]["status"] == "completed"}
        mean, std = mean_std(list(accs.values()))
        exported = next((s for s in seeds if str(s) in accs and "weights" in fin[s]), None)
        out["tasks"][task] = {
            "best": dataclasses.asdict(sel.best) if sel.best else None,
            "per_init": {k: dataclasses.asdict(v) for k, v in sel.per_init.items()},
            "per_method": {k: dataclasses.asdict(v) for k, v in sel.per_method.items()},
            "counts": sel.counts,
            "seeds": seeds,
            "test_accs": accs,
            "test_mean": mean,
            "test_std": std,
            "exported_seed": exported,
            "final": {str(s): fin[s] for s in seeds},
        }
        cfg = sel.best.config if sel.best else {}
        out["rows"].append(
            {
                "task": task,
                "group": get_task(task, spec.data_root).group,
                "method": cfg.get("method"),
                "p": cfg.get("prompt.length"),
                "init": cfg.get("prompt.init"),
                "tuned_percent": sel.best.tuned_percent if sel.best else None,
                "val_acc": sel.best.val_acc if sel.best else None,
                "test_mean": mean,
                "test_std": std,
                **{k: sel.counts.get(k, 0) for k in ("completed", "pruned", "diverged", "failed")},
            }
        )
    return out


def _log_tasks(tracker: Tracker, parents: dict[str, str], out: dict[str, Any]) -> None:
    for task, res in out["tasks"].items():
        run_id = parents[task]
        best = res["best"]
        # the runs list shows names: the task run's name and description carry its outcome
        name, note = task_outcome(task, res)
        tracker.set_tags(run_id, {"mlflow.runName": name, "mlflow.note.content": note})
        if best is None:
            tracker.set_tags(run_id, {PREFIX + "status": "no completed trial"})
            tracker.end(run_id, "FAILED")
            continue
        cfg = best["config"]
        summary = {
            "best.method": cfg.get("method"),
            "best.prompt_length": cfg.get("prompt.length", "-"),
            "best.init": cfg.get("prompt.init", "-"),
            "best.depth": cfg.get("prompt.depth", "-"),
            "best.base_lr": cfg.get("optim.base_lr"),
            "best.weight_decay": cfg.get("optim.weight_decay"),
            "best.trial_id": best["trial_id"],
        }
        tracker.log_params_once(run_id, summary)
        tracker.set_tags(run_id, {**summary, PREFIX + "status": "completed"})
        metrics = {
            "best_val_acc": best["val_acc"],
            "tuned_percent": best.get("tuned_percent"),
            **{f"trials_{k}": v for k, v in res["counts"].items()},
            **{f"best_val_acc.{k}": v["val_acc"] for k, v in res["per_init"].items()},
        }
        if res["test_accs"]:
            metrics.update(test_mean=res["test_mean"], test_std=res["test_std"])
        if res.get("probe"):
            metrics.update(probe_val_acc=res["probe"]["val_acc"], probe_test_acc=res["probe"]["test_acc"])
        tracker.log_metrics(run_id, metrics)
        tracker.end(run_id)


def _write_trials(trials: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    flat = [{**{k: v for k, v in t.items() if k != "config"}, **t["config"]} for t in trials]
    pd.DataFrame(flat).to_parquet(path, index=False)
