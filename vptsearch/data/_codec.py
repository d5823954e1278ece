"""Image encoding/decoding with fixed settings, so the same pixels always give the same bytes.

Every decoded image becomes 8-bit RGB through :func:`to_rgb`, the one conversion the importers,
the shard reader and ``predict`` share (a model sees the same pixels in training and in use):

- 16-bit grey (``I;16``, ``I;16B``, and ``I``, the mode Pillow gives 16-bit PGM/TIFF) is scaled by
  1/257, so 65535 is 255; Pillow's own ``convert("RGB")`` clips it (nearly every pixel white).
  An ``I`` image with values outside 0..65535 (32-bit data) has no agreed white: its own min..max
  is stretched to 0..255.
- Float (``F``): the smallest of [0, 1], [0, 255], [0, 65535] holding every value sets the scale
  (x255, x1, x1/257); any other range is stretched from its min..max. NaN and +-inf count as 0.
- Transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``RGB``/``L`` with a transparent colour) is
  flattened onto white, as viewers and JPEG exports show it: the colour stored under a transparent
  pixel is arbitrary (often black, sometimes left-overs) and would otherwise reach the model.
- Everything else (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ...) through Pillow's conversion.
"""

from __future__ import annotations

import io
import re
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = ("png", "jpg", "jpeg")
_PNG_LEVEL = 6  # fixed zlib level, no optimize pass, no metadata chunks: same pixels, same bytes
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")
# What Pillow raises on bytes that are not a (safe) image: besides OSError/SyntaxError, corrupt
# streams surface as ValueError, struct.error, EOFError or IndexError from its plugins, and
# decompression bombs as DecompressionBombError (a plain Exception subclass).
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WHITE = 255


def _stretched(arr: np.ndarray) -> np.ndarray:
    """Values of no agreed scale: their own min..max onto 0..255 (a flat image is black)."""
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    return (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)


def _float_scale(arr: np.ndarray) -> float | None:
    """x255 for values in [0, 1], x1 in [0, 255], x1/257 in [0, 65535]; None for any other range."""
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0:
        return None
    return next((scale for top, scale in ((1.0, 255.0), (255.0, 1.0), (65535.0, 1 / 257)) if hi <= top), None)


def _sixteen_bit(mode: str, arr: np.ndarray) -> bool:
    """The 16-bit modes, and mode I holding 0..65535 (how Pillow opens 16-bit PGM and TIFF)."""
    in_range = not arr.size or (arr.min() >= 0 and arr.max() <= 65535)
    return mode in _SIXTEEN_BIT or (mode == "I" and bool(in_range))


def _grey_to_8bit(img: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grey image as uint8 ``[H, W]`` (rules in the module doc)."""
    arr = np.asarray(img)
    if _sixteen_bit(img.mode, arr):
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257), in integers
    out = arr.astype(np.float32)  # half the memory of float64, and exact enough for 8 bits
    if img.mode == "F":
        out[~np.isfinite(out)] = 0.0
    scale = _float_scale(out) if img.mode == "F" else None
    out = out * scale if scale is not None else _stretched(out)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _flattened(img: Image.Image) -> np.ndarray:
    """An image with transparency as uint8 RGB ``[H, W, 3]``, composited onto white."""
    rgba = np.asarray(img.convert("RGBA")).astype(np.uint32)
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return ((rgb * alpha + _WHITE * (255 - alpha) + 127) // 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow image as a writable uint8 ``[H, W, 3]`` array (the rules are in the module doc).

    Raises what Pillow raises for pixels it cannot decode, and ValueError for a mode it cannot
    convert.
    """
    if img.mode in (*_SIXTEEN_BIT, "I", "F"):
        return np.repeat(_grey_to_8bit(img)[:, :, None], 3, axis=2)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _flattened(img)
    return np.array(img.convert("RGB"))


def encode_png(image: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` or ``[H, W, 3]`` -> PNG bytes (RGB), deterministic."""
    arr = np.ascontiguousarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"images must be [H, W] or [H, W, 3], got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=_PNG_LEVEL, optimize=False)
    return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> uint8 ``[H, W, 3]``; raises ValueError when the bytes are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(img)  # writable: torch.from_numpy needs it
    except _DECODE_ERRORS as exc:
        raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None


def normalise_encoded(data: bytes) -> tuple[bytes, str, tuple[int, int]]:
    """Check that ``data`` decodes; keep PNG/JPEG bytes as they are, re-encode other formats to PNG.

    Returns ``(bytes, ext, (height, width))``.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()
            size = (img.height, img.width)
            if fmt == "PNG" and img.mode == "RGB" and "transparency" not in img.info:
                return data, "png", size
            if fmt == "JPEG" and img.mode in ("RGB", "L"):
                return data, "jpg", size
            rgb = to_rgb(img)
    except _DECODE_ERRORS as exc:
        raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None
    return encode_png(rgb), "png", size


def safe_key(text: str) -> str:
    """A WebDataset-safe sample key: no dots (they separate key and extension) and no slashes."""
    return _KEY_BAD.sub("_", text)


def resized_jpeg(data: bytes, size: int) -> bytes:
    """Decode, resize to ``size x size`` (bilinear) and re-encode as JPEG (quality 95, fixed settings)."""
    try:
        with Image.open(io.BytesIO(data)) as src:
            img = Image.fromarray(to_rgb(src)).resize((size, size), Image.Resampling.BILINEAR)
    except _DECODE_ERRORS as exc:
        raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0, optimize=False)
    return buf.getvalue()
