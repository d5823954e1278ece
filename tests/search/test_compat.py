"""The Ray/Optuna internals of vptsearch/search/_compat.py are still there and still in the path.

An upgrade that moves one fails here, naming it, instead of silently turning off ASHA's bookkeeping,
the journal's working copy or TPE's window. Each item in _compat.py says which versions it targets.
"""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import ray
from ray.tune.schedulers import ASHAScheduler

from vptsearch.search import _compat


def test_the_installed_ray_and_optuna_have_every_internal_the_compat_module_uses() -> None:
    missing = _compat.missing_internals()
    assert not missing, (
        f"Ray {ray.__version__} / Optuna {optuna.__version__} lack {', '.join(missing)}: "
        "vptsearch/search/_compat.py relies on them (it names the versions each item targets); "
        "port the item to the new version or pin the old one"
    )


def test_asha_tracks_a_trial_from_add_to_remove() -> None:
    asha = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=4, grace_period=1)
    trial = SimpleNamespace(trial_id="t1", config={})
    assert not _compat.asha_tracks(asha, "t1")
    asha.on_trial_add(None, trial)  # type: ignore[arg-type]
    assert _compat.asha_tracks(asha, "t1"), "ASHAScheduler.on_trial_add no longer fills _trial_info"
    asha.on_trial_remove(None, trial)  # type: ignore[arg-type]
    assert not _compat.asha_tracks(asha, "t1"), "ASHAScheduler.on_trial_remove no longer empties it"


class _CountingJournal(_compat.JournalStorageHooks):
    def __init__(self, path: str) -> None:
        self.accesses = 0
        self.records: list[dict] = []
        super().__init__(optuna.storages.journal.JournalFileBackend(path))

    def before_access(self) -> None:
        self.accesses += 1
        super().before_access()

    def write_record(self, record: dict) -> None:
        self.records.append(record)
        super().write_record(record)


def test_every_journal_access_and_record_passes_the_hooks(tmp_path) -> None:
    path = str(tmp_path / "optuna.journal")
    storage = _CountingJournal(path)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.report(0.25, 1)
    study.tell(trial, 0.5)
    accesses, records = storage.accesses, len(storage.records)
    assert accesses > 0, "JournalStorage no longer calls _sync_with_backend before an access"
    assert records > 0, "JournalStorage no longer writes through _write_log"
    assert all({"op_code", "worker_id"} <= set(r) for r in storage.records)
    # the defaults are Optuna's own: the file replays to the same study
    plain = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(path)))
    assert [(t.params, t.value, t.intermediate_values) for t in plain.trials] == [({"x": trial.params["x"]},
                                                                                 0.5, {1: 0.25})]


class _SpyView(_compat.StudyView):
    reads = 0

    def _get_trials(self, *args, **kwargs):
        _SpyView.reads += 1
        return super()._get_trials(*args, **kwargs)


class _ViewedTPE(optuna.samplers.TPESampler):
    """TPE given a view of all trials on each call (so it must sample exactly as plain TPE)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reads: dict[str, int] = {}

    def _view(self, study, method, *args):
        before = _SpyView.reads
        view = _SpyView(study, study.get_trials(deepcopy=False))
        out = getattr(super(), method)(view, *args)
        self.reads[method] = self.reads.get(method, 0) + _SpyView.reads - before
        return out

    def infer_relative_search_space(self, study, trial):
        return self._view(study, "infer_relative_search_space", trial)

    def sample_relative(self, study, trial, space):
        return self._view(study, "sample_relative", trial, space)

    def sample_independent(self, study, trial, name, dist):
        return self._view(study, "sample_independent", trial, name, dist)


def _tpe_params(sampler) -> list[dict]:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) - abs(t.suggest_int("n", 0, 4) - 2) / 10
                   if t.suggest_categorical("kind", ["a", "b"]) == "a" else t.suggest_float("y", 0, 1),
                   n_trials=12)
    return [t.params for t in study.trials]


def test_tpe_reads_the_trials_it_models_only_through_the_study_view() -> None:
    import warnings

    kwargs = dict(seed=3, n_startup_trials=3, multivariate=True, group=True, constant_liar=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        viewed = _ViewedTPE(**kwargs)
        assert _tpe_params(viewed) == _tpe_params(optuna.samplers.TPESampler(**kwargs))
    for method in ("infer_relative_search_space", "sample_relative", "sample_independent"):
        assert viewed.reads.get(method, 0) > 0, (
            f"TPESampler.{method} no longer reads trials through Study._get_trials: "
            "the window of vptsearch.search._tpe would be silently ignored"
        )


def test_the_tpe_good_set_size_is_the_one_set() -> None:
    seen: list[int] = []

    def gamma(n: int) -> int:
        seen.append(n)
        return _compat.tpe_default_gamma(n)

    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=2)
    _compat.set_tpe_gamma(sampler, gamma)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=6)
    assert seen, "TPESampler no longer sizes its good set with _gamma"
    assert [_compat.tpe_default_gamma(n) for n in (1, 10, 11, 100, 1000)] == [1, 1, 2, 10, 25]
