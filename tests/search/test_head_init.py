"""head.init (probe / random / zero) and optim.head_lr_scale: what a trial starts from and trains with."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vptsearch.probe import probe_task
from vptsearch.spec import spec_from_dict
from vptsearch.train import ListReporter, get_backbone, prepare_trial, run_trial


@pytest.fixture()
def spec(base_raw: dict):
    return spec_from_dict({**base_raw, "training": {"epochs": 2, "warmup_epochs": 1, "batch_size": 64}})


def _loss_acc(loop, split: str) -> tuple[float, float]:
    """Eval-mode cross-entropy and accuracy of the prepared model on ``split``."""
    model = loop.model.eval()
    loader = loop.data.loader(split, train=False, seed=0, batch=256, device=None)
    losses, hits, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            losses += float(F.cross_entropy(logits, y, reduction="sum"))
            hits += int((logits.argmax(1) == y).sum())
            n += len(y)
    return losses / n, hits / n


@pytest.mark.parametrize("norm", ["batchnorm", "none"])
def test_linear_with_a_probe_head_and_no_training_is_the_launch_probe(spec, norm: str) -> None:
    # final phase: C chosen on train800/val200, refit on train800val200, scored on test: the probe
    cfg = {"method": "linear", "head.init": "probe", "head.norm": norm, "phase": "final"}
    loop = prepare_trial(cfg, task="mini/digits", spec=spec)
    probe = probe_task(get_backbone(spec), "mini/digits", root=spec.data_root, cache=False)
    head = loop.init["head"]
    assert head["kind"] == "probe" and head["C"] == probe["C"] and head["train_split"] == "train800val200"
    assert head["val_acc"] == pytest.approx(probe["val_acc"])
    _, test_acc = _loss_acc(loop, "test")
    assert test_acc == pytest.approx(probe["test_acc"], abs=0.002)  # float32 head vs float64 sklearn


@pytest.mark.parametrize("init", ["random", "spt-mean"])
def test_the_head_fitted_on_the_initialised_prompts_starts_at_the_fits_loss(spec, init: str) -> None:
    cfg = {"method": "vpt", "prompt.length": 4, "prompt.init": init, "head.norm": "batchnorm"}
    loop = prepare_trial(cfg, task="mini/textures", spec=spec)
    head = loop.init["head"]
    loss, _ = _loss_acc(loop, "train800")
    assert loss <= head["train_loss"] + 1e-3  # the model gives the fit's own logits
    # and that is far below where a random head starts on the same prompts
    random_loss, _ = _loss_acc(
        prepare_trial({**cfg, "head.init": "random"}, task="mini/textures", spec=spec), "train800"
    )
    assert loss < random_loss - 0.3


def test_random_and_zero_heads_are_what_they_say(spec) -> None:
    base = {"method": "linear", "optim.base_lr": 1.0}
    zero = prepare_trial({**base, "head.init": "zero"}, task="mini/digits", spec=spec)
    assert zero.init["head"] == {"kind": "zero"}
    assert not zero.model.head.weight.any() and not zero.model.head.bias.any()
    rnd = prepare_trial({**base, "head.init": "random"}, task="mini/digits", spec=spec)
    torch.manual_seed(0)  # nn.Linear's own draw under the trial's seed, as before head.init existed
    ref = torch.nn.Linear(rnd.model.embed_dim, 10)
    assert torch.equal(rnd.model.head.weight, ref.weight) and rnd.init["head"] == {"kind": "random"}


def test_head_lr_scale_reaches_the_optimizer_groups(spec) -> None:
    cfg = {"method": "vpt", "prompt.length": 2, "optim.head_lr_scale": 0.1, "optim.base_lr": 2.0}
    loop = prepare_trial(cfg, task="mini/digits", spec=spec)
    groups = loop.opt.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    assert groups[0]["params"] == [loop.model.prompt_tokens]
    assert groups[1]["params"] == [loop.model.head.weight, loop.model.head.bias]
    loop.run(None)
    # after training the schedule has set both groups, the head's at a tenth of the prompts' lr
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    one = prepare_trial({**cfg, "optim.head_lr_scale": 1.0}, task="mini/digits", spec=spec)
    assert len(one.opt.param_groups) == 1  # scale 1: one group, as every checkpoint before had


def test_the_fit_is_computed_once_per_worker_and_reported(spec, monkeypatch: pytest.MonkeyPatch) -> None:
    import vptsearch._head_init as head_init

    calls = []
    real = head_init._fit
    monkeypatch.setattr(head_init, "_fit", lambda *a: calls.append(1) or real(*a))
    cfg = {"method": "vpt", "prompt.length": 3, "prompt.init": "random", "seed": 5}
    rep = ListReporter()
    first = run_trial(cfg, task="mini/digits", spec=spec, reporter=rep)
    second = run_trial({**cfg, "optim.base_lr": 3.0}, task="mini/digits", spec=spec)  # same prompts
    third = run_trial({**cfg, "seed": 6}, task="mini/digits", spec=spec)  # other random prompts
    assert len(calls) == 2
    assert (first.init["head"]["cached"], second.init["head"]["cached"], third.init["head"]["cached"]) == (
        False,
        True,
        False,
    )
    assert all(r["head_init_seconds"] == first.init["head"]["seconds"] >= 0 for r in rep.results)


def test_resume_keeps_the_fitted_head_and_its_record(spec) -> None:
    cfg = {"method": "vpt", "prompt.length": 2, "optim.head_lr_scale": 0.5, "seed": 2}
    stopped = ListReporter(stop_after=1)
    first = run_trial(cfg, task="mini/digits", spec=spec, reporter=stopped)
    assert first.status == "pruned" and stopped.last_state is not None
    resumed = run_trial(cfg, task="mini/digits", spec=spec, checkpoint=stopped.last_state)
    straight = run_trial(cfg, task="mini/digits", spec=spec)
    assert resumed.init["head"] == first.init["head"]  # from the checkpoint, not fitted again
    assert resumed.val_acc == straight.val_acc
    for k, v in straight.trained_state.items():
        assert (resumed.trained_state[k] - v).abs().max() < 1e-5, k


def test_an_unknown_head_init_is_one_line_naming_it(base_raw: dict) -> None:
    from vptsearch._errors import ConfigError

    raw = {**base_raw, "params": {**base_raw["params"], "head.init": "lsq"}}
    expected = r"params\.head\.init: expected one of probe, random, zero, got 'lsq'"
    with pytest.raises(ConfigError, match=expected) as e:
        spec_from_dict(raw)
    assert "\n" not in str(e.value)
