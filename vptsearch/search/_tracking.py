"""MLflow tracking: one experiment per space, a parent run per task, nested child runs per trial.

All logging happens in the driver (a Tune ``Callback``), not in the trials: it costs the trials
nothing, needs no MLflow import on the workers, and one process owns the store (sqlite-friendly).
Runs are found again by tags (``vptsearch.trial_id``, ``vptsearch.task`` + ``vptsearch.launch``),
so a resumed launch reuses its runs instead of duplicating them.

Layout (tags prefixed ``vptsearch.``):
  launch run   kind=launch                  summary table (parquet/md/html), plots, spec.yaml
  task run     kind=task, task, group       best.* tags/params, best_val_acc, test_mean/std, tuned %
    trial run  kind=trial, phase=search     params, per-epoch metrics, status
    seed run   kind=trial, phase=final      params + seed, per-epoch metrics, test_acc
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from ray import tune

from vptsearch._errors import ConfigError
from vptsearch.search import _records
from vptsearch.search._applier import Applier
from vptsearch.search._progress import ProgressCallback
from vptsearch.search._records import LOGGED_METRIC_PREFIXES, LOGGED_METRICS
from vptsearch.search._result_keys import EARLIER_EPOCHS, trial_status
from vptsearch.search._spool import Spool, Writer, sync
from vptsearch.search._spool_process import WriterProcess
from vptsearch.search._tracking_store import (  # the store's helpers, also imported from here
    artifact_location,
    check_tracking_uri,
    client,
    resolve_tracking_uri,
    tracking_uri_for,
)
from vptsearch.spec import param_value, trial_defaults

# the store's helpers, sync and ProgressCallback live in their own modules; callers import them here too
__all__ = [
    "LOGGED_METRICS", "MLFLOW_STATUS", "PREFIX", "ProgressCallback", "Tracker", "TrackingCallback",
    "artifact_location", "check_tracking_uri", "client", "resolve_tracking_uri", "sync", "task_outcome",
    "tracking_uri_for",
]  # fmt: skip

PREFIX = "vptsearch."
MLFLOW_STATUS = {"completed": "FINISHED", "pruned": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}


class Tracker:
    """Driver-side MLflow writer of a launch: experiment, launch, task and trial runs.

    Runs are named by *refs* (their identifying tags, see :func:`_records.run_ref`), not MLflow
    ids. With ``run_dir`` every write goes through the launch's durable spool and a writer process
    (:mod:`._spool_process`; ``writer_process=False``: a thread, :mod:`vptsearch.search._spool`): callers
    never wait on the store and an unreachable server loses nothing (``vptsearch sync`` replays
    it). Without ``run_dir`` writes are applied at once; ``rewrite_metrics`` (only then) writes a
    metric again at a step its run already has.
    """

    # The open Tracker of each run dir in this process. Tune unpickles a launch's callbacks on
    # --resume, and they must write through the launch's one spool writer (a second writer on the
    # same file would interleave its appends): :meth:`of_run_dir` finds it for them.
    _open: ClassVar[dict[str, Tracker]] = {}

    def __init__(
        self,
        uri: str,
        experiment: str,
        artifact_location_: str | None,
        launch_id: str,
        run_dir: Path | None = None,
        *,
        rewrite_metrics: bool = False,
        writer_process: bool = True,
    ) -> None:
        if rewrite_metrics and run_dir is not None:
            raise ValueError(f"rewrite_metrics with run_dir {str(run_dir)!r}: a replay would double metrics")
        self.uri, self.launch_id, self.experiment = uri, launch_id, experiment
        self.applier = Applier(client(uri), experiment, artifact_location_, rewrite_metrics=rewrite_metrics)
        try:
            self.experiment_id = self.applier.experiment_id
        except Exception as exc:  # any store failure is one user-facing error
            raise ConfigError(f"tracking URI {uri!r} failed: {str(exc).splitlines()[0][:200]}") from None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.writer: Writer | WriterProcess | None = None
        if self.run_dir is not None:
            spool = Spool(self.run_dir)
            if writer_process:  # off the driver's GIL (see _spool_process)
                self.writer = WriterProcess(spool, uri, experiment, artifact_location_)
            else:
                self.writer = Writer(spool, self.applier, uri)
                self.writer.start()
            Tracker._open[str(self.run_dir)] = self

    @classmethod
    def of_run_dir(cls, run_dir: Path | str) -> Tracker | None:
        """The open (not yet closed) Tracker of the launch in ``run_dir``, if this process has one."""
        return cls._open.get(str(Path(run_dir)))

    @property
    def client(self) -> Any:
        """The MlflowClient, for reads (writes go through the spool)."""
        return self.applier.client

    def _submit(self, rec: _records.Record) -> None:
        if self.writer is not None:
            self.writer.submit(rec)
        else:
            self.applier.apply([rec], trust_new=True)

    def run(self, name: str, tags: dict[str, Any], key: dict[str, Any], parent: str | None = None,
            new: bool = False) -> str:  # fmt: skip
        """Find-or-create the run identified by ``key`` (tags, prefixed here) under the run
        ``parent`` (a ref); returns its ref.

        ``new=True`` skips the tag look-up: only for runs that cannot exist yet (a fresh launch's
        trials), where it saves a store round trip per trial.
        """
        ref = _records.run_ref({PREFIX + k: str(v) for k, v in key.items()})
        all_tags = {PREFIX + k: str(v) for k, v in {**tags, **key}.items()}
        self._submit(_records.RunRecord(ref, name, all_tags, parent, new))
        return ref

    def launch_run(self, name: str) -> str:
        """The launch's own run (summary table, plots, spec); returns its ref."""
        return self.run(name, {"kind": "launch"}, {"launch": self.launch_id, "kind": "launch"})

    def task_run(self, task: str, group: str) -> str:
        """The run of one task of the launch (its trials are nested under it); returns its ref."""
        return self.run(
            task, {"group": group, "kind": "task"}, {"launch": self.launch_id, "task": task, "kind": "task"}
        )

    def log(
        self,
        ref: str,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float | None] | None = None,
        step: int = 0,
        tags: dict[str, Any] | None = None,
    ) -> None:
        """One write of params (each set once: immutable in MLflow), metrics at ``step`` and tags."""
        points = None
        if metrics:  # given: written, even when every value is None (as the spool always had it)
            points = _metric_points(metrics, int(time.time() * 1000), step)
        rec = _records.LogRecord(
            ref,
            params={k: str(v) for k, v in params.items()} if params else None,
            metrics=points,
            tags={k: str(v) for k, v in tags.items()} if tags else None,
        )
        if (rec.params, rec.metrics, rec.tags) != (None, None, None):
            self._submit(rec)

    def log_epochs(self, ref: str, rows: list[tuple[int, dict[str, Any], float | None]]) -> None:
        """Metrics of several steps in one write: ``(step, metrics, timestamp in seconds or None for
        now)`` per row (a trial's result and the epochs it held back before it)."""
        now = time.time()
        points = [
            point
            for step, metrics, t in rows
            for point in _metric_points(metrics, int((now if t is None else t) * 1000), step)
        ]
        if points:
            self._submit(_records.LogRecord(ref, metrics=points))

    def log_params_once(self, ref: str, params: dict[str, Any]) -> None:
        self.log(ref, params=params)

    def set_tags(self, ref: str, tags: dict[str, Any]) -> None:
        self.log(ref, tags=tags)

    def log_metrics(self, ref: str, metrics: dict[str, float | None], step: int = 0) -> None:
        self.log(ref, metrics=metrics, step=step)

    def log_artifact(self, ref: str, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or a whole folder; uploaded by the writer (the path must stay until synced)."""
        self._submit(_records.ArtifactRecord(ref, str(Path(path).resolve()), artifact_path))

    def end(self, ref: str, status: str = "FINISHED") -> None:
        self._submit(_records.EndRecord(ref, status))

    def prune(self, match: dict[str, str], key: str, keep: list[str]) -> None:
        """Delete the runs tagged ``match`` whose ``key`` tag is not in ``keep`` (prefixed here)."""
        self._submit(_records.PruneRecord({PREFIX + k: v for k, v in match.items()}, PREFIX + key, keep))

    def run_id(self, ref: str) -> str | None:
        """The MLflow id of a run this process's writer has created or found (None before that,
        and always with a writer process: it learns the ids in its own process)."""
        return self.applier.ids.get(ref)

    def close(self, drain_s: float = 120.0, down_grace_s: float = 5.0) -> int:
        """Drain the spool into the store and stop the writer; returns the writes left unsynced."""
        if self.writer is None:
            return 0
        Tracker._open.pop(str(self.run_dir), None)
        return self.writer.close(drain_s, down_grace_s)

    def unsynced_message(self, left: int) -> str:
        why = self.writer.last_error if self.writer is not None else None
        return (
            f"{left} MLflow writes not synced (server {self.uri} unreachable"
            f"{f': {why}' if why else ''}); run `vptsearch sync {self.run_dir}` when it is back"
        )


def _pct(v: Any) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def task_outcome(task: str, res: dict[str, Any]) -> tuple[str, str]:
    """The task run's name and description (``mlflow.note.content``) once the launch is done.

    MLflow's runs list shows names, not tags: the name carries the winner so a newcomer reads each
    task's outcome without adding columns, e.g.
    ``mini/digits · vpt p=10 spt-mean · test 82.3 ± 1.2 · probe 89.3``.
    """
    best, probe = res.get("best"), res.get("probe")
    if best is None:
        return f"{task} · no completed trial", f"**{task}**: no search trial completed its epochs."
    cfg = best["config"]
    method = cfg.get("method", "vpt")
    what = method
    if "prompt.length" in cfg:
        what = f"{method} p={cfg['prompt.length']} {cfg.get('prompt.init', '')}"
    test = "test -" if not res.get("test_accs") else (
        f"test {_pct(res['test_mean'])} ± {_pct(res['test_std'])}"
    )  # fmt: skip
    parts = [task, what.strip(), test] + ([f"probe {_pct(probe['test_acc'])}"] if probe else [])
    settings = ", ".join(
        f"{k.split('.')[-1]} {cfg[k]}" for k in ("prompt.depth", "prompt.length", "prompt.init",
                                                 "optim.base_lr", "optim.weight_decay") if k in cfg
    )  # fmt: skip
    lines = [
        f"**Winner** (trial {best['trial_id']}): {method}{f', {settings}' if settings else ''}",
        f"**Head**: norm {param_value(cfg, 'head.norm')}, init {param_value(cfg, 'head.init')}, "
        f"lr {param_value(cfg, 'optim.head_lr_scale')} × the base lr's, "
        f"refit {param_value(cfg, 'head.refit')}",
        f"**Val** {_pct(best['val_acc'])} % · **{test.replace('test', 'Test')} %** over seeds "
        f"{', '.join(map(str, res.get('test_accs', {}))) or '-'}",
    ]
    if probe:
        lines.append(
            f"**Probe** (standardised logistic regression on the frozen features, C={probe['C']:g}): "
            f"val {_pct(probe['val_acc'])} %, test {_pct(probe['test_acc'])} %"
        )
    return " · ".join(parts), "\n\n".join(lines)


def _metric_points(metrics: dict[str, Any], timestamp_ms: int, step: int) -> list[_records.MetricPoint]:
    """The spool's points of one step: every value that is not None, as a float."""
    return [
        _records.MetricPoint(k, float(v), timestamp_ms, int(step))
        for k, v in metrics.items()
        if v is not None
    ]


