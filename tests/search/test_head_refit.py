"""head.refit: the head refitted by the probe's solver on the trained model's features after the
last epoch: what it fits, with which C, when, and what resume and ``none`` keep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vptsearch._linear_probe import extract_features, fit_standardised, logits
from vptsearch._trial_config import TrialConfig
from vptsearch.spec import spec_from_dict
from vptsearch.train import ListReporter, prepare_trial, run_trial

TASK = "mini/digits"


@pytest.fixture()
def spec(base_raw: dict):
    return spec_from_dict({**base_raw, "training": {"epochs": 2, "warmup_epochs": 0, "batch_size": 64}})


def _features(loop, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return extract_features(loop.model, loop.data.loader(split, train=False, seed=0, batch=256, device=None))


@pytest.mark.parametrize("norm", ["batchnorm", "standardize", "none"])
def test_the_refitted_head_is_the_probe_fit_on_the_trained_features(spec, norm: str) -> None:
    cfg = {"method": "vpt", "prompt.length": 2, "head.norm": norm, "optim.base_lr": 1.0}
    loop = prepare_trial(cfg, task=TASK, spec=spec)
    rep = ListReporter()
    result = loop.run(rep)
    refit = result.init["head_refit"]
    assert refit["C"] == result.init["head"]["C"]  # the C chosen at init
    train, val = _features(loop, "train800"), _features(loop, "val200")
    assert refit["images"] == len(train[1])  # every image of the train split
    # the model's logits are the fit's, on features of the trained prompts (not the initial ones);
    # fitted on the rows in the order the trial read them (the solver's tolerance sees the order)
    read = extract_features(loop.model, loop._norm_batches())
    assert torch.equal(read[1].sort().values, train[1].sort().values)
    for c in range(10):  # the same images: per class, the same mean feature
        assert torch.allclose(read[0][read[1] == c].mean(0), train[0][train[1] == c].mean(0), atol=1e-5)
    fit = fit_standardised(read, refit["C"])
    with torch.no_grad():
        got = loop.model.eval().head(loop.model.head_norm(val[0])).double().numpy()
    assert np.abs(got - logits(fit, val[0].numpy().astype(np.float64))).max() < 1e-3
    assert result.val_acc == pytest.approx(float((got.argmax(1) == val[1].numpy()).mean()))
    # done once, before the last evaluation: only the last result carries its seconds
    assert ["head_refit_seconds" in r for r in rep.results] == [False, True]
    assert rep.results[-1]["head_refit_seconds"] == refit["seconds"] >= 0


def test_a_head_that_started_random_refits_with_the_c_the_probe_rule_picks_at_init(spec) -> None:
    cfg = {"method": "vpt", "prompt.length": 2, "seed": 3, "phase": "final"}
    probe_started = prepare_trial(cfg, task=TASK, spec=spec)
    random_started = prepare_trial({**cfg, "head.init": "random"}, task=TASK, spec=spec)
    assert random_started.init["head"] == {"kind": "random"}
    assert random_started.init["head_refit"] == {"C": probe_started.init["head"]["C"]}


def test_refit_none_keeps_the_trained_head_and_full_fine_tuning_defaults_to_it(spec) -> None:
    cfg = {"method": "vpt", "prompt.length": 2, "head.refit": "none"}
    rep = ListReporter()
    result = run_trial(cfg, task=TASK, spec=spec, reporter=rep)
    assert "head_refit" not in result.init and not any("head_refit_seconds" in r for r in rep.results)
    assert TrialConfig.from_sampled({"method": "full"}, spec.training).head_refit == "none"
    assert TrialConfig.from_sampled({"method": "vpt"}, spec.training).head_refit == "probe"


def test_resume_refits_as_an_uninterrupted_trial_and_an_older_checkpoint_ends_as_it_began(spec) -> None:
    cfg = {"method": "vpt", "prompt.length": 2, "head.norm": "batchnorm", "seed": 1}
    stopped = ListReporter(stop_after=1)
    assert run_trial(cfg, task=TASK, spec=spec, reporter=stopped).status == "pruned"
    state = stopped.last_state
    assert state is not None and state["init"]["head_refit"] == {"C": state["init"]["head"]["C"]}
    resumed = run_trial(cfg, task=TASK, spec=spec, checkpoint=state)
    straight = run_trial(cfg, task=TASK, spec=spec)
    assert resumed.val_acc == straight.val_acc
    for k, v in straight.trained_state.items():
        assert (resumed.trained_state[k].double() - v.double()).abs().max() < 1e-4, k
    # a checkpoint written before head.refit existed holds no C: that trial is not refitted
    older = {**state, "init": {k: v for k, v in state["init"].items() if k != "head_refit"}}
    assert "head_refit" not in run_trial(cfg, task=TASK, spec=spec, checkpoint=older).init


def test_an_unknown_head_refit_is_one_line_naming_it(base_raw: dict) -> None:
    from vptsearch._errors import ConfigError

    raw = {**base_raw, "params": {**base_raw["params"], "head.refit": "lbfgs"}}
    expected = r"params\.head\.refit: expected one of probe, none, got 'lbfgs'"
    with pytest.raises(ConfigError, match=expected) as e:
        spec_from_dict(raw)
    assert "\n" not in str(e.value)
