"""Image encoding/decoding with fixed settings, so the same pixels always give the same bytes."""

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
            return np.array(img.convert("RGB"))  # writable: torch.from_numpy needs it
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
            if fmt == "PNG" and img.mode == "RGB":
                return data, "png", size
            if fmt == "JPEG" and img.mode in ("RGB", "L"):
                return data, "jpg", size
            rgb = np.asarray(img.convert("RGB"))
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
            img = src.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except _DECODE_ERRORS as exc:
        raise ValueError(f"not a decodable image ({type(exc).__name__}: {exc})") from None
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0, optimize=False)
    return buf.getvalue()
