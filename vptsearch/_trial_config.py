"""The typed trial config: one reading of the flat dict a searcher samples.

Tune samples (and results.json and MLflow keep) a trial's config as a flat dict with dotted keys:
``{"method": "vpt", "prompt.length": 10, "optim.base_lr": 1.0, ..., "task": ..., "phase": "search",
"seed": 0}``. That dict stays the on-wire format; :meth:`TrialConfig.from_sampled` reads it once,
fills the defaults of the parameters it lacks (:func:`vptsearch.spec.trial_defaults`) and adds
what the spec's ``training`` section says about prompts, and :meth:`TrialConfig.to_params` gives the
sampled dict back unchanged (ints stay ints: MLflow logs ``str(value)``).

Torch-free, like the spec: the driver reads trial configs without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vptsearch._errors import ConfigError
from vptsearch.spec import PARAMS, TrainingConfig, trial_defaults

PHASES = ("search", "final")


@dataclass(frozen=True)
class PromptConfig:
    """A vpt trial's prompts: the sampled ``prompt.*`` parameters and the spec's prompt dropout."""

    length: int
    depth: str
    init: str
    deep_impl: str
    frozen: bool
    dropout: float  # training.prompt_dropout
    dropout_mask: str  # training.prompt_dropout_mask


@dataclass(frozen=True)
class TrialConfig:
    """One trial's configuration, defaults filled in. Build it with :meth:`from_sampled`.

    The method-specific parts are set only for their method: ``prompt`` (vpt), ``adapter_reduction``
    (adapter), ``partial_k`` (partial). Each method turns the config into its own ``build_model``
    options (``vptsearch.models.methods.Method.build_options``).
    """

    method: str
    base_lr: float
    weight_decay: float
    head_norm: str
    head_init: str = "random"  # before head.init existed every head started as nn.Linear's draw
    head_lr_scale: float = 1.0
    head_refit: str = "none"  # before head.refit existed every trial ended with its trained head
    prompt: PromptConfig | None = None
    adapter_reduction: int | None = None
    partial_k: int | None = None
    # The control keys: which trial this is rather than what it trains. ``warm_start``: the task (or
    # earlier launch) whose best configuration a warm-started trial was enqueued from.
    phase: str = "search"
    seed: int = 0
    task: str | None = None
    warm_start: str | None = None
    # The sampled dict itself, as (key, value) pairs in its order: what to_params() gives back.
    sampled: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_sampled(cls, config: Mapping[str, Any], training: TrainingConfig) -> TrialConfig:
        """Read a sampled trial config (``method`` default ``vpt``, ``seed`` 0, ``phase`` ``search``).

        Keys that are neither parameters nor control keys are kept for :meth:`to_params` and
        otherwise ignored, as a trial always did.
        """
        method = config.get("method", "vpt")
        phase = config.get("phase", "search")
        if phase not in PHASES:
            raise ConfigError(f"trial phase {phase!r} is unknown; accepted: {', '.join(PHASES)}")
        defaults = trial_defaults(method)
        if not defaults:  # every method has at least optim.* and head.norm
            known = sorted({m for d in PARAMS.values() for m in d.methods})
            raise ConfigError(f"trial method {method!r} is unknown; accepted: {', '.join(known)}")
        p = {**defaults, **config}
        prompt = None
        if method == "vpt":
            prompt = PromptConfig(
                length=int(p["prompt.length"]),
                depth=p["prompt.depth"],
                init=p["prompt.init"],
                deep_impl=p["prompt.deep_impl"],
                frozen=bool(p["prompt.frozen"]),
                dropout=training.prompt_dropout,
                dropout_mask=training.prompt_dropout_mask,
            )
        return cls(
            method=method,
            base_lr=float(p["optim.base_lr"]),
            weight_decay=float(p["optim.weight_decay"]),
            head_norm=p["head.norm"],
            head_init=p["head.init"],
            head_lr_scale=float(p["optim.head_lr_scale"]),
            head_refit=p["head.refit"],
            prompt=prompt,
            adapter_reduction=int(p["adapter.reduction"]) if method == "adapter" else None,
            partial_k=int(p["partial.k"]) if method == "partial" else None,
            phase=phase,
            seed=int(config.get("seed", 0)),
            task=config.get("task"),
            warm_start=config.get("warm_start"),
            sampled=tuple(config.items()),
        )

    def to_params(self) -> dict[str, Any]:
        """The sampled dict this config was read from, key for key and value for value."""
        return dict(self.sampled)
