"""The training recipe's options, end to end through run_trial: optimizer, head norm, dropout mask."""

from __future__ import annotations

import pytest
import torch

from vptsearch.spec import PARAMS, spec_from_dict
from vptsearch.train import ListReporter, run_trial


def _spec(base_raw: dict, **training):
    training = {"epochs": 2, "warmup_epochs": 0, "batch_size": 64, **training}
    return spec_from_dict({**base_raw, "training": training})


def test_adamw_is_really_used_with_its_lr_rule(base_raw: dict) -> None:
    # head_lr_scale 1: a linear trial's only group is the head, whose lr the default scale (0.1) cuts;
    # head.refit none: the probe refit after the last epoch would give both optimizers the same head
    cfg = {
        "method": "linear",
        "optim.base_lr": 0.01,
        "optim.weight_decay": 1e-4,
        "optim.head_lr_scale": 1.0,
        "head.refit": "none",
    }
    adamw, sgd = ListReporter(), ListReporter()
    res_a = run_trial(cfg, task="mini/digits", spec=_spec(base_raw, optimizer="adamw"), reporter=adamw)
    res_s = run_trial(cfg, task="mini/digits", spec=_spec(base_raw), reporter=sgd)
    state = adamw.last_state["optimizer"]["state"]
    assert state and all({"exp_avg", "exp_avg_sq"} <= set(s) for s in state.values())  # AdamW's moments
    assert all("momentum_buffer" in s for s in sgd.last_state["optimizer"]["state"].values())
    # Peak lr: adamw uses base_lr as given, sgd scales it by batch/256 (warm-up 0: epoch 1 ends near peak).
    assert adamw.last_state["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4
    assert res_a.history[0]["lr"] <= 0.01 and res_a.history[0]["lr"] > 0.005
    assert res_s.history[0]["lr"] <= 0.01 * 64 / 256 and res_s.history[0]["lr"] > 0.001
    assert not torch.equal(res_a.trained_state["head.weight"], res_s.trained_state["head.weight"])


def test_batchnorm_head_trains_exports_its_statistics_and_resumes_exactly(base_raw: dict) -> None:
    spec = _spec(base_raw, epochs=3)
    cfg = {"method": "vpt", "prompt.length": 2, "head.norm": "batchnorm", "optim.base_lr": 1.0}
    straight = run_trial(cfg, task="mini/digits", spec=spec, reporter=ListReporter())
    assert {"head_norm.running_mean", "head_norm.running_var"} <= set(straight.trained_state)
    assert straight.trained_state["head_norm.num_batches_tracked"] > 0
    stopped = ListReporter(stop_after=1)
    run_trial(cfg, task="mini/digits", spec=spec, reporter=stopped)
    resumed = run_trial(
        cfg, task="mini/digits", spec=spec, reporter=ListReporter(), checkpoint=stopped.last_state
    )
    assert resumed.val_acc == straight.val_acc
    for k, v in straight.trained_state.items():
        assert torch.allclose(resumed.trained_state[k].double(), v.double(), atol=1e-5), k


@pytest.mark.parametrize("mask", ["sample", "batch"])
def test_dropout_mask_reaches_the_model(base_raw: dict, mask: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import vptsearch.models

    built = []
    real = vptsearch.models.build_model

    def spy(*a, **kw):
        built.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(vptsearch.models, "build_model", spy)
    spec = _spec(base_raw, epochs=1, prompt_dropout_mask=mask)
    run_trial({"method": "vpt", "prompt.length": 2}, task="mini/digits", spec=spec, reporter=ListReporter())
    assert built[0]["dropout_mask"] == mask and built[0]["prompt_dropout"] == 0.1


@pytest.mark.parametrize("key", sorted(PARAMS))
def test_the_final_phase_retrains_the_winner_with_every_parameter_it_searched(key: str) -> None:
    """Every spec parameter travels from the winning search trial to its final-phase configs (a
    hand-kept prefix list once dropped ``head.norm``: finals retrained without the head norm)."""
    from vptsearch.search._protocol import TrialRecord, final_configs, select

    config = {"method": "vpt", key: PARAMS[key].default, "task": "mini/digits", "phase": "search", "seed": 0}
    rec = TrialRecord.from_result("t1", config, {"val_acc": 0.5, "epoch": 2, "done": True}, False, 2)
    ((final, *_),) = final_configs(select([rec], ["mini/digits"]), (0, 1)).values()
    assert final[key] == PARAMS[key].default and final["phase"] == "final"
