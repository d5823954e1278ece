"""One trial as a plain function: build, initialise, train with the paper recipe, evaluate, report.

:func:`run_trial` needs no Ray: it reports each epoch to a :class:`Reporter` (Ray Tune's
``tune.report`` in production, :class:`ListReporter` in tests and notebooks) together with a tiny
checkpoint state (trained tensors + optimizer + epoch) that resumes the trial exactly where it
stopped. A NaN/inf loss ends the trial with status ``diverged`` instead of raising.

Phases: ``search`` trains on the task's search train split (train800) and evaluates the search
val split (val200) every epoch; ``final`` trains on the final train split (train800val200) and
evaluates the test split once, at the end. The test split is never read in the search phase.

The parts: :class:`~vptsearch._trial_config.TrialConfig` reads the sampled config once; the
optimisation steps (optimizer, lr schedule, :func:`train_epoch`, :func:`evaluate`) are in
``vptsearch/_training.py``, the epoch loop and the reporters in ``vptsearch/_trial_loop.py``; a
backbone's SPT prompts are cached in a :class:`~vptsearch._prompt_cache.PromptInitCache`.
"""

from __future__ import annotations

import functools
import json
import weakref
from typing import Any

import torch

from vptsearch._head_init import initialise_head, refit_c
from vptsearch._prompt_cache import PromptInitCache
from vptsearch._training import (  # benchmarks/bench_gpu_sim.py mirrors a trial with _cpu/_host_copy
    DIVERGED_LOSS_FACTOR,
    DIVERGENCE_CHECK_EVERY,
    _cpu,  # noqa: F401
    _host_copy,  # noqa: F401
    build_optimizer,
    evaluate,
    lr_at,
    resolve_precision,
    train_epoch,
    trial_device,
)
from vptsearch._trial_config import PHASES, TrialConfig
from vptsearch._trial_loop import (
    EpochLoop,
    ListReporter,
    Reporter,
    TrialData,
    TrialResult,
    TrialStopped,
    checkpoint_epochs,
    trial_loader,
)
from vptsearch.spec import SearchSpec

__all__ = [
    "DIVERGED_LOSS_FACTOR",
    "DIVERGENCE_CHECK_EVERY",
    "PHASES",
    "ListReporter",
    "Reporter",
    "TrialResult",
    "TrialStopped",
    "build_optimizer",
    "checkpoint_epochs",
    "evaluate",
    "freeze_backbone",
    "get_backbone",
    "lr_at",
    "model_options",
    "prepare_trial",
    "resolve_precision",
    "run_trial",
    "train_epoch",
    "trial_device",
]

NMI_IMAGES = 128  # training images behind the per-epoch NMI (training.track_nmi)


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


# The PromptInitCache of each backbone trials ran on in this process (the spec's, loaded above, or a
# Ray worker's copy from the object store), keyed weakly on its model: a cache goes with its backbone.
_INIT_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, PromptInitCache] = weakref.WeakKeyDictionary()


def _init_cache_of(backbone: Any) -> PromptInitCache:
    cache = _INIT_CACHE.get(backbone.model)
    if cache is None:
        cache = _INIT_CACHE[backbone.model] = PromptInitCache()
    return cache


def model_options(config: dict[str, Any] | TrialConfig, spec: SearchSpec) -> dict[str, Any]:
    """``build_model`` options of a trial config (the method's parameters, defaults filled in)."""
    from vptsearch.models.methods import METHODS

    trial = config if isinstance(config, TrialConfig) else TrialConfig.from_sampled(config, spec.training)
    return METHODS.get(trial.method).build_options(trial)


