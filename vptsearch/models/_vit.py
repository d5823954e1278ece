"""Building the headless timm ViT every backbone is, and reading its preprocessing from timm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vptsearch._errors import ConfigError, suggest
from vptsearch.models._card import RGB, list_backbones, rgb


def check_timm_name(architecture: str) -> None:
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


def create_vit(architecture: str, model_kwargs: Mapping[str, Any], *, pretrained: bool = False) -> Any:
    """``timm.create_model(architecture, num_classes=0, **model_kwargs)`` in eval mode, refusing a
    non-ViT before any weights are fetched."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    check_timm_name(architecture)
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


def timm_preprocessing(model: Any) -> tuple[int, RGB, RGB]:
    """Image size, mean and std timm resolves for ``model``."""
    import timm

    cfg = timm.data.resolve_model_data_config(model)
    # the model's own patch-embed size is authoritative: img_size in model_kwargs overrides the cfg
    image_size = int(model.patch_embed.img_size[0])
    return image_size, rgb(cfg["mean"]), rgb(cfg["std"])
