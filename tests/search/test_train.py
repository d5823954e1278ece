"""The trial function without Ray: learning, exact resume, divergence, and no test data in search."""

from __future__ import annotations

import pytest
import torch

from vptsearch.spec import spec_from_dict
from vptsearch.train import ListReporter, run_trial


@pytest.fixture()
def spec(base_raw: dict):
    raw = {**base_raw, "training": {"epochs": 3, "warmup_epochs": 1, "batch_size": 64}}
    return spec_from_dict(raw)


def test_trial_learns_above_chance(spec) -> None:
    # textures: 6 classes, chance 1/6; even a random tiny ViT's features separate them.
    rep = ListReporter()
    cfg = {"method": "vpt", "prompt.length": 4, "prompt.init": "spt-mean", "optim.base_lr": 5.0}
    res = run_trial(cfg, task="mini/textures", spec=spec, reporter=rep)
    assert res.status == "completed" and res.epochs == 3
    assert [r["epoch"] for r in rep.results] == [1, 2, 3]
    assert res.val_acc is not None and res.val_acc > 1 / 6 + 0.08
    assert res.init["strategy"] == "spt-mean"
    assert set(res.trained_state) == {"prompt_tokens", "head.weight", "head.bias"}
    assert res.trained_state["prompt_tokens"].shape == (3, 4, 32)  # deep: [L, p, d]


def test_resume_from_checkpoint_matches_uninterrupted(spec) -> None:
    cfg = {"method": "vpt", "prompt.length": 2, "optim.base_lr": 2.0}
    stopped = ListReporter(stop_after=2)
    first = run_trial(cfg, task="mini/digits", spec=spec, reporter=stopped)
    assert first.status == "pruned" and first.epochs == 2
    state = stopped.last_state
    assert state is not None and state["epoch"] == 2 and set(state) >= {"trained", "optimizer", "epoch"}
    resumed = run_trial(cfg, task="mini/digits", spec=spec, reporter=ListReporter(), checkpoint=state)
    straight = run_trial(cfg, task="mini/digits", spec=spec, reporter=ListReporter())
    assert resumed.status == straight.status == "completed"
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.val_acc == straight.val_acc
    for k, v in straight.trained_state.items():
        assert (resumed.trained_state[k] - v).abs().max() < 1e-5, k


def test_huge_lr_ends_as_diverged_without_raising(spec) -> None:
    rep = ListReporter()
    res = run_trial({"method": "linear", "optim.base_lr": 1e30}, task="mini/digits", spec=spec, reporter=rep)
    assert res.status == "diverged"
    assert rep.results[-1]["diverged"] == 1 and res.epochs < 3


def test_search_phase_never_reads_test_split(spec, monkeypatch: pytest.MonkeyPatch) -> None:
    import vptsearch.data

    seen: list[str] = []
    real = vptsearch.data.make_loader

    def spy(task, split, **kw):
        seen.append(split)
        return real(task, split, **kw)

    monkeypatch.setattr(vptsearch.data, "make_loader", spy)
    cfg = {"method": "vpt", "prompt.length": 1, "prompt.init": "spt-sample", "optim.base_lr": 1.0}
    run_trial(cfg, task="mini/digits", spec=spec)
    assert set(seen) == {"train800", "val200"}
    seen.clear()
    unfitted = {**cfg, "phase": "final", "seed": 1, "head.init": "random", "head.refit": "none"}
    res = run_trial(unfitted, task="mini/digits", spec=spec)
    assert set(seen) == {"train800val200", "test"} and res.test_acc is not None and res.val_acc is None
    # head.init probe (and head.refit probe's C): C from the search splits, the fit on the final one
    # (seed 2: other prompts, so not the worker's cached fit of seed 1's)
    for fitted in ({**cfg, "phase": "final", "seed": 1}, {**unfitted, "head.refit": "probe", "seed": 2}):
        seen.clear()
        run_trial(fitted, task="mini/digits", spec=spec)
        assert set(seen) == {"train800", "val200", "train800val200", "test"}


def test_track_nmi_reports_per_layer_nmi_every_epoch(base_raw: dict) -> None:
    raw = {**base_raw, "training": {"epochs": 2, "warmup_epochs": 1, "batch_size": 64, "track_nmi": True}}
    rep = ListReporter()
    cfg = {"method": "vpt", "prompt.length": 3, "prompt.init": "random", "optim.base_lr": 1.0}
    run_trial(cfg, task="mini/digits", spec=spec_from_dict(raw), reporter=rep)
    for r in rep.results:  # deep prompts on a 3-block ViT: one NMI per prompted layer, in [0, 1]
        layers = [r[f"nmi_layer{i}"] for i in range(3)]
        assert all(0.0 <= v <= 1.0 for v in layers) and "nmi_layer3" not in r
        assert r["nmi_mean"] == pytest.approx(sum(layers) / 3)