def _init_images(task: str, split: str, spec: SearchSpec, backbone: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``training.init_images`` training images, preprocessed as for evaluation (for SPT)."""
    xs, ys, n = [], [], 0
    for x, y in trial_loader(
        task, split, spec, backbone, train=False, seed=0, batch=spec.training.eval_batch_size
    ):
        xs.append(x)
        ys.append(y)
        n += len(y)
        if n >= spec.training.init_images:
            break
    cap = spec.training.init_images
    return torch.cat(xs)[:cap], torch.cat(ys)[:cap]


def _initialise_prompts(
    model: Any, trial: TrialConfig, data: TrialData
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """``model``'s prompts set by ``trial.prompt.init``: ``(init info, the images it read or None)``.
    SPT results come from the backbone's :class:`PromptInitCache` when an earlier trial on the same
    task, prompt shape and seed computed them (bit-identical to computing them again)."""
    from vptsearch.models import initialize_prompts

    assert trial.prompt is not None and model.prompt_tokens is not None  # method vpt
    strategy, prompts = trial.prompt.init, model.prompt_tokens
    if strategy == "random":  # nothing to cache: a seeded uniform draw
        return initialize_prompts(model, strategy, None, None, seed=trial.seed), None
    tr, b = data.spec.training, data.backbone
    key = (
        strategy, data.task, data.train_split, data.spec.data_root, tr.image_size, tr.init_images,
        tr.eval_batch_size, b.image_size, tuple(b.mean), tuple(b.std), tuple(prompts.shape), trial.seed,
    )  # fmt: skip
    cache = _init_cache_of(b)
    hit = cache.get(key)
    if hit is not None:
        with torch.no_grad():
            prompts.copy_(hit[0])
        return {**hit[1], "cached": True}, None
    images, labels = _init_images(data.task, data.train_split, data.spec, b)
    info = initialize_prompts(model, strategy, images, labels, seed=trial.seed)
    cache.put(key, prompts, info)
    return info, images


def prepare_trial(
    config: dict[str, Any],
    *,
    task: str,
    spec: SearchSpec,
    checkpoint: dict[str, Any] | None = None,
    backbone: Any = None,
) -> EpochLoop:
    """A trial ready for its first epoch: the model built, its prompts and head initialised
    (``prompt.init``, ``head.init``), or the checkpoint's state loaded. ``.run(reporter)`` trains
    it; ``.model`` is the model as it starts (what tests and notebooks inspect)."""
    from vptsearch.data import get_task
    from vptsearch.models import build_model

    trial = TrialConfig.from_sampled(config, spec.training)
    info = get_task(task, spec.data_root)
    train_split, eval_split = info.search_splits if trial.phase == "search" else info.final_splits
    # The worker's backbone (cached or from the object store): frozen, so vpt/linear share it.
    backbone = freeze_backbone(backbone) if backbone is not None else get_backbone(spec)
    data = TrialData(task, spec, backbone, info.num_classes, train_split, eval_split, trial_device(spec))
    torch.manual_seed(trial.seed)
    model = build_model(backbone, info.num_classes, trial.method, **model_options(trial, spec))
    model = model.to(data.device)
    init_info: dict[str, Any] = {}
    images = None
    if trial.prompt is not None and checkpoint is None:
        init_info, images = _initialise_prompts(model, trial, data)
    if checkpoint is None:  # the head last: head.init probe fits it on the initialised prompts
        head = initialise_head(model, trial, data, info.search_splits)
        init_info = {**init_info, "head": head}
        c = refit_c(model, trial, data, info.search_splits, head)
        if c is not None:  # the refit after the last epoch uses it (a resumed trial reads it back)
            init_info["head_refit"] = {"C": c}
    nmi_images = None
    if spec.training.track_nmi and trial.prompt is not None:
        # A fixed set of training images, so the per-epoch values are comparable across epochs.
        if images is None:
            images = _init_images(task, train_split, spec, backbone)[0]
        nmi_images = images[:NMI_IMAGES]
    loop = EpochLoop(trial, spec, model, data, nmi_images, init_info)
    if checkpoint is not None:
        loop.resume(checkpoint)
    return loop


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
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    loop = prepare_trial(config, task=task, spec=spec, checkpoint=checkpoint, backbone=backbone)
    return loop.run(reporter)
