"""The probe's solver: a standardised L2 logistic regression, as plain arrays, and the rule for C.

Shared by the probe reference (:mod:`vptsearch.probe`) and the trials' ``head.init: probe``
(:mod:`vptsearch._head_init`), so both fit the same model the same way. Needs no data or search
code (the trial layer imports it).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
MAX_ITER = 5000

Split = tuple[torch.Tensor, torch.Tensor]  # (features float32 [N, d], labels int64 [N])


@torch.inference_mode()
def extract_features(model: nn.Module, batches: Iterable[Split]) -> Split:
    """``forward_features`` of a ``TunedModel`` over ``(x, y)`` batches -> CPU float32 ``(X, y)``."""
    model.eval()
    device = next(model.parameters()).device
    feats, labels = [], []
    for x, y in batches:
        feats.append(model.forward_features(x.to(device)).float().cpu())  # type: ignore[operator]
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


@dataclass(frozen=True)
class LinearFit:
    """A fitted probe as plain arrays: ``logits = ((x - mean) / scale) @ coef.T + intercept``.

    ``coef`` is ``[K, d]`` and ``intercept`` ``[K]`` over ``classes`` (the labels seen in training,
    sorted): scikit-learn's binary model (one row) is written as two opposite halves, which give
    the same probabilities under a softmax.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    C: float


def fit_standardised(train: Split, C: float = 1.0, max_iter: int = MAX_ITER) -> LinearFit:
    """StandardScaler + L2 LogisticRegression(C) fitted on ``train`` (the probe's own solver)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x, y = train[0].numpy().astype(np.float64), train[1].numpy()
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=C, max_iter=max_iter)
    # One BLAS thread: lbfgs on a few thousand rows is latency-bound, and next to torch's OpenMP
    # pool two OpenBLAS threads oversubscribe the cores (measured on 2 cores: the five C of the grid
    # on 800 x 96 features took 7.0 s with 2 threads, 0.30 s with 1).
    with warnings.catch_warnings(), threadpool_limits(1):
        # a strong C on separable features stops at max_iter with a near-optimal fit: not news
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(x), y)
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: p(class 1) = sigmoid(w.x + b) = softmax([-(w.x+b)/2, (w.x+b)/2])
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    return LinearFit(scaler.mean_, scaler.scale_, coef, intercept, clf.classes_, float(C))


def logits(fit: LinearFit, x: np.ndarray) -> np.ndarray:
    """``[N, K]`` logits of the rows of ``x`` under ``fit`` (columns in ``fit.classes`` order)."""
    return ((x - fit.mean) / fit.scale) @ fit.coef.T + fit.intercept


def predict(fit: LinearFit, x: np.ndarray) -> np.ndarray:
    """Predicted labels of the rows of ``x`` under ``fit``."""
    return fit.classes[logits(fit, x).argmax(1)]


def fit_score(train: Split, test: Split, C: float = 1.0, max_iter: int = MAX_ITER) -> float:
    """Accuracy on ``test`` of StandardScaler + LogisticRegression(C) fitted on ``train``."""
    fit = fit_standardised(train, C, max_iter)
    return float((predict(fit, test[0].numpy().astype(np.float64)) == test[1].numpy()).mean())


def choose_c(
    fit: Split, val: Split, c_grid: Sequence[float] = C_GRID, max_iter: int = MAX_ITER
) -> tuple[float, dict[float, float], dict[float, LinearFit]]:
    """The probe's rule for C: the best accuracy on ``val`` of a fit on ``fit`` (ties go to the
    stronger regularisation). Returns ``(C, val accuracy by C, the fits by C)``."""
    fits = {float(c): fit_standardised(fit, c, max_iter) for c in c_grid}
    xv, yv = val[0].numpy().astype(np.float64), val[1].numpy()
    val_by_c = {c: float((predict(f, xv) == yv).mean()) for c, f in fits.items()}
    best_c = max(val_by_c, key=lambda c: (val_by_c[c], -c))
    return best_c, val_by_c, fits
