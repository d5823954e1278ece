"""How a trial's linear head starts (``head.init``), before its first training step.

- ``random``: ``nn.Linear``'s own draw (seeded by the trial's seed): what every trial did before
  ``head.init`` existed, and what the papers' recipes assume.
- ``zero``: weights and bias all zero (every class equally likely; the head learns from there).
- ``probe`` (LP-FT, Kumar et al. 2022: fit the linear head first, then tune the rest from there):
  the head is fitted with the probe's own solver (:mod:`vptsearch.probe`: a standardised L2
  logistic regression, C chosen by accuracy on the search splits) on the features of the model as
  initialised, prompts already at their init. With ``head.norm: batchnorm`` the standardisation is
  written into the BatchNorm's running statistics and the fit into the head, so it drops in as
  is; without a head norm the standardisation is folded into the head's weights and bias.

Why: the frozen features are ill-conditioned for an SGD head (a large constant offset, and the
structured tasks want large weights), so a head trained from a random start needs hundreds of
epochs to reach what the probe computes in a second (measured in docs/results.md's convergence
section); until it gets there the prompts' contribution hardly shows in the val score.

Only the search splits are ever read for C (fit on the search train split, score on its val
split); a final-phase trial refits with that C on its own train split. The test split is never
read. A worker keeps the last fits per backbone: trials with the same task and the same initial
prompts (any random-init trial of one seed and shape, any cached SPT init) share one fit.

``head.refit: probe`` ends the trial the way it began: after the last epoch's training step, the
head is refitted by the same solver on the *trained* model's eval-mode features of the trial's
train split, with the C chosen at init (the init fit's own, or one chosen the same way on the
initialised model when the head started otherwise), so the trained prompts meet the head the
probe would give them. Why: the head trained beside the prompts (SGD under prompt dropout, at a
tenth of their lr) ends below that fit where the task wants large, precise weights: MAE
dsprites_loc, the quickstart's winner (p 20, random), final test 32.4 / 32.3 % with the trained
head, 35.0 / 34.8 % refitted (seeds 0 / 1), against 34.9 / 35.0 % for the same fit on the
prompts as initialised; digits and textures moved by 0 and +0.5 points (docs/search.md,
"The head after the last epoch"). C stays the one chosen at init because a final-phase model has
trained on val200: choosing C on it again would read a split the model has fitted.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from vptsearch._catalogue import HEAD_INITS, HEAD_REFITS
from vptsearch._errors import ConfigError
from vptsearch._hashing import sha256_bytes
from vptsearch._trial_config import TrialConfig
from vptsearch.models.tuned import HeadBatchNorm

__all__ = ["HEAD_INITS", "HEAD_REFITS", "initialise_head", "load_fit", "refit_c", "refit_head"]

FIT_CACHE_SIZE = 32
# A class the fit never saw (absent from the train split) gets zero weights and a bias this far
# under the lowest fitted one: never predicted, as in scikit-learn, but still finite and trainable.
ABSENT_CLASS_MARGIN = 10.0

# Per backbone model (weakly keyed: the cache goes with its backbone): key -> (LinearFit, info).
_FITS: weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict[Hashable, tuple[Any, dict[str, Any]]]] = (
    weakref.WeakKeyDictionary()
)


def initialise_head(
    model: Any, trial: TrialConfig, data: Any, search_splits: tuple[str, str]
) -> dict[str, Any]:
    """Set ``model``'s head by ``trial.head_init``; returns what it did (kept in the trial's init
    info and checkpoints). ``data``: the trial's :class:`~vptsearch._trial_loop.TrialData`."""
    kind = trial.head_init
    if kind not in HEAD_INITS:
        raise ConfigError(f"head.init: unknown {kind!r}; accepted: {', '.join(HEAD_INITS)}")
    if kind == "random":  # nn.Linear's draw, made when the model was built
        return {"kind": "random"}
    if kind == "zero":
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.zero_()
        return {"kind": "zero"}
    t0 = time.perf_counter()
    fit, info = _cached_fit(model, data, search_splits)
    load_fit(model, fit)
    return {**info, "seconds": round(time.perf_counter() - t0, 3)}


def refit_c(
    model: Any, trial: TrialConfig, data: Any, search_splits: tuple[str, str], head: dict[str, Any]
) -> float | None:
    """The C of the trial's end-of-training refit (``None``: ``head.refit: none``), decided at init:
    the init fit's C (``head``: what :func:`initialise_head` returned), or, for a head that started
    random or zero, the C the probe's rule picks on the initialised model's features."""
    if trial.head_refit not in HEAD_REFITS:
        raise ConfigError(f"head.refit: unknown {trial.head_refit!r}; accepted: {', '.join(HEAD_REFITS)}")
    if trial.head_refit == "none":
        return None
    if head.get("kind") == "probe":
        return float(head["C"])
    return float(_cached_fit(model, data, search_splits)[1]["C"])


def refit_head(model: Any, batches: Any, c: float) -> dict[str, Any]:
    """``head.refit: probe``: fit the probe's solver with ``c`` on ``model``'s eval-mode features of
    ``batches`` (the trial's train split, unaugmented) and load it as the head (and, with a head
    norm, as its statistics). Returns what it did: the trial's record of the refit."""
    from vptsearch._linear_probe import extract_features, fit_standardised

    t0 = time.perf_counter()
    x, y = extract_features(model, batches)
    fit = fit_standardised((x, y), c)
    load_fit(model, fit)
    loss = _log_loss(fit, x.numpy().astype(np.float64), y.numpy())
    return {"C": c, "images": len(y), "train_loss": loss, "seconds": round(time.perf_counter() - t0, 3)}


