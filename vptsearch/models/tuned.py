"""``TunedModel``: a frozen timm ``VisionTransformer`` plus prompts / adapters and a linear head.

The timm model is wrapped, not forked: the forward pass calls its own ``patch_embed``,
``_pos_embed``, ``patch_drop``, ``norm_pre``, ``blocks``, ``norm``, ``pool`` and ``fc_norm`` and only
splices prompt tokens in between blocks. Sequence order inside the blocks is
``[prefix (CLS + register tokens), prompts, patches]``; prompts get no positional embedding.
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


class TunedModel(nn.Module):
    """A frozen backbone (always in eval mode) with the trained parts of one tuning method.

    Attributes: ``backbone`` (the timm model), ``head`` (``nn.Linear``), ``method`` (its name),
    ``prompt_tokens`` (``nn.Parameter [L|1, p, d]`` for VPT, else ``None``), ``adapters``
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
        self.prompt_tokens: nn.Parameter | None = None
        self.depth: str | None = None
        self.deep_impl: str | None = None
        self.prompt_dropout = nn.Dropout(0.0)
        self.adapters = nn.ModuleList()
        # CLS-pooled heads read one token of the last block: compute only that token's attention
        # output and MLP there (exact; saves ~(N-1)/N of the last block for every method).
        self.cls_only_last_block = self._pool_type() == "token" and _standard_blocks(bb.blocks)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    # -- prompts ---------------------------------------------------------------------------------
    def add_prompts(
        self, prompt_length: int, depth: str = "deep", prompt_dropout: float = 0.0, deep_impl: str = "tokens"
    ) -> None:
        """Create ``prompt_tokens`` ([L, p, d] deep, [1, p, d] shallow), randomly initialised (VPT)."""
        if not isinstance(prompt_length, int) or isinstance(prompt_length, bool) or prompt_length < 1:
            raise ConfigError(f"prompt_length must be an integer >= 1, got {prompt_length!r}")
        if depth not in DEPTHS:
            raise ConfigError(f"unknown prompt depth {depth!r}; accepted: {', '.join(DEPTHS)}")
        if deep_impl not in DEEP_IMPLS:
            raise ConfigError(f"unknown deep_impl {deep_impl!r}; accepted: {', '.join(DEEP_IMPLS)}")
        if not 0.0 <= float(prompt_dropout) < 1.0:
            raise ConfigError(f"prompt_dropout must be in [0, 1), got {prompt_dropout!r}")
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
        return {
            n: p for n, p in self.named_parameters() if p.requires_grad or n == "prompt_tokens"
        }

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained tensors, keyed exactly as in ``state_dict()`` (see docs/models.md)."""
        return {n: p.detach().clone() for n, p in self._state_params().items()}

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors saved by ``trained_state_dict``; keys and shapes must match exactly."""
        params = self._state_params()
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

    def _prompts(self, layer: int, batch: int | None) -> torch.Tensor:
        """Prompt vectors inserted before ``layer`` with dropout; [B, p, d], or [p, d] if batch is None."""
        assert self.prompt_tokens is not None
        p = self.prompt_tokens[layer]
        # Token path: dropout on the batch-expanded tensor, i.e. an independent mask per sample (as
        # in VPT). prefix_kv path: one mask for the batch, since the prompt K/V are batch-free.
        return self.prompt_dropout(p if batch is None else p.unsqueeze(0).expand(batch, -1, -1))

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
                k_p, v_p = prompt_kv(blk, self._prompts(i, None))
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
        return self.head(self.forward_features(x))

    def extra_repr(self) -> str:
        if self.prompt_tokens is None:
            return f"method={self.method!r}, num_classes={self.num_classes}"
        return (
            f"method={self.method!r}, num_classes={self.num_classes}, depth={self.depth!r}, "
            f"prompt_length={self.prompt_length}, deep_impl={self.deep_impl!r}"
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
