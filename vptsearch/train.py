"""One trial as a plain function: build, initialise, train with the paper recipe, evaluate, report.

:func:`run_trial` needs no Ray: it reports each epoch to a :class:`Reporter` (Ray Tune's
``tune.report`` in production, :class:`ListReporter` in tests and notebooks) together with a tiny
checkpoint state (trained tensors + optimizer + epoch) that resumes the trial exactly where it
stopped. A NaN/inf loss ends the trial with status ``diverged`` instead of raising.

Phases: ``search`` trains on the task's search train split (train800) and evaluates the search
val split (val200) every epoch; ``final`` trains on the final train split (train800val200) and
evaluates the test split once, at the end. The test split is never read in the search phase.
"""

from __future__ import annotations

import functools
import json
import math
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from vptsearch._errors import ConfigError
from vptsearch._prompt_cache import PromptInitCache
from vptsearch._trial_config import PHASES as PHASES  # vptsearch.train.PHASES, as before
from vptsearch._trial_config import TrialConfig
from vptsearch.spec import SearchSpec

# A loss this many times the chance-level loss ln(C) counts as diverged: cross-entropy gradients are
# bounded, so a linear head under a huge lr drifts to enormous-but-finite logits instead of NaN.
DIVERGED_LOSS_FACTOR = 100.0
STATUSES = ("completed", "pruned", "diverged")
NMI_IMAGES = 128  # training images behind the per-epoch NMI (training.track_nmi)
# Steps between host reads of the on-device divergence flag (and always at the end of an epoch): a
# read per step stalls the GPU queue, and a diverged trial costs at most this many wasted steps.
DIVERGENCE_CHECK_EVERY = 25


class TrialStopped(Exception):
    """Raised by a reporter to stop a trial early (a scheduler decision); the trial ends ``pruned``."""


class Reporter(Protocol):
    """Receives one result per epoch; ``state`` (when given) is a checkpoint that resumes the trial."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None: ...


@dataclass
class ListReporter:
    """Keeps every result (and the last state) in memory; ``stop_after`` epochs emulates a pruner."""

    stop_after: int | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    last_state: dict[str, Any] | None = None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        self.results.append(dict(metrics))
        if state is not None:
            self.last_state = state
        if self.stop_after is not None and metrics.get("epoch", 0) >= self.stop_after:
            raise TrialStopped


@dataclass
class TrialResult:
    """What a finished trial produced. ``trained_state`` holds the trained tensors (for export)."""

    status: str
    epochs: int
    history: list[dict[str, Any]]
    trained_state: dict[str, torch.Tensor]
    val_acc: float | None = None
    test_acc: float | None = None
    tuned_percent: float = 0.0
    tuned_params: int = 0
    init: dict[str, Any] = field(default_factory=dict)


# --- cached per process: a Ray worker reuses its backbone across trials (reuse_actors=True) -------
@functools.lru_cache(maxsize=4)
def _load_backbone_cached(name: str, weights: str | None, architecture: str | None, kwargs_json: str) -> Any:
    from vptsearch.models import load_backbone

    kwargs = json.loads(kwargs_json) or None
    return load_backbone(name, weights=weights, architecture=architecture, model_kwargs=kwargs)


def get_backbone(spec: SearchSpec) -> Any:
    """The spec's backbone, loaded once per process and frozen (``build_model`` shares it with
    vpt/linear trials and deep-copies it for the methods that train or hook it)."""
    b = spec.backbone
    kwargs_json = json.dumps(dict(b.model_kwargs), sort_keys=True)
    return freeze_backbone(_load_backbone_cached(b.name, b.weights, b.architecture, kwargs_json))


def freeze_backbone(backbone: Any) -> Any:
    """``backbone`` (a ``Backbone`` record or a bare ViT) frozen in place: eval mode, no parameter
    requires grad. Loaders return eval models whose parameters still require grad; ``build_model``
    shares only a frozen backbone, so a worker's backbone is frozen once here rather than copied
    (~350 MB, ~0.3 s for ViT-B/16) by every vpt/linear trial. Idempotent and cheap."""
    model = getattr(backbone, "model", backbone)
    if isinstance(model, torch.nn.Module):
        if model.training:
            model.eval()
        for p in model.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
    return backbone


def model_options(config: dict[str, Any] | TrialConfig, spec: SearchSpec) -> dict[str, Any]:
    """``build_model`` options of a trial config (the method's parameters, defaults filled in)."""
    from vptsearch.models.methods import METHODS

    trial = config if isinstance(config, TrialConfig) else TrialConfig.from_sampled(config, spec.training)
    return METHODS.get(trial.method).build_options(trial)


def build_optimizer(
    params: list[torch.nn.Parameter], spec: SearchSpec, base_lr: float, weight_decay: float
) -> tuple[torch.optim.Optimizer, float]:
    """The trial's optimizer and its peak lr (``training.optimizer``; the lr rule of each below).

    ``sgd`` (VPT paper): momentum ``training.momentum``, peak lr ``base_lr * batch_size / 256``.
    ``adamw`` (PETL benchmarks): peak lr ``base_lr`` as given, decoupled ``weight_decay``.
    Both follow the same warm-up + cosine schedule (:func:`lr_at`).
    """
    tr = spec.training
    if tr.optimizer == "sgd":
        lr = base_lr * tr.batch_size / 256
        return torch.optim.SGD(params, lr=lr, momentum=tr.momentum, weight_decay=weight_decay), lr
    if tr.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=base_lr, weight_decay=weight_decay), base_lr
    raise ConfigError(f"training.optimizer: unknown {tr.optimizer!r}; accepted: sgd, adamw")


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


