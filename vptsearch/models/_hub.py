"""Pretrained timm weights from the Hugging Face hub: the local cache first, a download otherwise.

An offline machine must fail in seconds with a message naming the local-file alternative, not
after the hub client's retries; a file timm fetched before is loaded directly (offline, and it
gives the sha256 the backbone records).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vptsearch._errors import DataError, VptsearchError
from vptsearch._net import unreachable
from vptsearch.models._vit import create_vit


def cached_file(architecture: str) -> str | None:
    """Path of the pretrained weights in the Hugging Face cache, if timm fetched them before."""
    import timm

    cfg = timm.models.get_pretrained_cfg(architecture)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        return None
    repo = repo.split("@")[0]
    for filename in (getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"):
        if filename:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and Path(found).is_file():
                return found
    return None


def reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub, so an offline machine fails in seconds, not after retries."""
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    return unreachable(host, 443, timeout) is None


def load_pretrained(architecture: str, model_kwargs: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The pretrained headless ViT and the path of its weights file in the hub cache (if known)."""
    offline_hint = (
        "offline, use a local file instead: weights: /path/to/file.safetensors with "
        f"architecture: {architecture}"
    )
    cached = cached_file(architecture)
    if cached is None and not reachable():
        raise DataError(
            f"cannot download pretrained weights for {architecture!r}: the Hugging Face hub is "
            "unreachable and "
            f"they are not in the local cache; {offline_hint}"
        )
    kwargs = model_kwargs if cached is None else {**model_kwargs, "pretrained_cfg_overlay": {"file": cached}}
    try:
        model = create_vit(architecture, kwargs, pretrained=True)
    except VptsearchError:
        raise
    except Exception as exc:  # huggingface_hub / urllib / timm raise many types when a download fails
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(
            f"cannot download pretrained weights for {architecture!r} through timm ({type(exc).__name__}: "
            f"{first}); {offline_hint}"
        ) from None
    return model, cached if cached is not None else cached_file(architecture)
