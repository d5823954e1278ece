"""The fast VPT-deep path: a timm ``Block`` whose attention also sees precomputed prompt keys/values.

In VPT-deep the prompt tokens' outputs of every layer are thrown away (the next layer's fresh prompts
replace them), so a layer only needs the prompts' keys and values, appended to the image tokens'
keys/values (``run_block``). The prompts' queries, attention output, projection and MLP are never
computed. Without dropout (and at eval time) the prompt K/V do not depend on the image: they are
computed once per step for the whole batch (``[heads, p, head_dim]``). With VPT's per-sample prompt
dropout every sample sees its own masked prompts, so the K/V are per sample
(``[B, heads, p, head_dim]``): still only a ``p x d -> 2d`` projection per sample, far cheaper than
running the block on ``p`` more tokens. Either way the result is exactly the token path's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def check_block(block: nn.Module, index: int) -> None:
    """Raise ``TypeError`` unless ``block`` looks like timm's pre-norm ``Block`` + ``Attention``."""
    attn = getattr(block, "attn", None)
    needed_block = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    needed_attn = ("qkv", "num_heads", "head_dim", "q_norm", "k_norm", "norm", "proj", "proj_drop")
    missing = [n for n in needed_block if not hasattr(block, n)]
    missing += [f"attn.{n}" for n in needed_attn if attn is not None and not hasattr(attn, n)]
    if missing:
        raise TypeError(
            f"deep_impl='prefix_kv' needs timm's pre-norm Block with fused-qkv Attention; "
            f"block {index} ({type(block).__name__}) lacks {', '.join(missing)}"
        )


def prompt_kv(block: Any, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of ``prompts`` for ``block``.

    ``prompts`` ``[p, d]`` (shared by the batch) gives K/V ``[heads, p, head_dim]``; ``[B, p, d]``
    (per-sample, e.g. after per-sample dropout) gives ``[B, heads, p, head_dim]``.
    """
    attn = block.attn
    h, hd = attn.num_heads, attn.head_dim
    width = h * hd
    x = block.norm1(prompts)
    # Only the K and V rows of the fused qkv projection: the prompts' queries are never needed.
    w = attn.qkv.weight[width:]
    b = attn.qkv.bias[width:] if attn.qkv.bias is not None else None
    kv = F.linear(x, w, b)
    if prompts.dim() == 2:
        k, v = kv.reshape(-1, 2, h, hd).permute(1, 2, 0, 3).unbind(0)  # [h, p, hd] each
    else:
        k, v = kv.reshape(kv.shape[0], -1, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)  # [B, h, p, hd]
    return attn.k_norm(k), v


def run_block(
    block: Any,
    x: torch.Tensor,
    k_p: torch.Tensor | None = None,
    v_p: torch.Tensor | None = None,
    n_query: int | None = None,
) -> torch.Tensor:
    """timm ``Block.forward`` on ``x`` [B, N, d], optionally with prompt K/V (batch-free
    ``[heads, p, head_dim]`` or per-sample ``[B, heads, p, head_dim]``) appended to the keys and
    values, optionally returning only the first ``n_query`` outputs.

    Mirrors ``timm.models.vision_transformer.Block`` and ``timm.layers.Attention`` (qk_norm, scale
    norm, optional gate, layer scale, drop path), so the result equals running the block on
    ``[x, prompts]`` and keeping the first N (or ``n_query``) outputs. ``n_query=1`` is how the last
    block of a CLS-pooled model skips the projection and MLP of every token but the CLS token.
    """
    attn = block.attn
    bsz, n, _ = x.shape
    nq = n if n_query is None else n_query
    h, hd = attn.num_heads, attn.head_dim
    xn = block.norm1(x)
    gate = attn.gate(xn[:, :nq]).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(xn).reshape(bsz, n, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q[:, :, :nq]), attn.k_norm(k)
    if k_p is not None and v_p is not None:
        # Order of keys is irrelevant to softmax attention; prompts go last to avoid re-slicing.
        if k_p.dim() == 3:  # shared by the batch
            k_p, v_p = k_p.unsqueeze(0).expand(bsz, -1, -1, -1), v_p.unsqueeze(0).expand(bsz, -1, -1, -1)
        k = torch.cat([k, k_p], dim=2)
        v = torch.cat([v, v_p], dim=2)
    drop = attn.attn_drop.p if attn.training else 0.0
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=attn.scale)
    o = attn.norm(o.transpose(1, 2).reshape(bsz, nq, h * hd))
    if gate is not None:
        o = o * gate
    o = attn.proj_drop(attn.proj(o))
    x = x[:, :nq] + block.drop_path1(block.ls1(o))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
