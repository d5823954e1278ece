"""Precise BN: the head norm's statistics recomputed from eval-mode features before every evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vptsearch._trial_loop as trial_loop
from vptsearch._training import recompute_norm_statistics
from vptsearch.data._loader import InMemoryLoader
from vptsearch.models.tuned import HeadBatchNorm
from vptsearch.spec import spec_from_dict
from vptsearch.train import ListReporter, run_trial


class _Net(nn.Module):
    """Features = a fixed linear map of the input (plus dropout, to tell train from eval mode)."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.body = nn.Linear(4, dim)
        self.drop = nn.Dropout(0.5)
        self.head_norm = HeadBatchNorm(dim)
        self.head = nn.Linear(dim, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_norm(self.features(x)))


def _batches(x: torch.Tensor, size: int = 16):
    return [
        (x[i : i + size], torch.zeros(len(x[i : i + size]), dtype=torch.long)) for i in range(0, len(x), size)
    ]


def test_statistics_are_those_of_the_first_images_eval_mode_features() -> None:
    torch.manual_seed(0)
    net, x = _Net(), torch.randn(100, 4) * 3 + 5
    net.train()
    assert recompute_norm_statistics(net, _batches(x), max_images=40) == 40
    assert not net.training  # eval mode: no dropout in the features the statistics describe
    with torch.no_grad():
        f = net.body(x[:40]).double()
    torch.testing.assert_close(net.head_norm.running_mean.double(), f.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net.head_norm.running_var.double(), f.var(0), rtol=1e-4, atol=1e-5)
    # so eval mode normalises those features to mean 0, variance 1
    with torch.no_grad():
        z = net.head_norm(net.body(x[:40]))
    assert z.mean(0).abs().max() < 1e-4 and (z.var(0) - 1).abs().max() < 1e-3
    # from the next training step on, the usual momentum follows the features
    assert int(net.head_norm.num_batches_tracked) == round(1 / HeadBatchNorm.MOMENTUM) - 1


def test_nothing_to_set_without_a_head_batchnorm_or_with_zero_images() -> None:
    net = _Net()
    before = net.head_norm.running_mean.clone()
    assert recompute_norm_statistics(net, _batches(torch.randn(32, 4)), max_images=0) == 0
    assert torch.equal(net.head_norm.running_mean, before)
    net.head_norm = nn.Identity()
    assert recompute_norm_statistics(net, _batches(torch.randn(32, 4)), max_images=32) == 0


def test_statistics_view_shares_the_images_and_reads_them_shuffled_and_unaugmented() -> None:
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 8, 8).contiguous()
    labels = torch.arange(40) // 10  # stored class by class
    loader = InMemoryLoader(
        images,
        labels,
        batch_size=8,
        image_size=8,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        train=True,
        augment=True,
        seed=3,
    )
    view = loader.statistics_view(16)
    first, again = list(view), list(view)
    assert view.loader.images.data_ptr() == loader.images.data_ptr()  # nothing copied
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))  # one fixed order
    assert len(first[0][0]) == 16 and len(set(first[0][1].tolist())) > 1  # a prefix sees several classes
    seen = sorted(round(float(v) * 255) for x, _ in first for v in x[:, 0, 0, 0])  # Normalise: /255 first
    assert seen == list(range(40))  # every image once, pixels as stored (no crop or flip)
    assert loader.augment and loader.batch_size == 8  # the train loader itself unchanged


@pytest.mark.parametrize("images", [0, 64])
def test_a_trial_evaluates_and_exports_with_recomputed_statistics(
    base_raw: dict, images: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, torch.Tensor]] = []
    real = trial_loop.recompute_norm_statistics

    def spy(model, batches, max_images, precision="fp32"):
        used = real(model, batches, max_images, precision)
        calls.append((used, model.head_norm.running_mean.clone()))
        return used

    monkeypatch.setattr(trial_loop, "recompute_norm_statistics", spy)
    training = {"epochs": 2, "warmup_epochs": 0, "batch_size": 64, "precise_bn_images": images}
    spec = spec_from_dict({**base_raw, "training": training})
    # head.refit none: a refitted head brings its own statistics (tests/search/test_head_refit.py)
    cfg = {"method": "vpt", "prompt.length": 2, "head.norm": "batchnorm", "optim.base_lr": 1.0,
           "head.refit": "none"}  # fmt: skip
    result = run_trial(cfg, task="mini/digits", spec=spec, reporter=ListReporter())
    if not images:
        assert calls == []  # the running averages of training, as before
        return
    assert [used for used, _ in calls] == [64, 64]  # before each epoch's val
    # what the trial exports (and a bundle predicts with) is the last recomputation
    assert torch.equal(result.trained_state["head_norm.running_mean"], calls[-1][1])