def checkpoint_epochs(spec: SearchSpec) -> frozenset[int]:
    """Epochs whose report carries a checkpoint: every ``training.checkpoint_every`` epochs, every
    ASHA rung (``grace_period * reduction_factor**k``: where the scheduler may stop the trial, so a
    stopped trial's last result has its state) and the last epoch (what the final phase exports).
    A trial resumed from an earlier checkpoint replays the epochs after it, exactly."""
    tr, sch = spec.training, spec.scheduler
    epochs = {tr.epochs}
    if tr.checkpoint_every > 0:
        epochs.update(range(tr.checkpoint_every, tr.epochs + 1, tr.checkpoint_every))
    if sch.type == "asha":
        rung = sch.grace_period
        while rung <= tr.epochs:
            epochs.add(rung)
            rung *= sch.reduction_factor
    return frozenset(epochs)


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


def lr_at(step: int, *, base: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to ``base`` then cosine decay to 0 (per optimisation step)."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """``training.precision`` for ``device``: ``auto`` is bf16 autocast on cuda, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def _autocast(device: torch.device, precision: str) -> Any:
    enabled = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _loader(
    task: str,
    split: str,
    spec: SearchSpec,
    backbone: Any,
    *,
    train: bool,
    seed: int,
    batch: int,
    device: torch.device | None = None,
) -> Any:
    """``device``: the split stays there as uint8 and batches are made there (see make_loader)."""
    from vptsearch.data import make_loader

    size = spec.training.image_size or backbone.image_size
    return make_loader(
        task,
        split,
        root=spec.data_root,
        batch_size=batch,
        image_size=size,
        mean=backbone.mean,
        std=backbone.std,
        train=train,
        seed=seed,
        device=device,
    )


def _init_images(task: str, split: str, spec: SearchSpec, backbone: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``training.init_images`` training images, preprocessed as for evaluation (for SPT)."""
    xs, ys, n = [], [], 0
    for x, y in _loader(
        task, split, spec, backbone, train=False, seed=0, batch=spec.training.eval_batch_size
    ):
        xs.append(x)
        ys.append(y)
        n += len(y)
        if n >= spec.training.init_images:
            break
    cap = spec.training.init_images
    return torch.cat(xs)[:cap], torch.cat(ys)[:cap]


# The PromptInitCache of each backbone trials ran on in this process (the spec's, loaded above, or a
# Ray worker's copy from the object store), keyed weakly on its model: a cache goes with its backbone.
_INIT_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, PromptInitCache] = weakref.WeakKeyDictionary()


def _init_cache_of(backbone: Any) -> PromptInitCache:
    cache = _INIT_CACHE.get(backbone.model)
    if cache is None:
        cache = _INIT_CACHE[backbone.model] = PromptInitCache()
    return cache


def _initialise_prompts(
    model: Any, trial: TrialConfig, task: str, split: str, spec: SearchSpec, backbone: Any
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """``model``'s prompts set by ``trial.prompt.init``: ``(init info, the images it read or None)``.
    SPT results come from the backbone's :class:`PromptInitCache` when an earlier trial on the same
    task, prompt shape and seed computed them (bit-identical to computing them again)."""
    from vptsearch.models import initialize_prompts

    assert trial.prompt is not None and model.prompt_tokens is not None  # method vpt
    strategy, prompts = trial.prompt.init, model.prompt_tokens
    if strategy == "random":  # nothing to cache: a seeded uniform draw
        return initialize_prompts(model, strategy, None, None, seed=trial.seed), None
    tr, b = spec.training, backbone
    key = (
        strategy, task, split, spec.data_root, tr.image_size, tr.init_images, tr.eval_batch_size,
        b.image_size, tuple(b.mean), tuple(b.std), tuple(prompts.shape), trial.seed,
    )  # fmt: skip
    cache = _init_cache_of(b)
    hit = cache.get(key)
    if hit is not None:
        with torch.no_grad():
            prompts.copy_(hit[0])
        return {**hit[1], "cached": True}, None
    images, labels = _init_images(task, split, spec, b)
    info = initialize_prompts(model, strategy, images, labels, seed=trial.seed)
    cache.put(key, prompts, info)
    return info, images


def run_trial(
    config: dict[str, Any],
    *,
    task: str,
    spec: SearchSpec,
    reporter: Reporter | None = None,
    checkpoint: dict[str, Any] | None = None,
    threads: int | None = None,
    backbone: Any = None,
) -> TrialResult:
    """Train one configuration on ``task`` and report every epoch (see the module docstring).

    ``config``: the sampled parameters (``method``, ``prompt.length``, ``optim.base_lr``, ...) plus
    optional ``seed`` (default 0) and ``phase`` (``search`` | ``final``). ``checkpoint``: a state
    previously reported with a result; training resumes after its epoch. ``backbone``: an already
    built backbone (a Ray worker's copy from the object store); default: the spec's, loaded once.
    """
    from vptsearch.data import get_task
    from vptsearch.models import build_model, parameter_accounting, prompt_nmi

    trial = TrialConfig.from_sampled(config, spec.training)
    phase, method, seed = trial.phase, trial.method, trial.seed
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    info = get_task(task, spec.data_root)
    train_split, eval_split = info.search_splits if phase == "search" else info.final_splits
    tr = spec.training

    # The worker's backbone (cached or from the object store): frozen, so vpt/linear share it.
    backbone = freeze_backbone(backbone) if backbone is not None else get_backbone(spec)
    torch.manual_seed(seed)
    device = trial_device(spec)
    model = build_model(backbone, info.num_classes, method, **model_options(trial, spec)).to(device)
    init_info: dict[str, Any] = {}
    images: torch.Tensor | None = None
    if trial.prompt is not None and checkpoint is None:
        init_info, images = _initialise_prompts(model, trial, task, train_split, spec, backbone)
    nmi_images = None
    if tr.track_nmi and trial.prompt is not None:
        # A fixed set of training images, so the per-epoch values are comparable across epochs.
        nmi_images = (images if images is not None else _init_images(task, train_split, spec, backbone)[0])
        nmi_images = nmi_images[:NMI_IMAGES]

    train_loader = _loader(
        task, train_split, spec, backbone, train=True, seed=seed, batch=tr.batch_size, device=device
    )
    trained = [p for p in model.parameters() if p.requires_grad]
    opt, lr = build_optimizer(trained, spec, trial.base_lr, trial.weight_decay)
    steps_per_epoch = max(1, len(train_loader))
    total_steps, warmup_steps = tr.epochs * steps_per_epoch, tr.warmup_epochs * steps_per_epoch

    loss_limit = DIVERGED_LOSS_FACTOR * math.log(max(2, info.num_classes))
    start_epoch, history = 0, []
    if checkpoint is not None:
        model.load_trained_state_dict(checkpoint["trained"])
        opt.load_state_dict(checkpoint["optimizer"])
        start_epoch, history = int(checkpoint["epoch"]), list(checkpoint.get("history", []))
        init_info = dict(checkpoint.get("init", {}))
    accounting = parameter_accounting(model)
    common = {"phase": phase, "seed": seed, "tuned_percent": accounting["tuned_percent"]}

    def state(epoch: int) -> dict[str, Any]:
        return {
            "trained": _cpu(model.trained_state_dict()),  # checkpoints load anywhere (driver: CPU)
            "optimizer": _host_copy(opt.state_dict()),
            "epoch": epoch,
            "history": list(history),  # a snapshot: reporters may keep states in memory
            "init": init_info,
        }

    status, val_acc, test_acc = "completed", None, None
    checkpointed = checkpoint_epochs(spec)
    eval_loader = None  # the search val split (every epoch) or the final test split (last epoch)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, tr.epochs + 1):
            t0 = time.perf_counter()
            train_loader.set_epoch(epoch - 1)  # resumes the same shuffle order as an uninterrupted run
            torch.manual_seed(seed * 100_003 + epoch)  # and the same prompt-dropout masks
            model.train()
            # Sums and the divergence flag stay on the device: no host read per step (see
            # DIVERGENCE_CHECK_EVERY), so the CPU keeps queueing work while the GPU computes.
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            bad = torch.zeros((), dtype=torch.bool, device=device)
            seen, diverged = 0, False
            for i, (x, y) in enumerate(train_loader):
                step = (epoch - 1) * steps_per_epoch + i
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, base=lr, warmup_steps=warmup_steps, total_steps=total_steps)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with _autocast(device, tr.precision):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                loss_d = loss.detach()
                bad |= ~torch.isfinite(loss_d) | (loss_d > loss_limit)
                if (i + 1) % DIVERGENCE_CHECK_EVERY == 0 and bool(bad):
                    diverged = True
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss_d.double() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
            diverged = diverged or bool(bad)
            metrics: dict[str, Any] = {**common, "epoch": epoch, "lr": opt.param_groups[0]["lr"]}
            if diverged:
                # Recorded, reported once, and the trial ends; the search goes on.
                status = "diverged"
                metrics.update(diverged=1, train_loss=float("nan"), val_acc=0.0)
                history.append(metrics)
                if reporter is not None:
                    reporter.report(metrics, None)
                break
            metrics.update(
                diverged=0, train_loss=float(loss_sum) / max(1, seen), train_acc=int(correct) / max(1, seen)
            )
            if nmi_images is not None:
                per_layer = prompt_nmi(model, nmi_images)
                metrics["nmi_mean"] = sum(per_layer) / len(per_layer)
                metrics.update({f"nmi_layer{i}": v for i, v in enumerate(per_layer)})
            if phase == "search" or epoch == tr.epochs:
                if eval_loader is None:  # built once: re-reading the manifest every epoch is wasted I/O
                    # val200 lives on the device (read every epoch); a test split, read once at the
                    # end and up to tens of thousands of images, stays on the host.
                    eval_loader = _loader(
                        task, eval_split, spec, backbone, train=False, seed=0, batch=tr.eval_batch_size,
                        device=device if phase == "search" else None,
                    )  # fmt: skip
                acc, loss_mean = evaluate(model, eval_loader, tr.precision)
                if phase == "search":
                    val_acc = acc
                    metrics.update(val_acc=acc, val_loss=loss_mean)
                else:
                    test_acc = acc
                    metrics.update(test_acc=acc, test_loss=loss_mean)
            metrics["epoch_seconds"] = time.perf_counter() - t0
            history.append(metrics)
            if reporter is not None:
                reporter.report(metrics, state(epoch) if epoch in checkpointed else None)
    except TrialStopped:
        status = "pruned"
    return TrialResult(
        status=status,
        epochs=epoch,
        history=history,
        trained_state=_cpu(model.trained_state_dict()),
        val_acc=val_acc,
        test_acc=test_acc,
        tuned_percent=accounting["tuned_percent"],
        tuned_params=accounting["tuned"],
        init=init_info,
    )