def _logged(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k in LOGGED_METRICS or k.startswith(LOGGED_METRIC_PREFIXES)}


class TrackingCallback(tune.Callback):
    """Logs every Tune trial as a nested MLflow run of its task's parent run (from the driver).

    Each result becomes one spooled write (the background writer batches them into ``log_batch``
    calls); the trial's final status becomes the tag ``vptsearch.status``. With ``run_dir`` the
    callback writes through that launch's open :class:`Tracker` (also after Tune unpickles it on
    ``--resume``), so nothing here waits on the tracking store.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        artifact_loc: str | None,
        launch_id: str,
        parents: dict[str, str],
        max_epochs: int,
        flush_s: float = 5.0,
        resume: bool = True,
        run_dir: Path | str | None = None,
    ) -> None:
        self.args = (uri, experiment, artifact_loc, launch_id)
        self.parents, self.max_epochs = parents, max_epochs
        self.run_dir = str(run_dir) if run_dir is not None else None
        # A fresh launch has no trial runs in the store yet: no need to search for them by tag.
        self.resume = resume
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] = {}
        self._ended: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment state
        d = dict(self.__dict__)
        # An unpickled callback belongs to a restored experiment: its trials' runs may exist.
        d.update(_tracker=None, _runs={}, _ended=set(), resume=True)
        return d

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = (Tracker.of_run_dir(self.run_dir) if self.run_dir else None) or Tracker(
                *self.args, run_dir=Path(self.run_dir) if self.run_dir else None
            )
        return self._tracker

    def _run_id(self, trial: Any) -> str:
        tid = trial.trial_id
        if tid not in self._runs:
            cfg = trial.config
            task, phase = cfg["task"], cfg.get("phase", "search")
            key = {"trial_id": f"{self.tracker.launch_id}/{phase}/{tid}"}
            name = (
                f"{task.split('/')[-1]}-{phase}-{tid}"
                if phase == "search"
                else f"{task.split('/')[-1]}-final-seed{cfg.get('seed', 0)}"
            )
            tags = {
                "kind": "trial",
                "task": task,
                "phase": phase,
                "status": "running",
                "launch": self.tracker.launch_id,
                "seed": cfg.get("seed", 0),
            }
            if "warm_start" in cfg:  # enqueued from another task's (or an earlier launch's) best
                tags["warm_start"] = cfg["warm_start"]
            ref = self.tracker.run(name, tags, key, parent=self.parents.get(task), new=not self.resume)
            control = ("task", "phase", "warm_start")
            # with its method's defaults: the runs of launches whose spaces differ compare key by key
            params = {**trial_defaults(cfg.get("method", "")), **cfg}
            self.tracker.log(ref, params={k: v for k, v in params.items() if k not in control})
            self._runs[tid] = ref
        return self._runs[tid]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """The result's epoch, and the epochs the trial held back before it (one spooled write)."""
        # held-back rows carry when they ended; the result itself is logged as of now (Tune's own
        # ``timestamp`` in it has whole seconds)
        rows = [(int(r["epoch"]), _logged(r), r.get("timestamp")) for r in result.get(EARLIER_EPOCHS, ())]
        rows.append((int(result.get("epoch", iteration)), _logged(result), None))
        self.tracker.log_epochs(self._run_id(trial), rows)

    def _finish(self, trial: Any, error: bool) -> None:
        ref = self._run_id(trial)
        status = trial_status(trial.last_result, self.max_epochs, error)
        tags = {PREFIX + "status": status}
        if (trial.last_result or {}).get("error"):
            tags[PREFIX + "error"] = str(trial.last_result["error"])[:500]
        self.tracker.log(ref, tags=tags)
        self.tracker.end(ref, MLFLOW_STATUS[status])
        self._ended.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=True)

    def end_open_runs(self) -> None:
        """The runs of trials still running when ``Tuner.fit`` raised end KILLED, tagged stopped
        (``--resume`` reopens and continues them); ended runs are left as they are."""
        for trial_id, ref in self._runs.items():
            if trial_id not in self._ended:
                self.tracker.log(ref, tags={PREFIX + "status": "stopped"})
                self.tracker.end(ref, "KILLED")
                self._ended.add(trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Close the runs of trials that ended without this callback seeing it: a driver killed
        after Tune saved a trial as finished but before its end reached the spool."""
        for trial in trials:
            # after Ctrl-C Tune's cleanup marks the trials it interrupted TERMINATED as well; their
            # last result is not ``done`` and --resume continues them: their runs stay open
            really_done = trial.status == trial.ERROR or (
                trial.status == trial.TERMINATED and (trial.last_result or {}).get("done")
            )
            if trial.trial_id not in self._ended and really_done:
                self._finish(trial, error=trial.status == trial.ERROR)
        if self.resume and trials:
            # A driver killed after starting a trial but before Tune saved it: the restored
            # experiment runs that slot again under a new id; the orphan's run goes, so MLflow
            # holds exactly the experiment's trials.
            lid = self.tracker.launch_id
            by_phase: dict[str, list[str]] = {}  # a search experiment runs its finals too (_final_queue)
            for t in trials:
                phase = t.config.get("phase", "search")
                by_phase.setdefault(phase, []).append(f"{lid}/{phase}/{t.trial_id}")
            for phase, keep in by_phase.items():
                self.tracker.prune({"launch": lid, "kind": "trial", "phase": phase}, "trial_id", keep)
