"""Tuning methods (one registry) and the one factory, ``build_model``.

Every method starts from the same frozen backbone and a fresh linear head and says which parameters
train: ``vpt`` (prompts), ``linear`` (head only), ``full`` (everything), ``bias`` (BitFit: every bias
of the backbone), ``partial`` (last ``k`` blocks + final norm), ``adapter`` (a bottleneck after every
block's MLP). "method" is a search dimension, so all share one constructor signature, and each
reads its own options off a trial config (``Method.build_options``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vptsearch._errors import ConfigError
from vptsearch._registry import Registry
from vptsearch.models.backbones import Backbone, load_backbone
from vptsearch.models.tuned import TunedModel, check_vit

if TYPE_CHECKING:  # typing only: at run time models/ stays below the trial config (which reads the spec)
    from vptsearch._trial_config import TrialConfig

TrialOptions = Callable[["TrialConfig"], dict[str, Any]]


def _no_trial_options(config: TrialConfig) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Method:
    """A tuning method: ``setup(model, **options)`` makes the trained parameters require grad;
    ``trial_options(config)`` reads the method's own options off a trial config."""

    name: str
    setup: Callable[..., None]
    description: str
    trial_options: TrialOptions = _no_trial_options

    def options(self) -> dict[str, Any]:
        """Accepted options and their defaults."""
        sig = inspect.signature(self.setup)
        return {n: p.default for n, p in list(sig.parameters.items())[1:]}

    def build_options(self, config: TrialConfig) -> dict[str, Any]:
        """The ``build_model`` options of a trial of this method (``head_norm`` first, when set)."""
        # Only when set: bundles exported before head norms existed keep their old options.
        common = {"head_norm": config.head_norm} if config.head_norm != "none" else {}
        return {**common, **self.trial_options(config)}


METHODS: Registry[Method] = Registry("method")
# Methods whose setup neither trains nor hooks the backbone: their models can hold the caller's frozen
# backbone itself (a ViT-B/16 copy is ~350 MB and ~0.3 s per trial). Any other method gets a copy.
SHARES_BACKBONE = frozenset({"vpt", "linear"})


