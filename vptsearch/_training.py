"""The optimisation pieces of a trial: device and precision, optimizer and lr schedule, one training
epoch, evaluation, and host copies of what a checkpoint keeps. :func:`vptsearch.train.run_trial`
puts them together; none of them knows about tasks, phases or reporters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vptsearch._errors import ConfigError
from vptsearch.spec import SearchSpec

# A loss this many times the chance-level loss ln(C) counts as diverged: cross-entropy gradients are
# bounded, so a linear head under a huge lr drifts to enormous-but-finite logits instead of NaN.
DIVERGED_LOSS_FACTOR = 100.0
# Steps between host reads of the on-device divergence flag (and always at the end of an epoch): a
# read per step stalls the GPU queue, and a diverged trial costs at most this many wasted steps.
DIVERGENCE_CHECK_EVERY = 25


def trial_device(spec: SearchSpec) -> torch.device:
    """Where a trial trains: ``training.device``; ``auto`` is cuda when the trial holds a GPU.

    Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPU(s) it assigned to the trial, so ``cuda`` here is that
    GPU; a trial without ``resources.gpu`` stays on the CPU even on a GPU node (it reserved none).
    """
    want = spec.training.device
    if want == "auto":
        want = "cuda" if spec.resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "training.device: cuda requested but torch sees no GPU here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use device: auto or cpu"
        )
    return torch.device(want)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``training.precision`` for ``device``: ``auto`` is bf16 autocast on cuda, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def _autocast(device: torch.device, precision: str) -> Any:
    enabled = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def build_optimizer(
    params: list[torch.nn.Parameter] | list[dict[str, Any]],
    spec: SearchSpec,
    base_lr: float,
    weight_decay: float,
) -> tuple[torch.optim.Optimizer, float]:
    """The trial's optimizer and its peak lr (``training.optimizer``; the lr rule of each below).

    ``sgd`` (VPT paper): momentum ``training.momentum``, peak lr ``base_lr * batch_size / 256``.
    ``adamw`` (PETL benchmarks): peak lr ``base_lr`` as given, decoupled ``weight_decay``.
    Both follow the same warm-up + cosine schedule (:func:`lr_at`). ``params``: parameters, or
    param groups (:func:`param_groups`) whose ``lr_scale`` multiplies the peak lr of their group.
    """
    tr = spec.training
    if tr.optimizer == "sgd":
        lr = base_lr * tr.batch_size / 256
        return torch.optim.SGD(params, lr=lr, momentum=tr.momentum, weight_decay=weight_decay), lr
    if tr.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=base_lr, weight_decay=weight_decay), base_lr
    raise ConfigError(f"training.optimizer: unknown {tr.optimizer!r}; accepted: sgd, adamw")


def param_groups(model: torch.nn.Module, head_lr_scale: float) -> list[dict[str, Any]]:
    """The trained parameters of ``model`` as optimizer groups: the rest first, then the head
    (``head.*``) with ``lr_scale`` ``head_lr_scale`` (``optim.head_lr_scale``).

    A scale of 1 keeps one group, so an optimizer state saved before the head had its own group
    still loads. Weight decay and the schedule are the optimizer's and apply to every group.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if head_lr_scale == 1.0:
        return [{"params": [p for _, p in named], "lr_scale": 1.0}]
    head = [p for n, p in named if n.startswith("head.")]
    rest = [p for n, p in named if not n.startswith("head.")]
    groups = [{"params": rest, "lr_scale": 1.0}] if rest else []
    return groups + ([{"params": head, "lr_scale": float(head_lr_scale)}] if head else [])


def lr_at(step: int, *, base: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to ``base`` then cosine decay to 0 (per optimisation step)."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass(frozen=True)
class EpochStats:
    """What one training epoch measured: mean loss and accuracy over its samples (NaN if diverged)."""

    loss: float
    accuracy: float
    diverged: bool


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    opt: torch.optim.Optimizer,
    *,
    lr_of: Callable[[int], float],
    first_step: int,
    loss_limit: float,
    precision: str = "fp32",
) -> EpochStats:
    """One pass of ``model`` over ``batches`` on the model's device; step ``first_step + i`` trains
    at lr ``lr_of(first_step + i)``. A loss that is not finite or above ``loss_limit`` ends the pass
    as diverged (noticed within :data:`DIVERGENCE_CHECK_EVERY` steps, and at the end)."""
    model.train()
    device = next(model.parameters()).device
    # Sums and the divergence flag stay on the device: no host read per step (see
    # DIVERGENCE_CHECK_EVERY), so the CPU keeps queueing work while the GPU computes.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    seen = 0
    for i, (x, y) in enumerate(batches):
        lr = lr_of(first_step + i)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss_d = loss.detach()
        bad |= ~torch.isfinite(loss_d) | (loss_d > loss_limit)
        if (i + 1) % DIVERGENCE_CHECK_EVERY == 0 and bool(bad):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss_d.double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    if bool(bad):
        return EpochStats(float("nan"), float("nan"), diverged=True)
    return EpochStats(float(loss_sum) / max(1, seen), int(correct) / max(1, seen), diverged=False)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    precision: str = "fp32",
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` over ``batches``, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    # Sums stay on the device: one host read at the end instead of two per batch.
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, precision):
            logits = model(x)
        loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        total += len(y)
    return int(correct) / max(1, total), float(loss) / max(1, total)


@torch.inference_mode()
def recompute_norm_statistics(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    max_images: int,
    precision: str = "fp32",
) -> int:
    """Precise BN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): set the head norm's running
    statistics to the mean and (unbiased) variance of the eval-mode features of the first
    ``max_images`` images of ``batches``. Returns how many images it read (0: nothing to set).

    Training keeps an exponential average of *train-mode* features: prompt dropout changes them
    and fast-moving prompts leave the average behind, so eval-mode features met mis-scaled
    statistics (sup/digits, VPT-deep: val 82.5 % with the running averages, 86.5 % recomputed
    from 256 images; benchmarks/README.md, "Prompt dropout on more tasks, and precise BN").
    """
    from vptsearch.models.tuned import HeadBatchNorm

    norm = getattr(model, "head_norm", None)
    if not isinstance(norm, HeadBatchNorm) or max_images <= 0:
        return 0
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(norm.num_features, dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    seen = 0

    def take(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double()
        total.add_(x.sum(0))
        squares.add_((x * x).sum(0))

    hook = norm.register_forward_pre_hook(take)
    try:
        for x, _ in batches:
            x = x[: max_images - seen].to(device, non_blocking=True)
            with _autocast(device, precision):
                model(x)
            seen += len(x)
            if seen >= max_images:
                break
    finally:
        hook.remove()
    if seen < 2:
        return 0
    mean = total / seen
    var = (squares - seen * mean * mean).clamp_min(0) / (seen - 1)
    norm.set_statistics(mean.float(), var.float())
    return seen


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in tensors.items()}


def _host_copy(obj: Any) -> Any:
    """``obj`` (an optimizer state dict) with every tensor copied to the host: the live state holds
    the momentum buffers themselves, which the next step changes in place under a kept state."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return obj
