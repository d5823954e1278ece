"""``TunedModel``: a frozen timm ``VisionTransformer`` plus prompts / adapters and a linear head.

The timm model is wrapped: the forward pass calls its own ``patch_embed``, ``_pos_embed``,
``patch_drop``, ``norm_pre``, ``blocks``, ``norm``, ``pool`` and ``fc_norm`` and splices prompt
tokens in between blocks. Sequence order inside the blocks is
``[prefix (CLS + register tokens), prompts, patches]``; prompts get no positional embedding.

One part is forked: ``_prefix.run_block`` re-implements timm's ``Block.forward`` (and
``Attention``) for two speed-ups a call to the block cannot express: VPT-deep with
``deep_impl="prefix_kv"`` appends the prompts' keys/values without computing their queries and MLP,
and the last block of a CLS-pooled model computes only the CLS token's output
(``cls_only_last_block``). Both are exact; ``_prefix.check_block`` refuses (prefix_kv) or skips
(CLS-only) any block that is not timm's standard pre-norm layout, and tests compare them with the
plain block call, so a timm change to ``Block`` shows up as a failing test, not a silent drift.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vptsearch._errors import ConfigError
from vptsearch.models._prefix import check_block, prompt_kv, run_block

DEPTHS = ("shallow", "deep")
DEEP_IMPLS = ("tokens", "prefix_kv")
# VPT's reference implementation applies prompt dropout after expanding the prompts to the batch: an
# independent mask per sample. "batch" (one mask for the whole batch) is a different, worse model
# (measured: VPT-deep fits half as much of its training set); it is kept only as an explicit option.
DROPOUT_MASKS = ("sample", "batch")
# "batchnorm": BatchNorm1d without affine in front of the linear head (the MAE linear-probe protocol).
# Frozen ViT features carry a large constant per-dimension offset that makes an SGD head on raw
# features ill-conditioned; standardising them fixes that. Its running statistics are trained state.
# "standardize": the same layer and statistics, but training too divides by the running statistics
# (updated every step as the prompts move the features) instead of the batch's: each image gets the
# exact standardisation the probe's fit assumes, with no batch-statistics noise in the head's input
# (measured with a fitted head: batch statistics of 32 images cost crops/dsprites_loc 2-3 points).
# Its gradient is batch normalisation's (Batch Renormalization), so prompts cannot inflate the input.
HEAD_NORMS = ("none", "batchnorm", "standardize")


def _vit_class() -> type:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


def check_vit(model: object) -> None:
    """Raise ``ConfigError`` unless ``model`` is a timm ``VisionTransformer`` (or subclass)."""
    if not isinstance(model, _vit_class()):
        raise ConfigError(
            f"backbone must be a timm VisionTransformer (vit_*, deit_*, DINOv2/MAE ViTs), "
            f"got {type(model).__module__}.{type(model).__name__}"
        )


class HeadBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` without affine whose running statistics start as the plain average.

    The frozen features carry a large constant offset (see docs/models.md, "The head"); with the
    usual momentum 0.1 the running mean holds only 1 - 0.9**n of it after n steps, so a short run
    (a smoke launch, a retrain on a few dozen images) evaluates with statistics far from the
    features' and predicts one class. The first batches are therefore averaged exactly (momentum
    1/(n+1)) until that falls to 0.1, then the usual exponential average follows the drifting
    features of a prompt that is still learning. Same buffers and state-dict keys as BatchNorm1d.
    """

    MOMENTUM = 0.1  # the usual exponential average, once exact averaging would weigh less

    def __init__(self, num_features: int, batch_statistics: bool = True) -> None:
        super().__init__(num_features, affine=False, momentum=self.MOMENTUM)
        self._seen: int | None = None  # host copy of num_batches_tracked: no device read per step
        # False (``head.norm: standardize``): training normalises with the running statistics too
        self.batch_statistics = batch_statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 1:
            if self._seen is None:  # first step, or after loading a state: read the buffer once
                self._seen = int(self.num_batches_tracked)  # type: ignore[arg-type]
            self.momentum = max(self.MOMENTUM, 1.0 / (self._seen + 1))
            self._seen += 1
            if not self.batch_statistics:
                self._track(x.detach())
                return self._renormalize(x)
        return super().forward(x)

    def _track(self, x: torch.Tensor) -> None:
        """The running statistics' update BatchNorm1d makes in training (unbiased batch variance)."""
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        m = float(self.momentum)  # type: ignore[arg-type]
        self.running_mean.mul_(1 - m).add_(x.mean(0), alpha=m)
        self.running_var.mul_(1 - m).add_(x.var(0, unbiased=True), alpha=m)
        self.num_batches_tracked.add_(1)

    def _renormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Batch Renormalization (Ioffe 2017), unclipped: eval mode's value, batch norm's gradient.

        ``x_hat * r + d``: the batch-normalised ``x``, with ``r``, ``d`` (the batch's statistics
        relative to the running ones) held constant. With the running statistics as plain constants
        the prompts grew the features along the head's weights (sup backbone: trials diverged).
        """
        assert self.running_mean is not None and self.running_var is not None
        mean, var = x.mean(0), x.var(0, unbiased=False)
        std, running_std = torch.sqrt(var + self.eps), torch.sqrt(self.running_var + self.eps)
        r = (std / running_std).detach()
        d = ((mean - self.running_mean) / running_std).detach()
        return (x - mean) / std * r + d

    def set_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Running statistics known in advance (``head.init: probe``: the features' own): no exact
        averaging of the first batches, the usual momentum follows the features from the first step."""
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        with torch.no_grad():
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
            # n batches seen so that max(MOMENTUM, 1/(n+1)) is MOMENTUM from the next step on
            self.num_batches_tracked.fill_(round(1 / self.MOMENTUM) - 1)
        self._seen = None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._seen = None
        super()._load_from_state_dict(*args, **kwargs)


