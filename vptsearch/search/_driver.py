"""``launch``: preflight checks, the search phase, selection, the final phase, export, MLflow summary.

Everything that can be wrong with the input (spec, data, backbone, tracking URI, cluster address)
is checked before Ray starts a single trial (:mod:`vptsearch.search._preflight`). A
:class:`Launch` owns what one launch holds (run dir, Tune storage, Ray, the MLflow tracker) and
runs its steps as methods; the phases' Tuners are :mod:`vptsearch.search._phases`, the results
they leave are typed (:mod:`vptsearch.search._results`) and handed to export in process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.tune.schedulers import FIFOScheduler

from vptsearch._atomic import write_atomic
from vptsearch._errors import VptsearchError
from vptsearch.data import data_root, get_task, resolve_tasks
from vptsearch.probe import launch_probes
from vptsearch.search import _cluster, _metrics, _monitor, _preflight, _report, _runlock, _tune_state
from vptsearch.search._export import bundles_line, export_bundles
from vptsearch.search._final_queue import FinalsAfterSearch, check_finals, expected_finals
from vptsearch.search._outcomes import log_bundles, log_task_outcomes
from vptsearch.search._phases import (
    LaunchInterrupted,
    TuneSetup,
    final_runs,
    finals_in_search,
    run_tuner,
    trial_records,
)
from vptsearch.search._protocol import TaskSelection, TrialRecord, final_configs, select
from vptsearch.search._results import FinalRun, LaunchResults, LaunchSummary, collect
from vptsearch.search._resume_check import resume_spec
from vptsearch.search._rundir import RESULTS_FILE, SPEC_FILE, prepare_run_dir, remove_empty
from vptsearch.search._scheduler import build_scheduler
from vptsearch.search._searcher import MultiTaskSearcher, build_searcher
from vptsearch.search._split_store import start_split_store
from vptsearch.search._storage import Storage, check_storage, launch_storage, with_storage
from vptsearch.search._tracking import (
    PREFIX,
    ProgressCallback,
    Tracker,
    TrackingCallback,
    artifact_location,
    check_tracking_uri,
    tracking_uri_for,
)
from vptsearch.search._trial_failures import end_stopped_runs
from vptsearch.spec import SearchSpec
from vptsearch.train import get_backbone

log = logging.getLogger(__name__)
Say = Callable[[str], None]


class LaunchFailed(VptsearchError):
    """A step after the search failed (final phase, probe, export); the runs are ended FAILED."""


def launch(
    spec: SearchSpec,
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    dashboard: bool = True,
    say: Say | None = None,
    storage: str | None = None,
) -> LaunchSummary:
    """Run a whole search space: search -> select -> final seeds -> export, tracked in MLflow.

    ``storage``: where Tune keeps experiment state and checkpoints (a local/NFS path or
    ``s3://...``; default ``$VPTSEARCH_STORAGE``, the spec's ``storage.path``, else the run dir).
    ``say``: where the progress lines go (default: INFO records of this module's logger, which
    the ``vptsearch`` command prints).
    """
    run = Launch.checked(spec, resume=resume, tracking_uri=tracking_uri, address=address, storage=storage,
                         say=say or log.info)  # fmt: skip
    with _tune_state.disk_full_is_one_line(run.run_dir):  # a full disk: one line, resumable
        return run.run(address, dashboard)


@dataclass(eq=False)
class Launch:
    """One launch: its run dir, Tune storage, Ray, MLflow tracker, and its steps as methods.

    :meth:`checked` claims the run dir and checks the input (nothing started yet); :meth:`run`
    starts or joins Ray, opens the tracker and runs :meth:`search`, :meth:`final` and the rest.
    """

    spec: SearchSpec
    tasks: list[str]
    run_dir: Path
    store: Storage  # where Tune keeps the phases' experiments
    uri: str  # the MLflow tracking URI (checked)
    resume: bool
    say: Say
    created: list[Path] = field(default_factory=list)  # removed again (if empty) when it is refused
    started: float = field(default_factory=time.perf_counter)  # for the wall time
    dashboard_url: str | None = None
    # set once it runs: the tracker, the MLflow launch run's ref and each task run's (``parents``)
    tracker: Tracker = field(init=False, repr=False)
    launch_run: str = field(init=False, repr=False)
    parents: dict[str, str] = field(init=False, repr=False)
    groups: dict[str, str] = field(init=False, repr=False)  # task -> group, in the suite's order
    setup: TuneSetup = field(init=False, repr=False)

    @property
    def launch_id(self) -> str:
        return f"{self.spec.name}/{self.run_dir.name}"

    @property
    def report_dir(self) -> Path:
        return self.run_dir / "report"

    @classmethod
    def checked(
        cls, spec: SearchSpec, *, resume: bool, tracking_uri: str | None, address: str | None,
        storage: str | None, say: Say,
    ) -> Launch:  # fmt: skip
        """Claim the run dir and check everything that needs no cluster; a refused launch leaves
        no folder behind."""
        started = time.perf_counter()
        # The launch folder is claimed first (atomically, see allocate_run_dir): its name is the
        # launch id every later step uses. A launch that fails its checks removes it again (empty).
        given = spec
        run_dir, spec, created = prepare_run_dir(spec, resume)  # and its lock: one launch per run dir
        try:
            if resume:  # the saved spec and tracking URI; a change is refused unless it is safe
                spec, tracking_uri = resume_spec(given, spec, run_dir, tracking_uri, storage, say)
            spec = dataclasses.replace(spec, data_root=str(data_root(spec.data_root)))
            suite = spec.suite if isinstance(spec.suite, str) else list(spec.suite)
            tasks = resolve_tasks(suite, spec.data_root)
            _preflight.check_data(spec, tasks, say)
            _preflight.verify_data(spec, tasks, say)
            get_backbone(spec)  # fails early on a bad backbone; cached for in-driver use
            uri = check_tracking_uri(tracking_uri_for(tracking_uri, spec.tracking.uri))
            _preflight.check_export(spec)
            if address:
                _preflight.check_address(address)
            spec = with_storage(spec, storage)
            store = launch_storage(spec, run_dir)
            if spec.storage.path:
                check_storage(store)
        except BaseException:
            _runlock.release(run_dir)
            remove_empty(created)
            raise
        return cls(spec, tasks, run_dir, store, uri, resume, say, created, started)

    def run(self, address: str | None, dashboard: bool) -> LaunchSummary:
        """Ray up (a cluster started here is stopped again), the tracker open, every phase."""
        started_here = not ray.is_initialized()
        try:
            self._join_cluster(address, dashboard)
            self.tracker = self._open_tracker()
            try:
                self._start_runs()
                summary = self._run_phases()
                summary.unsynced = self._close_tracker()
                return summary
            except BaseException as exc:
                end_stopped_runs(self, exc)  # stopped for memory: the runs end KILLED
                self._close_tracker(drain_s=10.0)
                raise
        finally:
            if started_here:  # a cluster we started is ours to stop; a connected one is left alone
                _monitor.shutdown_ray()  # and a local Ray's scrape targets go with it
            _runlock.release(self.run_dir)

    def _join_cluster(self, address: str | None, dashboard: bool) -> None:
        """Start or join Ray, then the checks that need the cluster (before any MLflow run or trial)."""
        try:
            self.dashboard_url = _preflight.start_ray(address, dashboard)
            _preflight.check_resources(self.spec)
            _cluster.preflight(self.spec, self.store, self.tasks, self.say)  # >1 node: storage, data
        except BaseException:
            remove_empty(self.created)
            raise

    def _open_tracker(self) -> Tracker:
        """The launch's Tracker; spec.yaml and tracking.json written next to its spool."""
        spec, run_dir = self.spec, self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        art_loc = artifact_location(spec.tracking.artifact_location, self.uri)
        # Every MLflow write of the launch goes through the run dir's spool (see _spool): a tracking
        # server going away mid-run never stops a trial; `vptsearch sync` replays what it missed.
        tracker = Tracker(self.uri, spec.experiment, art_loc, self.launch_id, run_dir=run_dir)
        spec.dump(run_dir / SPEC_FILE)
        record: dict[str, str | None] = {"uri": self.uri, "experiment": spec.experiment}
        record.update(launch_id=self.launch_id, artifact_location=art_loc)
        write_atomic(run_dir / "tracking.json", json.dumps(record))  # a resume reads it back
        return tracker

    def _start_runs(self) -> None:
        """The MLflow launch run and one task run per task (trial runs nest under those)."""
        tracker, spec = self.tracker, self.spec
        self.launch_run = tracker.launch_run(self.launch_id)
        tags = {PREFIX + "space": spec.name, PREFIX + "run_dir": str(self.run_dir)}
        tracker.set_tags(self.launch_run, tags)
        tracker.log_artifact(self.launch_run, self.run_dir / SPEC_FILE)
        self.groups = {t: get_task(t, spec.data_root).group for t in self.tasks}
        self.parents = {t: tracker.task_run(t, group) for t, group in self.groups.items()}
        if self.resume:  # a launch stopped for memory tagged its runs stopped, with the cause
            for ref in [self.launch_run, *self.parents.values()]:
                tracker.set_tags(ref, {PREFIX + "status": "resumed", PREFIX + "error": ""})

    def _close_tracker(self, drain_s: float = 120.0) -> int:
        """Let the MLflow writer catch up, then say how to sync what the store did not take."""
        left = self.tracker.close(drain_s=drain_s)
        if left:
            self.say(self.tracker.unsynced_message(left))
        return left

    def _announce(self) -> None:
        """Where to watch the launch: run dir, MLflow, the Ray dashboard, Tune storage."""
        say, uri = self.say, self.uri
        spec = self.spec
        say(f"vptsearch: launch {self.launch_id}: {len(self.tasks)} task(s), "
            f"{spec.search.trials_per_task} trials each")  # fmt: skip
        say(f"  run dir:        {self.run_dir}")
        if uri.startswith(("http://", "https://")):
            runs = f"#/experiments/{self.tracker.experiment_id}/runs?workflowType=machine_learning"
            say(f"  MLflow:         {uri.rstrip('/')}/{runs}")
        else:
            say(f"  MLflow:         {uri} (experiment {spec.experiment!r})")
            say(f"                  browse: `vptsearch ui --tracking-uri {uri}`")
        if self.dashboard_url:
            say(f"  Ray dashboard:  {self.dashboard_url}")
            if _monitor.token_auth_enabled():  # Ray 2.60: the page opens on a token dialog
                say(f"                  {_monitor.token_hint()}")
            if not _monitor.joined_cluster():  # a cluster's own Prometheus/Grafana chart it there
                say("                  metrics charts: `vptsearch monitor` "
                    "(a local Prometheus, docs/search.md)")
        say(f"  Tune storage:   {self.store.uri}")

    def _callbacks(self, phase: str, n_trials: int, finals: int = 0) -> list:
        """Ray metrics, MLflow logging and progress lines of one phase's trials (and of up to
        ``finals`` final trials run in the same experiment)."""
        epochs, spec = self.spec.training.epochs, self.spec
        return [
            _metrics.MetricsCallback(phase, epochs, self.tasks),  # on the module: a test records it
            TrackingCallback(
                self.uri, spec.experiment, None, self.launch_id, self.parents, epochs, resume=self.resume,
                run_dir=self.run_dir,
            ),
            ProgressCallback(n_trials, epochs, phase, finals),
            *_tune_state.state_guard(self.store, phase, self.resume),  # Tune state's last good copy
        ]

    def search(self) -> tuple[list[TrialRecord], dict[str, dict[int, FinalRun]]]:
        """The search phase: every task's trials in one Tune experiment, and there each task's final
        trials as soon as its search has ended (_final_queue); its trial records and those finals."""
        spec, epochs, seeds = self.spec, self.spec.training.epochs, self.spec.protocol.final_seeds
        searcher: Any = build_searcher(spec, self.tasks, journal=self.run_dir / "optuna.journal")
        budget = sum(searcher.budgets.values())
        finals = len(self.tasks) * len(seeds) if finals_in_search(self.setup) else 0
        if finals:
            searcher = FinalsAfterSearch(searcher, seeds, epochs)

        def expected(results: Any) -> int:  # the search's trials, then its winners' finals
            winners = select(trial_records(results, epochs), self.tasks)
            return budget + (expected_finals(winners, seeds) if finals else 0)

        callbacks = self._callbacks("search", budget, finals)
        results = run_tuner(
            self.setup, "search", searcher, build_scheduler(spec), budget + finals, callbacks, expected
        )
        return trial_records(results, epochs), final_runs(results, self.run_dir, epochs)

    def final(self, selection: dict[str, TaskSelection]) -> dict[str, dict[int, FinalRun]]:
        """The best configuration of every task with each final seed on train+val, tested once."""
        spec = self.spec
        finals = final_configs(selection, spec.protocol.final_seeds)
        searcher = MultiTaskSearcher(
            None, {t: len(c) for t, c in finals.items()}, spec.search.max_concurrent, fixed=finals,
            metric=None,
        )  # fmt: skip
        n_final = sum(len(c) for c in finals.values())
        if not n_final:
            return {}
        results = run_tuner(self.setup, "final", searcher, FIFOScheduler(), n_final,
                            self._callbacks("final", n_final))  # fmt: skip
        return final_runs(results, self.run_dir, spec.training.epochs)

    def _collect(
        self, selection: dict[str, TaskSelection], finals: dict[str, dict[int, FinalRun]]
    ) -> LaunchResults:
        return collect(self.launch_id, selection, finals, self.spec.protocol.final_seeds, self.groups)

    def _probe(self, results: LaunchResults) -> None:
        """The frozen-feature reference, once per task, cached across launches (``protocol.probe``)."""
        if not self.spec.protocol.probe:
            return
        for task, pr in launch_probes(self.spec, self.tasks, self.say).items():
            results.tasks[task].probe, results.tasks[task].probed = pr, True

    def _run_phases(self) -> LaunchSummary:
        """The launch's backbone and split store shared with its trials, then :meth:`_phases`."""
        self._announce()
        backbone = _cluster.share_backbone(get_backbone(self.spec))  # once, not per trial or per node
        # each split decoded once per launch, not once per worker (both phases share the store)
        splits = start_split_store()
        self.setup = TuneSetup(self.spec, self.run_dir, self.store, backbone, self.resume, splits)
        try:
            return self._phases()
        finally:  # the splits go with the store: the cluster may outlive the launch
            splits.close()

    def _phases(self) -> LaunchSummary:
        """Search (with each task's finals), select, then results, report, bundles and the MLflow
        summary. A failure after the search still writes results.json and the report and ends the
        runs FAILED."""
        records, finals = self.search()
        selection = select(records, self.tasks)
        trials = [dataclasses.asdict(r) for r in records]
        results: LaunchResults | None = None
        try:
            check_finals(selection, {t: [run.config for run in runs.values()] for t, runs in finals.items()})
            if not finals:  # a launch folder whose search ran before finals ran in it: a final phase
                finals = self.final(selection)
            results = self._collect(selection, finals)
            self._probe(results)
            results.save(self.run_dir)
            # the report exists before export: a failing export still leaves it (rewritten below)
            _report.write_report(results.rows(), trials, self.report_dir)
            # adds each task's ensemble test accuracy to `results` and rewrites results.json
            bundles = export_bundles(self.run_dir, results=results, spec=self.spec, say=self.say)
            log_bundles(self.tracker, self.parents, results, bundles)
            log_task_outcomes(self.tracker, self.parents, results)
        except (LaunchInterrupted, KeyboardInterrupt):
            raise  # --resume continues: the runs stay open
        except Exception as exc:
            _tune_state.raise_if_disk_full(exc)  # resumable: the runs stay open
            self._fail(exc, results, selection, finals, trials)
            if isinstance(exc, (VptsearchError, OSError)):
                raise LaunchFailed(
                    f"launch {self.launch_id} failed after its search: {_one_line(exc)}; the report is in "
                    f"{self.report_dir} and the trials are kept in {self.run_dir}"
                ) from None
            raise
        return self._finish(results, bundles, trials)

    def _finish(self, results: LaunchResults, bundles: dict[str, Path], trials: list[dict]) -> LaunchSummary:
        """The final report (with the ensembles) and the launch run's artifacts; the summary."""
        tracker, say, rows = self.tracker, self.say, results.rows()
        paths = _report.write_report(rows, trials, self.report_dir)
        for p in [*paths, self.run_dir / RESULTS_FILE]:
            tracker.log_artifact(self.launch_run, p)
        seconds = time.perf_counter() - self.started
        tracker.log_metrics(self.launch_run, {"wall_seconds": seconds, "tasks": len(self.tasks),
                                              "trials": len(trials)})  # fmt: skip
        tracker.end(self.launch_run)
        say(_report.markdown_table(rows))
        warning = _report.probe_gap_warning(rows, results.best_configs())
        if warning:
            say(warning)
        say(bundles_line(results, len(bundles)))
        say(f"summary: {self.report_dir / 'summary.md'}   wall time {seconds:.0f} s")
        return LaunchSummary(self.launch_id, self.run_dir, self.uri, self.spec.experiment, rows, bundles,
                             self.dashboard_url, seconds)  # fmt: skip

    def _fail(
        self, exc: BaseException, results: LaunchResults | None, selection: dict[str, TaskSelection],
        finals: dict[str, dict[int, FinalRun]], trials: list[dict[str, Any]],
    ) -> None:  # fmt: skip
        """After-search failure: write results.json and the report from what is done, end the task
        and launch runs FAILED with the error as ``vptsearch.error`` (they stayed RUNNING forever)."""
        error = _one_line(exc)[:500]
        tracker = self.tracker
        try:
            if results is None:
                results = self._collect(selection, finals)
            results.error = error
            path = results.save(self.run_dir)
            for p in [*_report.write_report(results.rows(), trials, self.report_dir), path]:
                tracker.log_artifact(self.launch_run, p)
        except Exception as report_exc:  # the original error is the one to raise
            self.say(f"could not write the report of the failed launch: {_one_line(report_exc)}")
        for ref in [*self.parents.values(), self.launch_run]:
            tracker.set_tags(ref, {PREFIX + "status": "failed", PREFIX + "error": error})
            tracker.end(ref, "FAILED")


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, VptsearchError) else f"{type(exc).__name__}: {text}"
