"""Rebuilding a bundle's model: its backbone (sha256 verified), ``build_model`` with the recorded
method options, and the trained tensors of one member or the ensemble of all of them (each file
checked against the sha256 bundle.json recorded for it, and refused when it holds NaN or inf)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptsearch._errors import ConfigError
from vptsearch.search._bundle_format import read_member, read_meta, reexport_hint


def _load_args(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``load_backbone`` arguments of a bundle's backbone record (format 1: the spec's own)."""
    from vptsearch.models.backbones import BACKBONES

    b = meta["backbone"]
    if meta["format_version"] == 1:
        return {"weights": b.get("weights"), "architecture": b.get("architecture"),
                "model_kwargs": b.get("model_kwargs") or None}  # fmt: skip
    w = b.get("weights") or {}
    if b.get("source") == "random":
        weights = "none"
    elif b["name"] in BACKBONES or b.get("source") == "hub":
        weights = None
    else:
        weights = w.get("location")
    return {
        "weights": weights,
        "architecture": b.get("architecture"),
        "model_kwargs": b.get("model_kwargs") or None,
    }


class EnsembleModel(nn.Module):
    """Several seeds' models of one bundle; logits are the mean of the members' logits."""

    def __init__(self, members: Sequence[nn.Module], seeds: Sequence[int]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.seeds = list(seeds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def _check_keys(path: Path, model: Any, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    want = set(model.trained_state_dict())
    missing, unexpected = sorted(want - set(tensors)), sorted(set(tensors) - want)
    if not missing and not unexpected:
        return
    norm = (meta.get("method_options") or {}).get("head_norm", "none")
    what = f"method {meta['method']!r} with head norm {norm!r}"
    if missing and all(k.startswith("head_norm.") for k in missing):
        raise ConfigError(
            f"{path}: lacks the head-norm statistics {', '.join(missing)} that {what} needs "
            f"(re-export with `{reexport_hint(meta)}`)"
        )
    raise ConfigError(
        f"{path}: tensors do not fit {what}: missing {', '.join(missing) or 'none'}, "
        f"unexpected {', '.join(unexpected) or 'none'} (re-export with `{reexport_hint(meta)}`)"
    )


def _check_image_size(d: Path, backbone: Any, meta: Mapping[str, Any]) -> None:
    """A ViT of fixed input size takes only that size: another one in bundle.json was an assertion
    deep in timm at the first image (or, for a huge one, an allocation of that many pixels)."""
    embed: Any = getattr(backbone.model, "patch_embed", None)
    if not getattr(embed, "strict_img_size", False):  # dynamic sizes (timm's dynamic_img_size)
        return
    size, takes = int(meta["image_size"]), int(embed.img_size[0])
    if size != takes:
        raise ConfigError(
            f"{d / 'bundle.json'}: image_size is {size}, but backbone {meta['backbone']['name']!r} takes "
            f"{takes} px images only; accepted: its own size (re-export with `{reexport_hint(meta)}`)"
        )


def load_bundle(
    bundle_dir: str | Path, *, verify: bool = True, seed: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """Rebuild a bundle's model; with ``verify`` the backbone weights' sha256 must match.

    One member: its ``TunedModel``. Several: an :class:`EnsembleModel` of all of them, unless
    ``seed`` picks one. ``meta["members"]`` lists them (``seed``, ``file``, ``test_accuracy``).
    """
    from vptsearch.models import build_model, load_backbone

    meta = read_meta(bundle_dir)
    d, b = Path(meta["_dir"]), meta["backbone"]
    members = meta["members"]
    if seed is not None:
        members = [m for m in members if m["seed"] == seed]
        if not members:
            seeds = ", ".join(str(m["seed"]) for m in meta["members"])
            raise ConfigError(f"seed {seed} is not in bundle {str(d)!r}; accepted: {seeds}")
    # before the backbone (fail fast): each file's recorded sha256, and finite values only
    tensors = [read_member(m, meta) for m in members]
    backbone = load_backbone(b["name"], **_load_args(meta))
    _check_image_size(d, backbone, meta)
    if verify:
        if b.get("sha256") is None:
            raise ConfigError(
                f"bundle {str(d)!r} was trained on a backbone with random weights "
                "(no sha256 to verify); pass --no-verify to load it anyway"
            )
        if backbone.sha256 != b["sha256"]:
            raise ConfigError(
                f"backbone {b['name']!r} has sha256 {backbone.sha256}, but the bundle was trained on "
                f"{b['sha256']}; use the same weights file"
            )
    models = []
    for m, state in zip(members, tensors, strict=True):
        model = build_model(
            backbone, int(meta["num_classes"]), meta["method"], **meta.get("method_options", {})
        )
        _check_keys(d / m["file"], model, state, meta)
        try:
            model.load_trained_state_dict(state)
        except ConfigError as exc:  # a shape that does not fit: name the file
            raise ConfigError(f"{d / m['file']}: {exc}") from None
        models.append(model.eval())
    if len(models) == 1:
        return models[0], meta
    return EnsembleModel(models, [m["seed"] for m in members]).eval(), meta