def test_nmi_is_off_by_default(spec) -> None:
    rep = ListReporter()
    cfg = {"method": "vpt", "prompt.length": 2, "optim.base_lr": 1.0}
    run_trial(cfg, task="mini/digits", spec=spec, reporter=rep)
    assert not any(k.startswith("nmi") for r in rep.results for k in r)


def test_spt_init_is_computed_once_per_worker_for_the_same_task_shape_and_seed(spec, monkeypatch) -> None:
    """A search repeats (task, p, init, seed): the second trial reuses the first one's prompts."""
    import vptsearch.train as train

    calls: list[str] = []
    real = train._init_images

    def counting(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(train, "_init_images", counting)
    monkeypatch.setattr(train, "_INIT_CACHE", type(train._INIT_CACHE)())
    cfg = {"method": "vpt", "prompt.length": 3, "prompt.init": "spt-kmeans", "optim.base_lr": 1.0}
    first = run_trial(cfg, task="mini/digits", spec=spec)
    again = run_trial({**cfg, "optim.base_lr": 2.0}, task="mini/digits", spec=spec)
    assert calls == ["mini/digits"]  # images read and clustered once
    assert again.init.get("cached") is True and "cached" not in first.init
    fresh = run_trial({**cfg, "seed": 1}, task="mini/digits", spec=spec)  # another seed: computed
    assert calls == ["mini/digits"] * 2 and "cached" not in fresh.init
    # Cached prompts are exactly the computed ones: the same config trains to the same tensors.
    monkeypatch.setattr(train, "_INIT_CACHE", type(train._INIT_CACHE)())
    uncached = run_trial({**cfg, "optim.base_lr": 2.0}, task="mini/digits", spec=spec)
    for k, v in uncached.trained_state.items():
        assert torch.equal(again.trained_state[k], v), k


# --- checkpoint policy, shared backbone, precision (issue 14) ----------------------------------------
class _StateEpochs:
    """Reporter that records which epochs carried a checkpoint state (and keeps the states)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after, self.epochs, self.with_state, self.states = stop_after, [], [], {}

    def report(self, metrics, state=None) -> None:
        from vptsearch.train import TrialStopped

        self.epochs.append(metrics["epoch"])
        if state is not None:
            self.with_state.append(metrics["epoch"])
            self.states[metrics["epoch"]] = state
        if self.stop_after is not None and metrics["epoch"] >= self.stop_after:
            raise TrialStopped


def _spec_with(base_raw: dict, training: dict, scheduler: dict | None = None):
    raw = {**base_raw, "training": {"warmup_epochs": 1, "batch_size": 64, **training}}
    if scheduler is not None:
        raw["scheduler"] = scheduler
    return spec_from_dict(raw)


def test_checkpoint_epochs_are_every_n_the_asha_rungs_and_the_last(base_raw) -> None:
    from vptsearch.train import checkpoint_epochs

    asha = {"type": "asha", "grace_period": 10, "reduction_factor": 3}
    s = _spec_with(base_raw, {"epochs": 100, "warmup_epochs": 10, "checkpoint_every": 25}, asha)
    assert checkpoint_epochs(s) == {10, 25, 30, 50, 75, 90, 100}
    s = _spec_with(base_raw, {"epochs": 100, "warmup_epochs": 10, "checkpoint_every": 0}, asha)
    assert checkpoint_epochs(s) == {10, 30, 90, 100}
    s = _spec_with(base_raw, {"epochs": 7, "checkpoint_every": 3}, {"type": "none"})
    assert checkpoint_epochs(s) == {3, 6, 7}
    assert spec_from_dict(base_raw).training.checkpoint_every == 10  # the default


def test_bad_checkpoint_every_is_one_config_error(base_raw) -> None:
    from vptsearch._errors import ConfigError

    with pytest.raises(ConfigError, match=r"training\.checkpoint_every.*>= 0.*got -1"):
        _spec_with(base_raw, {"epochs": 3, "checkpoint_every": -1})


def test_only_policy_epochs_report_a_state(base_raw) -> None:
    spec = _spec_with(base_raw, {"epochs": 5, "checkpoint_every": 2}, {"type": "none"})
    rep = _StateEpochs()
    run_trial({"method": "linear", "optim.base_lr": 1.0}, task="mini/digits", spec=spec, reporter=rep)
    assert rep.epochs == [1, 2, 3, 4, 5] and rep.with_state == [2, 4, 5]


def test_resume_between_two_checkpoints_replays_the_missing_epochs(base_raw) -> None:
    """Killed at epoch 3 with checkpoints at 2 and 4: the resumed trial restarts from epoch 2, trains
    (and reports) epoch 3 again, and ends in exactly the state of an uninterrupted run."""
    spec = _spec_with(base_raw, {"epochs": 5, "checkpoint_every": 2}, {"type": "none"})
    cfg = {"method": "vpt", "prompt.length": 2, "prompt.init": "spt-mean", "optim.base_lr": 2.0}
    killed = _StateEpochs(stop_after=3)
    run_trial(cfg, task="mini/digits", spec=spec, reporter=killed)
    assert killed.epochs == [1, 2, 3] and killed.with_state == [2]
    resumed_rep = _StateEpochs()
    resumed = run_trial(cfg, task="mini/digits", spec=spec, reporter=resumed_rep, checkpoint=killed.states[2])
    straight = run_trial(cfg, task="mini/digits", spec=spec, reporter=ListReporter())
    assert resumed_rep.epochs == [3, 4, 5]  # epoch 3 replayed: its first run was never checkpointed
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.status == straight.status == "completed" and resumed.val_acc == straight.val_acc
    assert resumed.history[2]["train_loss"] == straight.history[2]["train_loss"]
    for k, v in straight.trained_state.items():
        assert torch.equal(resumed.trained_state[k], v), k


def test_checkpoint_state_loads_with_weights_only(spec, tmp_path) -> None:
    from ray import tune

    from vptsearch.search._trainable import STATE_FILE, load_state

    rep = ListReporter()
    cfg = {"method": "vpt", "prompt.length": 2, "prompt.init": "spt-mean", "optim.base_lr": 1.0}
    run_trial(cfg, task="mini/digits", spec=spec, reporter=rep)
    torch.save(rep.last_state, tmp_path / STATE_FILE)
    state = load_state(tune.Checkpoint.from_directory(str(tmp_path)))  # torch.load(weights_only=True)
    assert state["epoch"] == 3 and state["init"] == rep.last_state["init"]
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]
    for k, v in rep.last_state["trained"].items():
        assert torch.equal(state["trained"][k], v)


def test_vpt_and_linear_share_the_frozen_backbone_and_never_modify_it(spec) -> None:
    from vptsearch.models import build_model
    from vptsearch.train import get_backbone

    bb = get_backbone(spec)
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    for method, opts in (("vpt", {"prompt_length": 2}), ("linear", {})):
        assert build_model(bb, 10, method, **opts).backbone is bb.model
    for method in ("full", "bias", "partial", "adapter"):
        assert build_model(bb, 10, method).backbone is not bb.model, method
    run_trial({"method": "vpt", "prompt.length": 2, "optim.base_lr": 5.0}, task="mini/digits", spec=spec)
    run_trial({"method": "linear", "optim.base_lr": 5.0}, task="mini/digits", spec=spec)
    run_trial({"method": "full", "optim.base_lr": 5.0}, task="mini/digits", spec=spec)
    after = bb.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not bb.model.training and not any(p.requires_grad for p in bb.model.parameters())
    assert all(not m._forward_hooks for m in bb.model.modules())  # no adapter hook leaked


def test_two_trials_in_one_process_match_separate_processes(spec, monkeypatch) -> None:
    import vptsearch.train as train

    first = {"method": "vpt", "prompt.length": 3, "optim.base_lr": 5.0, "seed": 1}
    second = {"method": "linear", "optim.base_lr": 2.0}
    monkeypatch.setattr(train, "_INIT_CACHE", type(train._INIT_CACHE)())
    run_trial(first, task="mini/textures", spec=spec)
    shared = run_trial(second, task="mini/textures", spec=spec)  # after a trial on the same backbone
    # A separate process: a freshly loaded backbone that no trial has touched.
    monkeypatch.setattr(train, "_load_backbone_cached", train._load_backbone_cached.__wrapped__)
    alone = run_trial(second, task="mini/textures", spec=spec)
    assert alone.val_acc == shared.val_acc
    assert [h["train_loss"] for h in alone.history] == [h["train_loss"] for h in shared.history]
    for k, v in alone.trained_state.items():
        assert torch.equal(shared.trained_state[k], v), k


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu(spec) -> None:
    from vptsearch.train import resolve_precision

    assert spec.training.precision == "auto"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
