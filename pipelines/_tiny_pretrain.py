"""Pretraining of the shipped tiny backbones on the procedural stream (supervised and MAE-style).

Both recipes build the same timm architecture the loader builds (``timm.create_model(TINY_ARCH,
num_classes=0, **kwargs)``), train it with AdamW and a warm-up + cosine schedule on batches from
``vptsearch.models._shape_stream.generate_batch`` and return it with a record of what was done, so
the card written next to the weights says exactly how they were made. Heads (factor classifiers,
MAE decoder) are training-only and are not part of the returned backbone.

Pipeline code, not library: only pipelines/pretrain_tiny_backbones.py runs it, once, to make the
weights shipped in vptsearch/assets; the library only loads them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from vptsearch._hashing import sha256_file
from vptsearch.models import _shape_stream as shapes

TINY_ARCH = "vit_tiny_patch16_224"
TINY_KWARGS: dict[str, Any] = dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3)
# MAE convention: no CLS token, mean of the image tokens; fc_norm=False keeps the final LayerNorm on
# the tokens (as MAE's encoder norm, trained by reconstruction) instead of an untrained post-pool norm.
TINY_MAE_KWARGS: dict[str, Any] = {
    **TINY_KWARGS,
    "class_token": False,
    "global_pool": "avg",
    "fc_norm": False,
}
# per-channel statistics of the procedural stream (rounded; measured over 16 384 images)
MEAN = (0.33, 0.33, 0.33)
STD = (0.17, 0.17, 0.17)


def build_tiny(kwargs: dict[str, Any]) -> Any:
    return timm.create_model(TINY_ARCH, pretrained=False, num_classes=0, **kwargs)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def _train_loop(
    params: list[nn.Parameter],
    loss_fn: Callable[[shapes.ProceduralBatch], torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup: int,
    seed: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    # no weight decay on norms, biases, tokens and position embeddings (1-D or token params)
    decay = [p for p in params if p.ndim >= 2 and p.shape[0] != 1]
    no_decay = [p for p in params if not (p.ndim >= 2 and p.shape[0] != 1)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(warmup, steps))
    t0 = time.perf_counter()
    losses: list[float] = []
    for step in range(steps):
        batch = shapes.generate_batch(batch_size, seed, step)
        loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step == steps - 1:
            recent = sum(losses[-50:]) / len(losses[-50:])
            rate = (step + 1) * batch_size / (time.perf_counter() - t0)
            log(f"step {step + 1}/{steps} loss {recent:.4f} ({rate:.0f} img/s)")
    seconds = time.perf_counter() - t0
    return {
        "optimizer": "AdamW(betas=(0.9, 0.95)), no decay on 1-D params/tokens, grad clip 1.0",
        "lr": lr,
        "weight_decay": weight_decay,
        "schedule": f"linear warm-up {warmup} steps, then cosine to 0",
        "steps": steps,
        "batch_size": batch_size,
        "images_seen": steps * batch_size,
        "seed": seed,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "train_seconds": round(seconds, 1),
    }


def pretrain_supervised(
    *,
    steps: int = 700,
    batch_size: int = 128,
    lr: float = 1.5e-3,
    weight_decay: float = 0.05,
    warmup: int = 35,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """CLS-token ViT trained to classify the procedural classes (one softmax per factor)."""
    torch.manual_seed(seed)
    model = build_tiny(TINY_KWARGS)
    heads = nn.ModuleDict({name: nn.Linear(model.num_features, n) for name, n in shapes.FACTORS.items()})
    model.train()

    def loss_fn(batch: shapes.ProceduralBatch) -> torch.Tensor:
        feats = model(_normalise(batch.images))
        return sum(F.cross_entropy(h(feats), batch.factors[k]) for k, h in heads.items())  # type: ignore[return-value]

    params = [*model.parameters(), *heads.parameters()]
    recipe = _train_loop(
        params,
        loss_fn,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        seed=seed,
        log=log,
    )
    recipe["objective"] = (
        "supervised: sum of cross-entropies of linear heads on the CLS feature, one per factor "
        f"({', '.join(shapes.FACTORS)}), i.e. a factorised classifier of the "
        f"{shapes.num_classes()} combined classes; heads not shipped"
    )
    model.eval()
    return model, recipe


class MAEDecoder(nn.Module):
    """Small MAE decoder: project, insert mask tokens, 2 transformer blocks, predict patch pixels."""

    def __init__(self, embed_dim: int, num_patches: int, patch_pixels: int, width: int = 64, depth: int = 2):
        super().__init__()
        self.proj = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches, width) * 0.02)
        self.blocks = nn.Sequential(*[Block(width, num_heads=2, mlp_ratio=4.0) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.proj(latent)
        b, n_keep, w = x.shape
        n = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.expand(b, n - n_keep, w)], dim=1)
        x = torch.gather(x, 1, ids_restore[:, :, None].expand(-1, -1, w))
        x = self.blocks(x + self.pos_embed)
        return self.pred(self.norm(x))


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def pretrain_mae(
    *,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 1.5e-3,
    weight_decay: float = 0.05,
    warmup: int = 75,
    mask_ratio: float = 0.75,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """Average-pool ViT pretrained by masked-image reconstruction (normalised-pixel loss)."""
    torch.manual_seed(seed)
    model = build_tiny(TINY_MAE_KWARGS)
    p = model.patch_embed.patch_size[0]
    n = model.patch_embed.num_patches
    decoder = MAEDecoder(model.embed_dim, n, p * p * 3)
    model.train()
    n_keep = round(n * (1 - mask_ratio))
    mask_gen = torch.Generator().manual_seed(seed + 12345)

    def loss_fn(batch: shapes.ProceduralBatch) -> torch.Tensor:
        imgs = _normalise(batch.images)
        b = imgs.shape[0]
        x = model._pos_embed(model.patch_embed(imgs))  # no prefix tokens: [B, N, D]
        ids_shuffle = torch.argsort(torch.rand(b, n, generator=mask_gen), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        keep = ids_shuffle[:, :n_keep]
        x = torch.gather(x, 1, keep[:, :, None].expand(-1, -1, x.shape[-1]))
        x = model.norm(model.blocks(model.norm_pre(x)))
        pred = decoder(x, ids_restore)
        target = _patchify(imgs, p)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        mask = torch.ones(b, n)
        mask[:, :n_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # 1 = masked, in original patch order
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    params = [*model.parameters(), *decoder.parameters()]
    recipe = _train_loop(
        params,
        loss_fn,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        seed=seed,
        log=log,
    )
    recipe["objective"] = (
        f"MAE: {int(mask_ratio * 100)} % of the {n} patches masked, encoder sees the rest, a "
        "2-block 64-wide decoder predicts the masked patches' per-patch-normalised pixels (MSE on "
        "masked patches); decoder not shipped"
    )
    recipe["mask_ratio"] = mask_ratio
    model.eval()
    return model, recipe


def save_backbone(model: nn.Module, out_dir: Path, name: str, card: dict[str, Any]) -> Path:
    """Write ``<name>.safetensors`` (backbone only, no head) and ``<name>.json`` with its sha256."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    # one metadata key only: safetensors writes a multi-key map in random (Rust HashMap) order, which
    # would make the file bytes, and so the sha256, differ between identical runs
    save_file(state, str(weights), metadata={"format": "pt"})
    card = {
        **card,
        "name": name,
        "sha256": sha256_file(weights),
        "num_params": sum(v.numel() for v in state.values()),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return weights


def make_card(
    name: str, kwargs: dict[str, Any], recipe: dict[str, Any], command: str, *, threads: int
) -> dict:
    """Model card fields known after pretraining (sha256 and parameter count are added on save)."""
    return {
        "name": name,
        "architecture": TINY_ARCH,
        "model_kwargs": dict(kwargs),
        "image_size": kwargs["img_size"],
        "mean": list(MEAN),
        "std": list(STD),
        "pooling": "cls" if kwargs.get("class_token", True) else "avg (mean of image tokens)",
        "license": "Apache-2.0 (trained by this project on procedural data)",
        "pretraining": {
            "data": dataset_description(),
            "recipe": recipe,
            "command": command,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "torch_threads": threads,
        },
    }


def dataset_description() -> dict[str, Any]:
    """What the model card records about the pretraining data."""
    return {
        "name": "vptsearch-procedural-32",
        "generator": "vptsearch.models._shape_stream.generate_batch(batch_size, seed, index)",
        "image_size": shapes.IMAGE_SIZE,
        "factors": {
            "shape": list(shapes.SHAPES),
            "count": list(range(1, shapes.MAX_COUNT + 1)),
            "orientation_deg": list(shapes.ORIENTATIONS_DEG),
            "frequency_cycles_per_px": list(shapes.FREQUENCIES),
            "hue_bins": shapes.NUM_HUES,
        },
        "num_classes": shapes.num_classes(),
        "nuisances": "placement in distinct 2x2 grid cells with jitter, scale 3.5-6.5 px, grating phase, "
        "saturation/value, background colour, faint background grating, Gaussian noise",
        "disjoint_from": "all mini-suite evaluation tasks (no digits, MNIST, Fashion-MNIST, textures, "
        "dSprites-like or CLEVR-like images)",
    }
