"""Exported bundles: one folder per task (see docs/search.md, bundle contract).

- ``prompts.safetensors``: the exported seed's trained tensors named as in the model's state dict
  (``prompt_tokens`` ``[L or 1, p, d]``, ``head.weight``, ``head.bias``, ``head_norm.*`` running
  statistics with ``head.norm: batchnorm``, plus method-specific ones);
- ``prompts-seed<S>.safetensors``: the same tensors of every further final seed (VPT's prompt
  ensemble, paper Fig. 15); ``bundle.json`` lists them under ``members``;
- ``bundle.json``: what rebuilding the model needs besides timm + safetensors: the backbone
  (``backbones info`` keys, and the weights file: name, sha256, where it comes from),
  preprocessing, method options, hyper-parameters, seeds and accuracies.

:func:`load_bundle` verifies the backbone's sha256 and each member file's own (recorded in
``members`` when the bundle is written; bundles written before that have none and still load),
refuses NaN or inf tensors and, for a bundle of several seeds, returns the ensemble that averages
their logits (``seed=S`` picks one member). Every malformed part is one line naming the file and
what is accepted. Format 1 bundles (one seed, older backbone keys) load too.

This module writes bundles and holds the bundle API; the parts live beside it: the files and their
checks in :mod:`._bundle_format`, rebuilding the model in :mod:`._bundle_load`, predictions and
evaluation in :mod:`._bundle_predict`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vptsearch._hashing import sha256_file
from vptsearch.search._bundle_format import (
    BUNDLE_JSON,
    FORMAT_VERSION,
    member_file,
    read_bundle,
    read_meta,
    read_tensors,
    task_dirname,
)
from vptsearch.search._bundle_load import EnsembleModel, load_bundle
from vptsearch.search._bundle_predict import evaluate_bundle, predict, preprocess

# the bundle API, wherever its part lives (the driver, the package's lazy names and tests use these)
__all__ = [
    "EnsembleModel",
    "backbone_record",
    "evaluate_bundle",
    "load_bundle",
    "member_file",
    "predict",
    "preprocess",
    "read_bundle",
    "read_meta",
    "read_tensors",
    "task_dirname",
    "write_bundle",
    "write_meta",
]


def _write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename (a reader never sees half a file) through open(), so the file gets the
    umask's mode like bundle.json; safetensors' own save_file creates 0600 files."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no half-written temp file left in the bundle
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_meta(out_dir: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write bundle.json, after the member files: each member gets the sha256 of its file as it is
    in the folder now, so a later change to a bundle's tensors is refused at load."""
    out = Path(out_dir)
    record = {"format_version": FORMAT_VERSION, **meta}
    if "members" in meta:
        record["members"] = [{**m, "sha256": sha256_file(out / m["file"])} for m in meta["members"]]
    body = json.dumps(record, indent=2, default=str)
    _write_bytes(out / BUNDLE_JSON, body.encode())
    return out / BUNDLE_JSON


def write_bundle(
    out_dir: str | Path, states: Mapping[int, Mapping[str, torch.Tensor]], meta: Mapping[str, Any]
) -> Path:
    """Write one bundle folder: every member of ``meta["members"]`` (``{seed, file}``) from
    ``states[seed]``, then bundle.json; returns the folder."""
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = set()
    for m in meta["members"]:
        tensors = {k: v.detach().contiguous().cpu() for k, v in states[int(m["seed"])].items()}
        _write_bytes(out / m["file"], save(tensors))
        files.add(m["file"])
    for stale in out.glob("prompts-seed*.safetensors"):  # a re-export with fewer seeds
        if stale.name not in files:
            stale.unlink()
    write_meta(out, meta)
    return out


def backbone_record(backbone: Any, name: str, weights: str | None) -> dict[str, Any]:
    """``bundle.json``'s ``backbone``: the identity keys of ``vptsearch backbones info`` (name,
    architecture = the timm model name, model_kwargs = every timm kwarg, source, sha256) plus
    ``weights``, the file loading needs: name, sha256 and where it comes from."""
    return {
        "name": name,
        "architecture": backbone.architecture,
        "model_kwargs": dict(backbone.model_kwargs),
        "source": backbone.source,
        "sha256": backbone.sha256,
        "weights": _weights_file(backbone, name, weights),
    }


def _weights_file(backbone: Any, name: str, weights: str | None) -> dict[str, Any] | None:
    import vptsearch
    from vptsearch.models.backbones import BACKBONES

    if backbone.source == "random":
        return None  # nothing to fetch: the architecture with random init
    if name in BACKBONES:
        entry = BACKBONES.get(name)
        path = entry.weights_path
        if backbone.source == "shipped":
            package_root = Path(vptsearch.__file__).resolve().parent.parent
            with_pkg = (
                path.resolve().relative_to(package_root)
                if path.resolve().is_relative_to(package_root)
                else path
            )
            return {"file": path.name, "sha256": backbone.sha256, "from": "shipped",
                    "location": str(with_pkg), "obtain": "ships with the vptsearch package"}  # fmt: skip
        return {"file": path.name, "sha256": backbone.sha256, "from": "registered",
                "location": str(path), "obtain": entry.missing_hint}  # fmt: skip
    if backbone.source == "hub":
        import timm

        from vptsearch.models.backbones import _hub_cached_file

        cfg = timm.models.get_pretrained_cfg(backbone.architecture)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        cached = _hub_cached_file(backbone.architecture)
        return {
            "file": Path(cached).name if cached else None,
            "sha256": backbone.sha256,
            "from": "hub",
            "location": f"hf-hub:{repo}" if repo else f"timm:{backbone.architecture}",
            "obtain": f"timm.create_model({backbone.architecture!r}, pretrained=True) downloads it",
        }
    path = Path(weights if weights and weights not in ("hub", "shipped") else name).expanduser().resolve()
    return {"file": path.name, "sha256": backbone.sha256, "from": "path", "location": str(path),
            "obtain": "this local file: copy it along with the bundle"}  # fmt: skip