def register_method(
    name: str, description: str, trial_options: TrialOptions = _no_trial_options
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``setup`` as method ``name``; ``trial_options`` maps a trial config to its options."""

    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        METHODS.add(name, Method(name, fn, description, trial_options))
        return fn

    return deco


def list_methods() -> list[str]:
    return METHODS.names()


def _int_option(name: str, value: object, low: int, high: int | None = None) -> int:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")
    return value


def _vpt_trial_options(config: TrialConfig) -> dict[str, Any]:
    p = config.prompt
    assert p is not None, "a vpt trial config has prompts"
    opts: dict[str, Any] = {
        "prompt_length": p.length,
        "depth": p.depth,
        "prompt_dropout": p.dropout,
        "deep_impl": p.deep_impl,
        "dropout_mask": p.dropout_mask,
    }
    if p.frozen:  # only when set: bundles of trained prompts keep their old options
        opts["frozen"] = True
    return opts


@register_method(
    "vpt", "visual prompt tuning (Jia et al. 2022): prompts + head train", _vpt_trial_options
)
def _vpt(
    model: TunedModel,
    prompt_length: int = 10,
    depth: str = "deep",
    prompt_dropout: float = 0.0,
    deep_impl: str = "prefix_kv",  # the spec's default (prompt.deep_impl): exact and faster
    frozen: bool = False,
    dropout_mask: str = "sample",
) -> None:
    if not isinstance(frozen, bool):
        raise ConfigError(f"frozen must be true or false, got {frozen!r}")
    model.add_prompts(
        prompt_length, depth=depth, prompt_dropout=prompt_dropout, deep_impl=deep_impl,
        dropout_mask=dropout_mask,
    )
    if frozen and model.prompt_tokens is not None:
        # SPT Table 4a: prompts keep their initial values (initialize_prompts writes them in place
        # later) and only the head trains; they still travel in trained_state_dict() for export.
        model.prompt_tokens.requires_grad_(False)


@register_method("linear", "linear probe: only the head trains")
def _linear(model: TunedModel) -> None:
    pass


@register_method("full", "full fine-tuning: every backbone parameter and the head train")
def _full(model: TunedModel) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(True)


@register_method("bias", "BitFit: every bias of the backbone (attention, MLP, norms) and the head train")
def _bias(model: TunedModel) -> None:
    for name, p in model.backbone.named_parameters():
        if name.endswith("bias"):
            p.requires_grad_(True)


def _partial_trial_options(config: TrialConfig) -> dict[str, Any]:
    return {"k": config.partial_k}


@register_method(
    "partial", "partial-k: the last k blocks, the final norm and the head train", _partial_trial_options
)
def _partial(model: TunedModel, k: int = 1) -> None:
    k = _int_option("partial k", k, 1, model.num_layers)
    for blk in list(model.backbone.blocks)[-k:]:
        for p in blk.parameters():
            p.requires_grad_(True)
    for mod in (model.backbone.norm, model.backbone.fc_norm):
        for p in mod.parameters():
            p.requires_grad_(True)


class Adapter(nn.Module):
    """Bottleneck ``h + up(gelu(down(h)))`` on a block's MLP output (Pfeiffer-style, as in VPT's
    adapter baseline). ``up`` starts at zero, so an untrained adapter is the identity."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))

    def hook(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        """Forward hook for the block's ``mlp``: adds the adapter without changing backbone keys."""
        return self(output)


def _adapter_trial_options(config: TrialConfig) -> dict[str, Any]:
    return {"reduction": config.adapter_reduction}


@register_method(
    "adapter", "adapter: a bottleneck (width d/reduction) after every block's MLP + head",
    _adapter_trial_options,
)
def _adapter(model: TunedModel, reduction: int = 8) -> None:
    reduction = _int_option("adapter reduction", reduction, 1, model.embed_dim)
    for blk in model.backbone.blocks:
        adapter = Adapter(model.embed_dim, reduction)
        model.adapters.append(adapter)
        # The backbone is our private deep copy, so the hook cannot leak to the caller's model.
        blk.mlp.register_forward_hook(adapter.hook)


def _resolve_backbone(backbone: object, options: dict[str, Any]) -> nn.Module:
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, weights=options.pop("weights", None))
    if isinstance(backbone, Backbone):
        backbone = backbone.model
    check_vit(backbone)
    assert isinstance(backbone, nn.Module)
    return backbone


def build_model(
    backbone: object, num_classes: int, method: str = "vpt", *, head_norm: str = "none", **options: Any
) -> TunedModel:
    """Build a ``TunedModel``: a frozen ``backbone`` + the method's trained parts + head.

    ``backbone``: a ``Backbone`` record, a timm ``VisionTransformer`` instance, or a name for
    ``load_backbone`` (with ``weights=`` among the options). The caller's model is never modified.
    For the methods of :data:`SHARES_BACKBONE` (vpt, linear) given an already frozen backbone in
    eval mode (what ``load_backbone`` returns) the tuned model holds that backbone itself, so the
    trials of a worker share one copy (moving a tuned model moves it too); otherwise (full, bias,
    partial, adapter, or a backbone with trainable parameters) it holds a private deep copy.
    Options per method: ``METHODS.get(method).options()``; unknown options raise ``ConfigError``.
    ``head_norm`` (every method): ``none`` or ``batchnorm`` in front of the linear head.
    """
    spec = METHODS.get(method)
    options = dict(options)
    model_in = _resolve_backbone(backbone, options)
    accepted = spec.options()
    bad = sorted(set(options) - set(accepted))
    if bad:
        raise ConfigError(
            f"unknown option(s) {', '.join(map(repr, bad))} for method {method!r}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    frozen = not model_in.training and not any(p.requires_grad for p in model_in.parameters())
    shared = method in SHARES_BACKBONE and frozen
    model = TunedModel(model_in if shared else copy.deepcopy(model_in), num_classes, method)
    model.set_head_norm(head_norm)
    spec.setup(model, **options)
    model.to(next(model_in.parameters()).device)
    return model
