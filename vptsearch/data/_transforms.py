"""Task preprocessing on uint8 tensors, batched where it matters.

VTAB (VPT protocol): resize to ``S x S``, no augmentation. FGVC: eval resizes to ``S * 256/224``
and centre-crops ``S``; train takes a random-resized crop (scale 0.08-1, ratio 3/4-4/3) plus a
horizontal flip, done for a whole batch at once with ``affine_grid``/``grid_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

FGVC_RESIZE_RATIO = 256 / 224  # VPT resizes to 256 and crops 224 for FGVC


def stored_size(preprocessing: str, image_size: int) -> int:
    """The square size images are resized to once before per-batch work (crops come after)."""
    return round(image_size * FGVC_RESIZE_RATIO) if preprocessing == "fgvc" else image_size


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Batched antialiased bilinear resize of uint8/float ``[B, 3, H, W]`` to ``size x size`` (float)."""
    x = x.float()
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_resized_crop_flip(
    x: torch.Tensor,
    size: int,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Per-sample random-resized crop + horizontal flip: ``[B, 3, H, W]`` -> float ``[B, 3, size, size]``."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = log_r.exp()
    # crop width/height as fractions of the image side (clipped to the image)
    cw = (area * r).sqrt().clamp(max=1.0)
    ch = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - cw)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - ch)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    # parameters drawn on the CPU (same crops on every device), the resampling where ``x`` lives
    grid = F.affine_grid(theta.to(x.device), [b, 3, size, size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class Normalise:
    """uint8-range float -> ``(x / 255 - mean) / std`` in one fused multiply-add per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (
            x.float().mul_(self.scale).sub_(self.shift)
            if x.dtype != torch.float32
            else x * self.scale - self.shift
        )


def sample_transform(
    preprocessing: str, image_size: int, mean: Sequence[float], std: Sequence[float], train: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-sample transform (uint8 ``[3, H, W]`` -> float ``[3, S, S]``) for the streaming path."""
    norm = Normalise(mean, std)
    pre = stored_size(preprocessing, image_size)

    def apply(x: torch.Tensor) -> torch.Tensor:
        xb = resize(x[None], pre)
        if preprocessing == "fgvc":
            xb = random_resized_crop_flip(xb, image_size) if train else center_crop(xb, image_size)
        return norm(xb[0].contiguous())

    return apply
