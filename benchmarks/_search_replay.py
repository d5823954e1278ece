"""Replaying search methods over a cached grid, through the components a launch uses.

Every method drives a real ``tune.Tuner`` whose trainable reports a cached val curve of the
suggested configuration for one of the grid's seeds, drawn per trial (the search sees seed noise):

- ``random`` / ``tpe`` with ``asha`` or no scheduler: ``build_searcher`` + ``build_scheduler``, the
  launch's own objects (one seeded Optuna study and one ASHA per task);
- ``screen``: random configurations trained for one rung (the ASHA grace period) each, then the
  top ``SCREEN_TOP_K`` of every task continued to the full budget (same seed, so only the remaining
  epochs are spent), a Tune grid over those points;
- warm start ``launch``: TPE+ASHA with ``search.warm_start: launch`` (other tasks' finished trials
  enqueued as they appear);
- warm start ``loto`` (leave one task out): for each task, an *earlier launch* is written as an
  Optuna journal holding every grid configuration of the *other* tasks with one seed's final val
  (what a finished grid search there would have left), and the task searches alone with
  ``search.warm_start: <that run dir>``. The held-out task's own results never enter its prior.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _search_score import Event

Curves = dict[str, list[list[float]]]  # "task#config key" -> one val curve per grid seed
SCREEN_TOP_K = 3  # configurations per task continued after the screening rung


@dataclass(frozen=True)
class Method:
    algorithm: str  # search.algorithm
    scheduler: str  # scheduler.type
    warm_start: str = "none"  # none | launch | loto
    screen: bool = False


METHODS: dict[str, Method] = {
    "tpe_asha": Method("tpe", "asha"),
    "random_asha": Method("random", "asha"),
    "tpe": Method("tpe", "none"),
    "random": Method("random", "none"),
    "screen_topk": Method("random", "none", screen=True),
    "tpe_asha_warm_launch": Method("tpe", "asha", warm_start="launch"),
    "tpe_asha_warm_loto": Method("tpe", "asha", warm_start="loto"),
}


def config_key(config: Mapping[str, Any], param_keys: tuple[str, ...]) -> str:
    """Stable key of a configuration (floats normalised so 10 and 10.0 match)."""
    return "|".join(f"{k}={float(config[k]) if k.startswith('optim.') else config[k]}" for k in param_keys)


def replay_trainable(config: dict[str, Any], curves: Curves, completed: dict[str, list[bool]],
                     search_seed: int, param_keys: tuple[str, ...]) -> None:
    """Report a cached val curve of ``config`` epoch by epoch (what run_trial reported).

    The seed is drawn per trial (fixed per search seed and trial id); a continued trial (screening's
    second phase) names its draw and the epoch it resumes after, and reports only the rest.
    """
    from ray import tune

    key = config["task"] + "#" + config_key(config, param_keys)
    draw = config.get("replay.draw")
    if draw is None:
        draw = random.Random(f"{search_seed}/{tune.get_context().get_trial_id()}").randrange(len(curves[key]))
    curve = curves[key][draw]
    for epoch in range(int(config.get("replay.start", 0)) + 1, len(curve) + 1):
        last_diverged = not completed[key][draw] and epoch == len(curve)
        tune.report({"epoch": epoch, "val_acc": curve[epoch - 1], "diverged": int(last_diverged),
                     "replay_draw": draw})


def continued_trainable(config: dict[str, Any], points: list[dict[str, Any]], **kw: Any) -> None:
    """Screening's second phase: Tune's grid over point indices, each a configuration to continue."""
    replay_trainable(points[config["point"]], **kw)


def _recorder(param_keys: tuple[str, ...], points: list[dict[str, Any]] | None = None) -> Any:
    from ray.tune import Callback

    def config_of(trial: Any) -> dict[str, Any]:
        return dict(points[trial.config["point"]]) if points is not None else dict(trial.config)

    class EpochRecorder(Callback):
        """Every reported epoch and every trial end, in the order the Tune controller saw them."""

        def __init__(self) -> None:
            self.events: list[Event] = []
            self.configs: dict[str, dict[str, Any]] = {}

        def _add(self, kind: str, trial: Any, result: dict) -> None:
            config = self.configs[trial.trial_id] = config_of(trial)
            key = config_key(config, param_keys)
            self.events.append((kind, config["task"], trial.trial_id, key, result))

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            self._add("result", trial, dict(result))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._add("complete", trial, dict(trial.last_result or {}))

    return EpochRecorder()


@dataclass
class Replay:
    """What every replayed search shares: the cached curves and how to build a spec."""

    curves: Curves
    completed: dict[str, list[bool]]
    param_keys: tuple[str, ...]
    make_spec: Callable[..., Any]  # (tasks, *, method, seed, warm_start) -> spec
    storage: Path

    def _trainable(self, search_seed: int, points: list[dict[str, Any]] | None) -> Any:
        from ray import tune

        kw = {"curves": self.curves, "completed": self.completed, "search_seed": search_seed,
              "param_keys": self.param_keys}
        fn = replay_trainable if points is None else continued_trainable
        extra = {} if points is None else {"points": points}
        return tune.with_resources(tune.with_parameters(fn, **kw, **extra), {"cpu": 1})

    def _fit(self, name: str, search_seed: int, tune_config: Any, stop: dict | None = None,
             points: list[dict[str, Any]] | None = None) -> Any:
        from ray import tune

        recorder = _recorder(self.param_keys, points)
        space = None if points is None else {"point": tune.grid_search(list(range(len(points))))}
        tuner = tune.Tuner(
            self._trainable(search_seed, points), tune_config=tune_config, param_space=space,
            run_config=tune.RunConfig(name=name, storage_path=str(self.storage), callbacks=[recorder],
                                      verbose=0, stop=stop,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
        tuner.fit()
        return recorder

    def search(self, spec: Any, tasks: list[str], name: str, stop: dict | None = None) -> Any:
        """One search of ``tasks`` in one Tuner, as a launch runs it; returns the recorder."""
        from ray import tune

        from vptsearch.search._scheduler import build_scheduler
        from vptsearch.search._searcher import build_searcher

        searcher = build_searcher(spec, tasks)
        config = tune.TuneConfig(search_alg=searcher, scheduler=build_scheduler(spec),
                                 num_samples=sum(searcher.budgets.values()), reuse_actors=True)
        return self._fit(name, spec.search.seed, config, stop)

    def run(self, method: str, tasks: list[str], seed: int, grace: int) -> dict[str, list[Event]]:
        """Per task: the events of one search of ``method`` with search seed ``seed``."""
        m = METHODS[method]
        tag = f"{method}-{seed}"
        if m.screen:
            events = self.screen(tasks, seed, grace, tag)
            return {t: events for t in tasks}
        if m.warm_start == "loto":
            out = {}
            for t in tasks:
                others = [s for s in tasks if s != t]  # none (a one-task run): no prior to start from
                earlier = self.earlier_launch(others, self.storage / f"{tag}-{_slug(t)}") if others else None
                warm = str(earlier) if earlier else "none"
                spec = self.make_spec([t], method=method, seed=seed, warm_start=warm)
                out[t] = self.search(spec, [t], f"{tag}-{_slug(t)}").events
            return out
        spec = self.make_spec(tasks, method=method, seed=seed, warm_start=m.warm_start)
        events = self.search(spec, tasks, tag).events
        return {t: events for t in tasks}

    def screen(self, tasks: list[str], seed: int, grace: int, tag: str) -> list[Event]:
        """Random configurations for ``grace`` epochs each, then each task's top k to the end."""
        from ray import tune

        spec = self.make_spec(tasks, method="screen_topk", seed=seed, warm_start="none")
        first = self.search(spec, tasks, f"{tag}-screen", stop={"epoch": grace})
        points = []
        for t in tasks:
            ends = [(r["val_acc"], tid) for kind, task, tid, _k, r in first.events
                    if kind == "complete" and task == t and int(r.get("epoch", 0)) == grace
                    and not r.get("diverged")]
            for _acc, tid in sorted(ends, key=lambda e: -e[0])[:SCREEN_TOP_K]:
                cfg = first.configs[tid]
                draw = next(r["replay_draw"] for kind, _t, i, _k, r in first.events if i == tid)
                points.append({**cfg, "replay.draw": draw, "replay.start": grace})
        if not points:
            return list(first.events)
        config = tune.TuneConfig(num_samples=1, reuse_actors=True)  # the grid: every point once
        second = self._fit(f"{tag}-continue", seed, config, points=points)
        return list(first.events) + list(second.events)

    def earlier_launch(self, sources: list[str], run_dir: Path) -> Path:
        """An earlier launch's journal: every grid configuration of ``sources`` with seed 0's final val."""
        import optuna

        from vptsearch.search._searcher import journal_storage

        run_dir.mkdir(parents=True, exist_ok=True)
        storage = journal_storage(run_dir / "optuna.journal")
        for task in sources:
            study = optuna.create_study(study_name=task, storage=storage, direction="maximize",
                                        load_if_exists=True)
            params = {k: _parse(k) for k in self.curves if k.startswith(task + "#")}
            values = {p: sorted({c[p] for c in params.values()}, key=str) for p in self.param_keys}
            dists: dict[str, optuna.distributions.BaseDistribution] = {
                p: optuna.distributions.CategoricalDistribution(v) for p, v in values.items()
            }
            for k, c in params.items():
                study.add_trial(optuna.trial.create_trial(params=c, distributions=dists,
                                                          value=self.curves[k][0][-1]))
        return run_dir


def _parse(key: str) -> dict[str, Any]:
    """The params of a ``task#k=v|k=v`` key (optim.* as floats, the rest as int when they look so)."""
    out: dict[str, Any] = {}
    for item in key.split("#", 1)[1].split("|"):
        k, v = item.split("=", 1)
        out[k] = float(v) if k.startswith("optim.") else int(v) if v.lstrip("-").isdigit() else v
    return out


def _slug(task: str) -> str:
    return task.replace("/", "_")