def _cached_fit(model: Any, data: Any, search_splits: tuple[str, str]) -> tuple[Any, dict[str, Any]]:
    """:func:`_fit`, or the worker's earlier fit of the same features (see :func:`_fit_key`)."""
    key = _fit_key(model, data, search_splits)
    cache = _cache_of(data.backbone)
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        fit, info = hit
        return fit, {**info, "cached": True}
    fit, info = _fit(model, data, search_splits)
    cache[key] = (fit, info)
    while len(cache) > FIT_CACHE_SIZE:
        cache.popitem(last=False)
    return fit, {**info, "cached": False}


def _fit(model: Any, data: Any, search_splits: tuple[str, str]) -> tuple[Any, dict[str, Any]]:
    """The probe's protocol on the initialised model's features: C on the search splits, then the
    fit on the trial's own train split with that C."""
    from vptsearch._linear_probe import C_GRID, choose_c, fit_standardised

    fit_split, val_split = search_splits
    feats = {s: _features(model, data, s) for s in dict.fromkeys([fit_split, val_split, data.train_split])}
    best_c, val_by_c, fits = choose_c(feats[fit_split], feats[val_split], C_GRID)
    fit = fits[best_c] if data.train_split == fit_split else fit_standardised(feats[data.train_split], best_c)
    train_x, train_y = feats[data.train_split]
    loss = _log_loss(fit, train_x.numpy().astype(np.float64), train_y.numpy())
    info = {
        "kind": "probe",
        "C": best_c,
        "val_acc": val_by_c[best_c],
        "train_split": data.train_split,
        "train_loss": loss,
    }
    return fit, info


def _features(model: Any, data: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input over ``split``, preprocessed as the trial evaluates (no augmentation, no
    prompt dropout: the model is in eval mode)."""
    from vptsearch._linear_probe import extract_features

    batches = data.loader(
        split, train=False, seed=0, batch=data.spec.training.eval_batch_size, device=data.device
    )
    return extract_features(model, batches)


def load_fit(model: Any, fit: Any) -> None:
    """Write a :class:`~vptsearch.probe.LinearFit` into ``model``'s head (and its BatchNorm's
    running statistics with ``head.norm: batchnorm``), so that ``model`` in eval mode gives the
    fit's logits for every class of the task."""
    n_classes, dim = model.head.weight.shape
    coef = np.zeros((n_classes, dim))
    intercept = np.full(n_classes, float(fit.intercept.min()) - ABSENT_CLASS_MARGIN)
    rows = fit.classes.astype(np.int64)
    if rows.min() < 0 or rows.max() >= n_classes:
        raise ConfigError(
            f"the head's probe fit: labels {rows.min()}..{rows.max()} do not fit a head of {n_classes} "
            "classes"
        )
    coef[rows], intercept[rows] = fit.coef, fit.intercept
    norm = model.head_norm
    with torch.no_grad():
        if isinstance(norm, HeadBatchNorm):
            # eval: (x - running_mean) / sqrt(running_var + eps) == (x - mean) / scale exactly
            norm.set_statistics(
                torch.as_tensor(fit.mean), torch.as_tensor(np.maximum(fit.scale**2 - norm.eps, 0))
            )
            weight, bias = coef, intercept
        else:  # fold the standardisation in: W (x - m) / s + b == (W / s) x + (b - (W / s) m)
            weight = coef / fit.scale
            bias = intercept - weight @ fit.mean
        model.head.weight.copy_(torch.as_tensor(weight))
        model.head.bias.copy_(torch.as_tensor(bias))


def _log_loss(fit: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of the fit on ``(x, y)`` (what the head starts training at)."""
    from vptsearch._linear_probe import logits

    z = logits(fit, x)
    z -= z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    cols = np.searchsorted(fit.classes, y)  # classes are sorted and hold every label of the fit's data
    return float(-logp[np.arange(len(y)), cols].mean())


def _fit_key(model: Any, data: Any, search_splits: tuple[str, str]) -> Hashable:
    """What the fit depends on: the task's splits as the trial reads them, and the model's features
    at init, which only its prompts change (every other method starts as the frozen backbone:
    adapters start as the identity, full/bias/partial at the pretrained weights)."""
    tr, b = data.spec.training, data.backbone
    prompts = getattr(model, "prompt_tokens", None)
    digest = "none"
    if prompts is not None:
        digest = sha256_bytes(prompts.detach().cpu().contiguous().numpy().tobytes())
    return (
        data.task,
        search_splits,
        data.train_split,
        data.spec.data_root,
        tr.image_size,
        b.image_size,
        tuple(b.mean),
        tuple(b.std),
        getattr(model, "depth", None),
        digest,
    )


def _cache_of(backbone: Any) -> OrderedDict[Hashable, tuple[Any, dict[str, Any]]]:
    cache = _FITS.get(backbone.model)
    if cache is None:
        cache = _FITS[backbone.model] = OrderedDict()
    return cache
