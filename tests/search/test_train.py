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
    res = run_trial({**cfg, "phase": "final", "seed": 1}, task="mini/digits", spec=spec)
    assert set(seen) == {"train800val200", "test"} and res.test_acc is not None and res.val_acc is None


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
