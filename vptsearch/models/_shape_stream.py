"""A seeded stream of procedural RGB 32 px shape images (the tiny backbones' pretraining data).

Used by pipelines/_tiny_pretrain.py, which pretrained the shipped tiny backbones on it, and by the
DINOv2 import (``dinov2_onnx.make_check_images``), whose timm-vs-onnxruntime check feeds it scenes;
that second use is why it is library code. Not to be confused with vptsearch/data/_procedural.py,
the mini suite's dSprites- and CLEVR-like evaluation images.

Why procedural: the shipped backbones must be pretrained offline on data that is *not* one of the
mini suite's evaluation tasks (digits, MNIST, Fashion-MNIST, textures, dSprites-like, CLEVR-like).
Every image is a function of (seed, batch index) only, generated on the fly as a vectorised torch
batch, so the pretraining stream is identical on every run and costs no disk.

An image holds 1-4 copies of one shape (disc, square, triangle, ring, cross, bar) placed in distinct
cells of a 2x2 grid with random jitter and scale, filled with a sine grating of one of 4
orientations and 3 frequencies, coloured by one of 6 hue bins, on a random background colour with
Gaussian noise and a faint random grating. The class is the combination of the five factors
(6 * 4 * 4 * 3 * 6 = 1728 classes), exposed as one label per factor for a factorised classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar")
ORIENTATIONS_DEG = (0.0, 45.0, 90.0, 135.0)
FREQUENCIES = (0.12, 0.22, 0.34)  # cycles per pixel
NUM_HUES = 6
MAX_COUNT = 4
IMAGE_SIZE = 32

# factor name -> number of values; the order defines the mixed-radix combined class index
FACTORS: dict[str, int] = {
    "shape": len(SHAPES),
    "count": MAX_COUNT,
    "orientation": len(ORIENTATIONS_DEG),
    "frequency": len(FREQUENCIES),
    "hue": NUM_HUES,
}


@dataclass(frozen=True)
class ProceduralBatch:
    images: torch.Tensor  # float [B, 3, 32, 32] in [0, 1]
    factors: dict[str, torch.Tensor]  # factor name -> int64 [B]

    @property
    def labels(self) -> torch.Tensor:
        """The combined class index (mixed radix over FACTORS)."""
        out = torch.zeros_like(self.factors["shape"])
        for name, n in FACTORS.items():
            out = out * n + self.factors[name]
        return out


def num_classes() -> int:
    return math.prod(FACTORS.values())


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """h, s, v in [0, 1], shape [B] -> rgb [B, 3]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _shape_masks(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Soft-edged masks [B, K, H, W] of each image's shape family at offsets dx, dy (pixels)."""
    d = torch.sqrt(dx**2 + dy**2)
    cheb = torch.maximum(dx.abs(), dy.abs())
    # signed "distance-like" functions, < 0 inside
    f_disc = d - r
    f_square = cheb - 0.85 * r
    # upward triangle: three half-planes
    tri = torch.maximum(dy - 0.6 * r, torch.maximum(-0.866 * dx - 0.5 * dy, 0.866 * dx - 0.5 * dy) - 0.5 * r)
    f_ring = (d - r).abs() - 0.3 * r
    arm = 0.3 * r
    f_cross = torch.minimum(
        torch.maximum(dx.abs() - arm, dy.abs() - r), torch.maximum(dy.abs() - arm, dx.abs() - r)
    )
    f_bar = torch.maximum(dx.abs() - r, dy.abs() - 0.35 * r)
    fs = torch.stack([f_disc, f_square, tri, f_ring, f_cross, f_bar], dim=0)  # [S, B, K, H, W]
    idx = shape.view(1, -1, 1, 1, 1).expand(1, *fs.shape[1:])
    f = torch.gather(fs, 0, idx)[0]
    return torch.sigmoid(-f * 3.0)


def generate_batch(batch_size: int, seed: int, index: int) -> ProceduralBatch:
    """Batch number ``index`` of the stream with base ``seed``; identical for identical arguments."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    b = batch_size

    def randint(n: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, n, (b, *shape), generator=g)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand((b, *shape), generator=g)

    factors = {name: randint(n) for name, n in FACTORS.items()}
    count = factors["count"] + 1

    # distinct cells of the 2x2 grid: a random permutation per image, the first `count` are used
    cells = torch.argsort(rand(MAX_COUNT), dim=1)
    present = torch.arange(MAX_COUNT)[None, :] < count[:, None]  # [B, K]
    cell_x = (cells % 2).float() * 16 + 8
    cell_y = (cells // 2).float() * 16 + 8
    radius = 3.5 + 3.0 * rand(1).expand(b, MAX_COUNT)  # one scale per image
    cx = cell_x + (rand(MAX_COUNT) - 0.5) * 2 * (8 - radius).clamp(min=0.5)
    cy = cell_y + (rand(MAX_COUNT) - 0.5) * 2 * (8 - radius).clamp(min=0.5)

    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    dx = xx[None, None] - cx[:, :, None, None]
    dy = yy[None, None] - cy[:, :, None, None]
    masks = _shape_masks(factors["shape"], dx, dy, radius[:, :, None, None])
    mask = (masks * present[:, :, None, None]).amax(dim=1)  # [B, H, W]

    theta = torch.tensor(ORIENTATIONS_DEG)[factors["orientation"]] * math.pi / 180
    theta = theta + (rand() - 0.5) * 0.15  # slight jitter keeps orientation a range, not a pixel pattern
    freq = torch.tensor(FREQUENCIES)[factors["frequency"]] * (1 + (rand() - 0.5) * 0.15)
    phase = rand() * 2 * math.pi
    proj = xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None]
    grating = 0.5 + 0.5 * torch.sin(2 * math.pi * freq[:, None, None] * proj + phase[:, None, None])

    hue = (factors["hue"].float() + 0.15 + 0.7 * rand()) / NUM_HUES
    obj_rgb = _hsv_to_rgb(hue, 0.6 + 0.4 * rand(), 0.75 + 0.25 * rand())
    obj = obj_rgb[:, :, None, None] * (0.35 + 0.65 * grating[:, None])

    # background: a dull random colour, a faint grating of random orientation and noise (nuisances)
    bg_rgb = _hsv_to_rgb(rand(), 0.3 * rand(), 0.1 + 0.5 * rand())
    bg_theta = rand() * math.pi
    bg_proj = xx[None] * torch.cos(bg_theta)[:, None, None] + yy[None] * torch.sin(bg_theta)[:, None, None]
    bg_grating = torch.sin(2 * math.pi * (0.05 + 0.3 * rand())[:, None, None] * bg_proj)
    bg = bg_rgb[:, :, None, None] * (1 + 0.25 * rand()[:, None, None, None] * bg_grating[:, None])
    noise = torch.randn((b, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g) * (0.12 * rand())[:, None, None, None]

    img = mask[:, None] * obj + (1 - mask[:, None]) * bg + noise
    return ProceduralBatch(images=img.clamp(0, 1), factors=factors)

