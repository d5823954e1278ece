"""The epoch loop of a trial and what it reports: the part of :func:`vptsearch.train.run_trial` after
the model is built and its prompts initialised.

Per epoch it trains (:func:`vptsearch._training.train_epoch`), measures (loss, accuracy, NMI when
tracked), evaluates (the search val split every epoch, the final test split at the last) and reports
to a :class:`Reporter`, with a checkpoint state on the :func:`checkpoint_epochs`.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from vptsearch._head_init import refit_head
from vptsearch._training import (
    DIVERGED_LOSS_FACTOR,
    _cpu,
    _host_copy,
    build_optimizer,
    evaluate,
    lr_at,
    param_groups,
    recompute_norm_statistics,
    train_epoch,
)
from vptsearch._trial_config import TrialConfig
from vptsearch.spec import SearchSpec


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


def checkpoint_epochs(spec: SearchSpec) -> frozenset[int]:
    """Epochs whose report carries a checkpoint: every ``training.checkpoint_every`` epochs, every
    ASHA rung (``grace_period * reduction_factor**k``: where the scheduler may stop the trial, so a
    stopped trial's last result has its state) and the last epoch (what the final phase exports).
    A trial resumed from an earlier checkpoint replays the epochs after it, exactly."""
    tr = spec.training
    epochs = {tr.epochs, *spec.asha_rungs}
    if tr.checkpoint_every > 0:
        epochs.update(range(tr.checkpoint_every, tr.epochs + 1, tr.checkpoint_every))
    return frozenset(epochs)


def trial_loader(
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


@dataclass(frozen=True)
class TrialData:
    """Where one trial's images come from: its task's splits for its phase, read for its backbone,
    on ``device`` (where the trial trains)."""

    task: str
    spec: SearchSpec
    backbone: Any
    num_classes: int
    train_split: str
    eval_split: str
    device: torch.device

    def loader(self, split: str, *, train: bool, seed: int, batch: int, device: torch.device | None) -> Any:
        return trial_loader(self.task, split, self.spec, self.backbone, train=train, seed=seed, batch=batch,
                            device=device)  # fmt: skip


class EpochLoop:
    """The epochs of one trial once its model is built: train, measure, evaluate, report."""

    def __init__(
        self, trial: TrialConfig, spec: SearchSpec, model: Any, data: TrialData,
        nmi_images: torch.Tensor | None, init_info: dict[str, Any],
    ) -> None:  # fmt: skip
        tr = spec.training
        self.trial, self.spec, self.model, self.data = trial, spec, model, data
        self.nmi_images, self.init = nmi_images, init_info
        self.train_loader = data.loader(
            data.train_split, train=True, seed=trial.seed, batch=tr.batch_size, device=data.device
        )
        groups = param_groups(model, trial.head_lr_scale)
        self.opt, lr = build_optimizer(groups, spec, trial.base_lr, trial.weight_decay)
        self.steps_per_epoch = steps = max(1, len(self.train_loader))
        self.lr_of = functools.partial(
            lr_at, base=lr, warmup_steps=tr.warmup_epochs * steps, total_steps=tr.epochs * steps
        )
        self.loss_limit = DIVERGED_LOSS_FACTOR * math.log(max(2, data.num_classes))
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.val_acc: float | None = None
        self.test_acc: float | None = None
        self.eval_loader: Any = None  # the search val split (every epoch) or the final test split (last)
        self.norm_loader: Any = None  # the train split as the precise-BN pass reads it

    def resume(self, checkpoint: dict[str, Any]) -> None:
        """Go on after the checkpoint's epoch, with its trained tensors, optimizer, history and init."""
        self.model.load_trained_state_dict(checkpoint["trained"])
        self.opt.load_state_dict(checkpoint["optimizer"])
        self.epoch, self.history = int(checkpoint["epoch"]), list(checkpoint.get("history", []))
        self.init = dict(checkpoint.get("init", {}))

    def state(self) -> dict[str, Any]:
        """The checkpoint of the epoch just trained (host copies: the driver loads it on the CPU)."""
        return {
            "trained": _cpu(self.model.trained_state_dict()),
            "optimizer": _host_copy(self.opt.state_dict()),
            "epoch": self.epoch,
            "history": list(self.history),  # a snapshot: reporters may keep states in memory
            "init": self.init,
        }

    def run(self, reporter: Reporter | None) -> TrialResult:
        """Train the epochs after ``self.epoch`` (0, or the resumed checkpoint's), reporting each."""
        from vptsearch.models import parameter_accounting

        accounting = parameter_accounting(self.model)
        common = {
            "phase": self.trial.phase, "seed": self.trial.seed, "tuned_percent": accounting["tuned_percent"]
        }  # fmt: skip
        head = self.init.get("head") or {}
        if "seconds" in head:  # the head fit is part of the trial's cost (head.init probe)
            common["head_init_seconds"] = head["seconds"]
        checkpointed = checkpoint_epochs(self.spec)
        status = "completed"
        try:
            for epoch in range(self.epoch + 1, self.spec.training.epochs + 1):
                self.epoch = epoch
                metrics = self._train_epoch(common)
                self.history.append(metrics)
                diverged = metrics["diverged"] == 1
                if reporter is not None:
                    reporter.report(metrics, self.state() if epoch in checkpointed and not diverged else None)
                if diverged:  # recorded, reported once, and the trial ends; the search goes on
                    status = "diverged"
                    break
        except TrialStopped:
            status = "pruned"
        return TrialResult(
            status=status,
            epochs=self.epoch,
            history=self.history,
            trained_state=_cpu(self.model.trained_state_dict()),
            val_acc=self.val_acc,
            test_acc=self.test_acc,
            tuned_percent=accounting["tuned_percent"],
            tuned_params=accounting["tuned"],
            init=self.init,
        )

    def _train_epoch(self, common: dict[str, Any]) -> dict[str, Any]:
        """Train epoch ``self.epoch`` and measure it: the result it reports."""
        from vptsearch.models import prompt_nmi

        tr, epoch = self.spec.training, self.epoch
        t0 = time.perf_counter()
        self.train_loader.set_epoch(epoch - 1)  # resumes the same shuffle order as an uninterrupted run
        torch.manual_seed(self.trial.seed * 100_003 + epoch)  # and the same prompt-dropout masks
        stats = train_epoch(
            self.model, self.train_loader, self.opt, lr_of=self.lr_of,
            first_step=(epoch - 1) * self.steps_per_epoch, loss_limit=self.loss_limit, precision=tr.precision,
        )  # fmt: skip
        metrics: dict[str, Any] = {**common, "epoch": epoch, "lr": self.opt.param_groups[0]["lr"]}
        if stats.diverged:  # its seconds too: a diverged epoch cost them as well
            return {
                **metrics,
                "diverged": 1,
                "train_loss": float("nan"),
                "val_acc": 0.0,
                "epoch_seconds": time.perf_counter() - t0,
            }
        metrics.update(diverged=0, train_loss=stats.loss, train_acc=stats.accuracy)
        if self.nmi_images is not None:
            per_layer = prompt_nmi(self.model, self.nmi_images)
            metrics["nmi_mean"] = sum(per_layer) / len(per_layer)
            metrics.update({f"nmi_layer{i}": v for i, v in enumerate(per_layer)})
        if self.trial.phase == "search" or epoch == tr.epochs:
            metrics.update(self._evaluate())
        metrics["epoch_seconds"] = time.perf_counter() - t0
        return metrics

    def _evaluate(self) -> dict[str, float]:
        tr, search = self.spec.training, self.trial.phase == "search"
        if self.eval_loader is None:  # built once: re-reading the manifest every epoch is wasted I/O
            # val200 lives on the device (read every epoch); a test split, read once at the end and up
            # to tens of thousands of images, stays on the host.
            self.eval_loader = self.data.loader(
                self.data.eval_split, train=False, seed=0, batch=tr.eval_batch_size,
                device=self.data.device if search else None,
            )  # fmt: skip
        refit = self.init.get("head_refit")
        metrics: dict[str, float] = {}
        if refit is not None and self.epoch == tr.epochs:
            # head.refit: probe (its norm's statistics come with the fit: no precise-BN pass). A trial
            # resumed from a checkpoint made before head.refit existed has no C and ends as it began.
            refit = refit_head(self.model, self._norm_batches(), refit["C"])
            self.init = {**self.init, "head_refit": refit}
            metrics["head_refit_seconds"] = refit["seconds"]
        elif tr.precise_bn_images:
            recompute_norm_statistics(self.model, self._norm_batches(), tr.precise_bn_images, tr.precision)
        acc, loss = evaluate(self.model, self.eval_loader, tr.precision)
        if search:
            self.val_acc = acc
            return {**metrics, "val_acc": acc, "val_loss": loss}
        self.test_acc = acc
        return {**metrics, "test_acc": acc, "test_loss": loss}

    def _norm_batches(self) -> Any:
        """The train split's images, unaugmented, in a fixed order: what the precise-BN pass reads
        (built once; the in-memory train loader lends its tensors, nothing is read or copied again)."""
        if self.norm_loader is None:
            self.norm_loader = self.train_loader.statistics_view(self.spec.training.eval_batch_size)
        return self.norm_loader