class TunedModel(nn.Module):
    """A frozen backbone (always in eval mode) with the trained parts of one tuning method.

    Attributes: ``backbone`` (the timm model), ``head`` (``nn.Linear``), ``head_norm``
    (``nn.Identity`` or a ``BatchNorm1d`` without affine, see :data:`HEAD_NORMS`), ``method`` (its
    name), ``prompt_tokens`` (``nn.Parameter [L|1, p, d]`` for VPT, else ``None``), ``adapters``
    (``nn.ModuleList`` for the adapter method, else empty). Build it with ``build_model``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, method: str) -> None:
        super().__init__()
        check_vit(backbone)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.backbone: Any = backbone  # a timm VisionTransformer; Any: timm attributes are dynamic
        self.method = method
        self.num_classes = num_classes
        bb: Any = backbone
        self.embed_dim = int(bb.embed_dim)
        self.num_layers = len(bb.blocks)
        self.num_prefix_tokens = int(bb.num_prefix_tokens)
        self.head = nn.Linear(self.embed_dim, num_classes)
        self.head_norm: nn.Module = nn.Identity()
        self.head_norm_kind = "none"
        self.prompt_tokens: nn.Parameter | None = None
        self.depth: str | None = None
        self.deep_impl: str | None = None
        self.prompt_dropout = nn.Dropout(0.0)
        self.dropout_mask = "sample"
        self.adapters = nn.ModuleList()
        # CLS-pooled heads read one token of the last block: compute only that token's attention
        # output and MLP there (exact; saves ~(N-1)/N of the last block for every method).
        self.cls_only_last_block = self._pool_type() == "token" and _standard_blocks(bb.blocks)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    # -- head ------------------------------------------------------------------------------------
    def set_head_norm(self, kind: str) -> None:
        """Put a normalisation in front of the head: ``none``, ``batchnorm`` or ``standardize`` (see
        :data:`HEAD_NORMS`)."""
        if kind not in HEAD_NORMS:
            raise ConfigError(f"unknown head norm {kind!r}; accepted: {', '.join(HEAD_NORMS)}")
        self.head_norm_kind = kind
        device = self.head.weight.device
        if kind in ("batchnorm", "standardize"):
            self.head_norm = HeadBatchNorm(self.embed_dim, batch_statistics=kind == "batchnorm").to(device)
        else:
            self.head_norm = nn.Identity()

    # -- prompts ---------------------------------------------------------------------------------
    def add_prompts(
        self,
        prompt_length: int,
        depth: str = "deep",
        prompt_dropout: float = 0.0,
        deep_impl: str = "tokens",
        dropout_mask: str = "sample",
    ) -> None:
        """Create ``prompt_tokens`` ([L, p, d] deep, [1, p, d] shallow), randomly initialised (VPT).

        ``dropout_mask``: ``sample`` (an independent prompt-dropout mask per sample, as in VPT) or
        ``batch`` (one mask shared by the batch; see :data:`DROPOUT_MASKS`)."""
        if not isinstance(prompt_length, int) or isinstance(prompt_length, bool) or prompt_length < 1:
            raise ConfigError(f"prompt_length must be an integer >= 1, got {prompt_length!r}")
        if depth not in DEPTHS:
            raise ConfigError(f"unknown prompt depth {depth!r}; accepted: {', '.join(DEPTHS)}")
        if deep_impl not in DEEP_IMPLS:
            raise ConfigError(f"unknown deep_impl {deep_impl!r}; accepted: {', '.join(DEEP_IMPLS)}")
        if not 0.0 <= float(prompt_dropout) < 1.0:
            raise ConfigError(f"prompt_dropout must be in [0, 1), got {prompt_dropout!r}")
        if dropout_mask not in DROPOUT_MASKS:
            raise ConfigError(
                f"unknown prompt dropout mask {dropout_mask!r}; accepted: {', '.join(DROPOUT_MASKS)}"
            )
        if depth == "deep" and deep_impl == "prefix_kv":
            for i, blk in enumerate(self.backbone.blocks):
                try:
                    check_block(blk, i)
                except TypeError as e:
                    raise ConfigError(str(e)) from None
        layers = self.num_layers if depth == "deep" else 1
        self.depth = depth
        # Shallow prompts flow on through every layer, so only the token path can express them.
        self.deep_impl = deep_impl if depth == "deep" else "tokens"
        self.prompt_dropout = nn.Dropout(float(prompt_dropout))
        self.dropout_mask = dropout_mask
        self.prompt_tokens = nn.Parameter(torch.empty(layers, prompt_length, self.embed_dim))
        with torch.no_grad():
            self.prompt_tokens.uniform_(-self.random_init_bound(), self.random_init_bound())

    def random_init_bound(self) -> float:
        """VPT's uniform init bound ``sqrt(6 / (3 * patch_h * patch_w + d))`` (Xavier on the patch conv)."""
        ph, pw = _pair(self.backbone.patch_embed.patch_size)
        return math.sqrt(6.0 / (3 * ph * pw + self.embed_dim))

    @property
    def prompt_length(self) -> int:
        return 0 if self.prompt_tokens is None else int(self.prompt_tokens.shape[1])

    # -- mode / parameters -----------------------------------------------------------------------
    def train(self, mode: bool = True) -> TunedModel:
        """Set train mode on the tuned parts only: the backbone's dropout/drop-path stay off."""
        super().train(mode)
        self.backbone.eval()
        return self

    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _state_params(self) -> dict[str, nn.Parameter]:
        """The tensors a trained state holds: every trained one, plus prompts frozen after init
        (``frozen=True``: they are the task's prompts, so bundles and checkpoints carry them)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad or n == "prompt_tokens"}

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """``_state_params`` plus the head norm's running statistics (learned from the task's data,
        so part of what a checkpoint or bundle must carry)."""
        tensors: dict[str, torch.Tensor] = dict(self._state_params())
        tensors.update({f"head_norm.{n}": b for n, b in self.head_norm.named_buffers()})
        return tensors

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained tensors, keyed exactly as in ``state_dict()`` (see docs/models.md)."""
        return {n: p.detach().clone() for n, p in self._state_tensors().items()}

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors saved by ``trained_state_dict``; keys and shapes must match exactly."""
        params = self._state_tensors()
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise ConfigError(
                f"trained state does not fit method {self.method!r}: missing {missing or 'none'}, "
                f"unexpected {unexpected or 'none'}"
            )
        with torch.no_grad():
            for name, p in params.items():
                value = state[name]
                if tuple(value.shape) != tuple(p.shape):
                    raise ConfigError(
                        f"trained tensor {name!r} has shape {tuple(value.shape)}, the model expects "
                        f"{tuple(p.shape)}"
                    )
                p.copy_(value)

    # -- forward ---------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering block 0: patch embedding + positional embedding (+ prefix tokens, norm_pre)."""
        bb = self.backbone
        x = bb.patch_embed(x)
        x = bb._pos_embed(x)
        x = bb.patch_drop(x)
        return bb.norm_pre(x)

    def _per_sample_dropout(self) -> bool:
        """True when prompt dropout is active with a mask per sample (the prompts differ per sample)."""
        return self.training and self.prompt_dropout.p > 0 and self.dropout_mask == "sample"

    def _prompts(self, layer: int, batch: int | None) -> torch.Tensor:
        """Prompt vectors inserted before ``layer`` with dropout: ``[B, p, d]`` when ``batch`` is
        given, else ``[p, d]`` (only valid when the prompts are the same for every sample)."""
        assert self.prompt_tokens is not None
        p = self.prompt_tokens[layer]
        if batch is None:
            assert not self._per_sample_dropout()
            return self.prompt_dropout(p)
        if self.dropout_mask == "batch":  # one mask, then the same prompts for every sample
            return self.prompt_dropout(p).unsqueeze(0).expand(batch, -1, -1)
        # VPT: dropout on the batch-expanded tensor, i.e. an independent mask per sample.
        return self.prompt_dropout(p.unsqueeze(0).expand(batch, -1, -1))

    def forward_tokens(
        self, x: torch.Tensor, collect: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, int]:
        """Final-norm tokens and the number of prompt tokens among them.

        For CLS-pooled backbones only the CLS token is returned ([B, 1, d]): the last block
        computes nothing else (``cls_only_last_block``).

        If ``collect`` is a list, the patch tokens entering each prompted layer (layer 0 only for
        shallow; every layer for deep; layer 0 for un-prompted methods) are appended to it.
        """
        bb = self.backbone
        npf = self.num_prefix_tokens
        x = self.embed(x)
        n_prompt = 0
        prompted = self.prompt_tokens is not None
        fast = prompted and self.deep_impl == "prefix_kv"
        last = self.num_layers - 1
        for i, blk in enumerate(bb.blocks):
            insert = prompted and (i == 0 or self.depth == "deep")
            if collect is not None and (i == 0 or (insert and self.depth == "deep")):
                collect.append(x[:, npf + n_prompt :])
            n_query = 1 if i == last and self.cls_only_last_block else None
            if fast:
                # Per-sample masks make per-sample prompt K/V; otherwise they are batch-free.
                per_sample = self._per_sample_dropout()
                k_p, v_p = prompt_kv(blk, self._prompts(i, x.shape[0] if per_sample else None))
                x = run_block(blk, x, k_p, v_p, n_query=n_query)
                continue
            if insert:
                # Deep: the new prompts replace the previous layer's prompt outputs.
                p = self._prompts(i, x.shape[0])
                x = torch.cat([x[:, :npf], p, x[:, npf + n_prompt :]], dim=1)
                n_prompt = p.shape[1]
            x = blk(x) if n_query is None else run_block(blk, x, n_query=n_query)
        if self.cls_only_last_block:
            n_prompt = 0  # only the CLS token is left
        return bb.norm(x), n_prompt

    def pool(self, tokens: torch.Tensor, n_prompt: int) -> torch.Tensor:
        """Head input: the final-norm CLS token, or for pooling backbones the backbone's own pooling
        (``global_pool`` avg/max/map...) over prefix + image tokens with the prompts removed, then
        ``fc_norm``. Prompts never enter the pooled feature."""
        bb = self.backbone
        npf = self.num_prefix_tokens
        pool_type = self._pool_type()
        if pool_type == "token":
            feats = tokens[:, 0]
        else:
            if n_prompt:
                tokens = torch.cat([tokens[:, :npf], tokens[:, npf + n_prompt :]], dim=1)
            feats = bb.pool(tokens, pool_type=pool_type)
        return bb.fc_norm(feats)

    def _pool_type(self) -> str:
        bb = self.backbone
        return str(bb.global_pool or ("token" if bb.cls_token is not None else "avg"))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features [B, d] (what the head sees)."""
        tokens, n_prompt = self.forward_tokens(x)
        return self.pool(tokens, n_prompt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        norm = self.head_norm
        if self.training and feats.shape[0] == 1 and isinstance(norm, nn.BatchNorm1d):
            # One sample has no batch statistics (BatchNorm raises): its running ones stand in.
            norm.eval()
            out = self.head(norm(feats))
            norm.train()
            return out
        return self.head(norm(feats))

    def extra_repr(self) -> str:
        head = "" if self.head_norm_kind == "none" else f", head_norm={self.head_norm_kind!r}"
        if self.prompt_tokens is None:
            return f"method={self.method!r}, num_classes={self.num_classes}{head}"
        return (
            f"method={self.method!r}, num_classes={self.num_classes}, depth={self.depth!r}, "
            f"prompt_length={self.prompt_length}, deep_impl={self.deep_impl!r}, "
            f"dropout_mask={self.dropout_mask!r}{head}"
        )


def _standard_blocks(blocks: Any) -> bool:
    try:
        for i, blk in enumerate(blocks):
            check_block(blk, i)
    except TypeError:
        return False
    return True


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)
