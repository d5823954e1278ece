"""Where a trial trains (training.device / resources.gpu) and bf16 autocast (training.precision)."""

from __future__ import annotations

import pytest
import torch

from vptsearch._errors import ConfigError
from vptsearch.spec import spec_from_dict
from vptsearch.train import ListReporter, run_trial, trial_device


def _spec(base_raw: dict, training: dict | None = None, gpu: float = 0.0):
    tr = {"epochs": 2, "warmup_epochs": 0, "batch_size": 64, **(training or {})}
    return spec_from_dict({**base_raw, "training": tr, "resources": {"cpu": 1, "gpu": gpu}})


def test_auto_trains_on_cpu_without_a_gpu_reservation(base_raw, monkeypatch) -> None:
    # Even on a GPU machine: a trial that reserved no GPU must not take one (Ray gave it none).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trial_device(_spec(base_raw)) == torch.device("cpu")
    assert trial_device(_spec(base_raw, gpu=0.5)) == torch.device("cuda")


def test_cuda_without_a_gpu_fails_with_one_line(base_raw, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"training\.device: cuda requested but torch sees no GPU"):
        trial_device(_spec(base_raw, {"device": "cuda"}, gpu=1))
    assert trial_device(_spec(base_raw, gpu=1)) == torch.device("cpu")  # auto falls back


@pytest.mark.parametrize(
    ("training", "gpu", "message"),
    [
        ({"device": "tpu"}, 0, r"training\.device: unknown 'tpu'; accepted: auto, cpu, cuda"),
        ({"precision": "fp16"}, 0, r"training\.precision: unknown 'fp16'; accepted: auto, fp32, bf16"),
        ({"device": "cuda"}, 0, r"training\.device: cuda needs resources\.gpu > 0"),
    ],
)
def test_bad_device_or_precision_is_refused(base_raw, training, gpu, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _spec(base_raw, training, gpu=gpu)


def test_bf16_autocast_trains_and_keeps_fp32_tensors(base_raw) -> None:
    # The random head: a probe-fitted head's large weights make the prompts' steps large enough
    # that bf16 rounding compounds over the epochs (max prompt difference 1.40 measured with it).
    cfg = {
        "method": "vpt",
        "prompt.length": 2,
        "optim.base_lr": 2.0,
        "head.init": "random",
        "optim.head_lr_scale": 1.0,
    }
    fp32 = run_trial(cfg, task="mini/textures", spec=_spec(base_raw), reporter=ListReporter())
    bf16 = run_trial(
        cfg, task="mini/textures", spec=_spec(base_raw, {"precision": "bf16"}), reporter=ListReporter()
    )
    assert bf16.status == "completed" and bf16.val_acc is not None
    assert all(v.dtype == torch.float32 for v in bf16.trained_state.values())
    # Same init and data order: bf16 rounding moves the result a little, not to a different model.
    assert abs(bf16.val_acc - fp32.val_acc) < 0.15
    diff = (bf16.trained_state["prompt_tokens"] - fp32.trained_state["prompt_tokens"]).abs().max()
    assert 0 < float(diff) < 0.5
