"""Prompts frozen after initialisation (``prompt.frozen: true``, SPT Table 4a): the prompts keep their
initial values bit for bit while the head trains, and they still travel in the trained state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vptsearch._errors import ConfigError
from vptsearch.models import build_model, initialize_prompts
from vptsearch.spec import spec_from_dict
from vptsearch.train import ListReporter, model_options, run_trial


def _tiny_vit() -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0,
        img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
    )


@pytest.mark.parametrize("deep_impl", ["tokens", "prefix_kv"])
def test_frozen_prompts_stay_bit_identical_after_a_step(deep_impl: str) -> None:
    model = build_model(_tiny_vit(), 4, "vpt", prompt_length=3, depth="deep", deep_impl=deep_impl,
                        prompt_dropout=0.1, frozen=True)
    images = torch.randn(16, 3, 32, 32)
    initialize_prompts(model, "spt-sample", images, seed=0)
    before = model.prompt_tokens.detach().clone()
    head_before = model.head.weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0, momentum=0.9,
                          weight_decay=0.01)
    model.train()
    for _ in range(2):
        loss = F.cross_entropy(model(images), torch.arange(16) % 4)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(model.prompt_tokens, before)  # bit-identical
    assert not torch.equal(model.head.weight, head_before)  # the head did train
    state = model.trained_state_dict()
    assert set(state) == {"prompt_tokens", "head.weight", "head.bias"}
    assert model.num_trainable_params() == 4 * 32 + 4  # the head only


def test_unfrozen_prompts_do_train() -> None:
    """The control: the same step changes the prompts when frozen=False (the default)."""
    model = build_model(_tiny_vit(), 4, "vpt", prompt_length=3, depth="deep")
    before = model.prompt_tokens.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    loss = F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8) % 4)
    loss.backward()
    opt.step()
    assert not torch.equal(model.prompt_tokens, before)


def test_frozen_state_round_trips_and_bad_value_is_refused() -> None:
    a = build_model(_tiny_vit(), 4, "vpt", prompt_length=2, frozen=True)
    b = build_model(_tiny_vit(), 4, "vpt", prompt_length=2, frozen=True)
    b.load_trained_state_dict(a.trained_state_dict())
    assert torch.equal(a.prompt_tokens, b.prompt_tokens)
    with pytest.raises(ConfigError, match="frozen must be true or false, got 'yes'"):
        build_model(_tiny_vit(), 4, "vpt", frozen="yes")


def test_spec_param_validates_and_reaches_run_trial(base_raw: dict) -> None:
    raw = {**base_raw, "params": {**base_raw["params"], "prompt.frozen": True}}
    raw["training"] = {"epochs": 1, "warmup_epochs": 0, "batch_size": 64, "init_images": 64}
    spec = spec_from_dict(raw)
    cfg = {"method": "vpt", "prompt.length": 2, "prompt.init": "spt-mean", "optim.base_lr": 5.0,
           "prompt.frozen": True}
    assert model_options(cfg, spec)["frozen"] is True
    assert "frozen" not in model_options({**cfg, "prompt.frozen": False}, spec)
    rep = ListReporter()
    res = run_trial(cfg, task="mini/digits", spec=spec, reporter=rep)
    # The run's prompts are what spt-mean produced: re-initialising with the same seed gives them back.
    from vptsearch.train import get_backbone

    ref = build_model(get_backbone(spec), 10, "vpt", prompt_length=2, depth="deep")
    from vptsearch.train import _init_images

    images, _ = _init_images("mini/digits", "train800", spec, get_backbone(spec))
    initialize_prompts(ref, "spt-mean", images, seed=0)
    assert torch.equal(res.trained_state["prompt_tokens"], ref.prompt_tokens.detach())
    with pytest.raises(ConfigError, match=r"params\.prompt\.frozen: expected true or false, got 'no'"):
        spec_from_dict({**base_raw, "params": {"prompt.frozen": "no"}})
