"""Exported bundles: one folder per task (see docs/search.md, bundle contract).

- ``prompts.safetensors``: the exported seed's trained tensors named as in the model's state dict
  (``prompt_tokens`` ``[L or 1, p, d]``, ``head.weight``, ``head.bias``, ``head_norm.*`` running
  statistics with ``head.norm: batchnorm``, plus method-specific ones);
- ``prompts-seed<S>.safetensors``: the same tensors of every further final seed (VPT's prompt
  ensemble, paper Fig. 15); ``bundle.json`` lists them under ``members``;
- ``bundle.json``: what rebuilding the model needs besides timm + safetensors: the backbone
  (``backbones info`` keys, and the weights file: name, sha256, where it comes from),
  preprocessing, method options, hyper-parameters, seeds and accuracies.

:func:`load_bundle` verifies the backbone's sha256 and, for a bundle of several seeds, returns the
ensemble that averages their logits (``seed=S`` picks one member). Every malformed part is one
line naming the file and what is accepted. Format 1 bundles (one seed, older backbone keys) load too.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptsearch._errors import ConfigError

BUNDLE_JSON, WEIGHTS = "bundle.json", "prompts.safetensors"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
REEXPORT = "vptsearch export --run-dir RUN_DIR"
_REQUIRED = ("num_classes", "method", "backbone", "image_size", "mean", "std")


def task_dirname(task: str) -> str:
    """``mini/digits`` -> ``mini__digits`` (one flat folder per task)."""
    return task.replace("/", "__")


def member_file(seed: int, exported: bool) -> str:
    """The exported seed keeps the plain name, so one-seed readers need nothing new."""
    return WEIGHTS if exported else f"prompts-seed{seed}.safetensors"


# --- writing ----------------------------------------------------------------------------------------
def _write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename (a reader never sees half a file) through open(), so the file gets the
    umask's mode like bundle.json; safetensors' own save_file creates 0600 files."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_meta(out_dir: str | Path, meta: Mapping[str, Any]) -> Path:
    path = Path(out_dir) / BUNDLE_JSON
    body = json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2, default=str)
    _write_bytes(path, body.encode())
    return path


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


# --- reading ----------------------------------------------------------------------------------------
def _hint(meta: Mapping[str, Any] | None = None) -> str:
    run_dir = (meta or {}).get("run_dir")
    return f"vptsearch export --run-dir {run_dir}" if run_dir else REEXPORT


def read_meta(bundle_dir: str | Path) -> dict[str, Any]:
    """``bundle.json`` of a bundle folder, checked: one line naming the file for anything malformed."""
    from vptsearch.search._exports import resolve_bundle_dir

    d = resolve_bundle_dir(bundle_dir)
    path = d / BUNDLE_JSON
    if not path.is_file() or not (d / WEIGHTS).is_file():
        raise ConfigError(f"{str(d)!r} is not a vptsearch bundle: expected {BUNDLE_JSON} and {WEIGHTS} in it")
    try:
        meta = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; expected the JSON a vptsearch export writes "
                          f"(re-export with `{REEXPORT}`)") from None  # fmt: skip
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}); expected the bundle.json "
            f"a vptsearch export writes (re-export with `{REEXPORT}`)"
        ) from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ConfigError(
            f"{path}: format_version {version!r}; this vptsearch reads "
            f"{', '.join(map(str, READABLE_VERSIONS))} (re-export with `{_hint(meta)}`)"
        )
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ConfigError(f"{path}: lacks key(s) {', '.join(missing)} (re-export with `{_hint(meta)}`)")
    _check_types(path, meta)
    meta["members"] = _members(path, meta)
    meta["_dir"] = str(d)
    return meta


def _check_types(path: Path, meta: Mapping[str, Any]) -> None:
    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"{path}: {key} is {meta.get(key)!r}; expected {what}")

    n = meta["num_classes"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise bad("num_classes", "an integer >= 1")
    if not isinstance(meta["image_size"], int) or meta["image_size"] < 1:
        raise bad("image_size", "an integer >= 1")
    for key in ("mean", "std"):
        v = meta[key]
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise bad(key, "a list of 3 numbers")
    if not isinstance(meta["backbone"], dict) or not isinstance(meta["backbone"].get("name"), str):
        raise ConfigError(f"{path}: backbone must be an object with a name; got {meta['backbone']!r}")
    if not isinstance(meta["method"], str):
        raise bad("method", "a method name")
    if not isinstance(meta.get("method_options", {}), dict):
        raise bad("method_options", "an object of build_model options")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == n):
        raise ConfigError(f"{path}: class_names must be a list of num_classes ({n}) names")


def _members(path: Path, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{seed, file, test_accuracy}]``; format 1 has one member, the exported seed."""
    if meta["format_version"] == 1 or "members" not in meta:
        return [
            {"seed": meta.get("exported_seed"), "file": WEIGHTS, "test_accuracy": meta.get("test_accuracy")}
        ]
    members = meta["members"]
    ok = isinstance(members, list) and members and all(
        isinstance(m, dict) and isinstance(m.get("seed"), int) and isinstance(m.get("file"), str)
        # a plain file name in this folder: a bundle must not make predict read elsewhere
        and m["file"] == Path(m["file"]).name and m["file"].endswith(".safetensors")
        for m in members
    )  # fmt: skip
    if not ok:
        raise ConfigError(
            f"{path}: members must be a non-empty list of {{seed: int, file: NAME.safetensors}} "
            f"(files in the bundle folder); got {members!r}"[:400]
        )
    for m in members:
        if not (path.parent / m["file"]).is_file():
            raise ConfigError(
                f"{path}: member seed {m['seed']} names {m['file']}, which is not in {path.parent}"
            )
    return [dict(m) for m in members]


def read_tensors(path: str | Path, meta: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """One safetensors file of a bundle; a truncated or foreign file is one line naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError (truncated, bad header), OSError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(
            f"{path}: not a readable safetensors file ({first}); expected the tensors a vptsearch "
            f"export writes (re-export with `{_hint(meta)}`)"
        ) from None


def read_bundle(bundle_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(bundle.json, the exported seed's tensors)``."""
    meta = read_meta(bundle_dir)
    return meta, read_tensors(Path(meta["_dir"]) / WEIGHTS, meta)


# --- the backbone record ------------------------------------------------------------------------------
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


# --- loading ------------------------------------------------------------------------------------------
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
            f"(re-export with `{_hint(meta)}`)"
        )
    raise ConfigError(
        f"{path}: tensors do not fit {what}: missing {', '.join(missing) or 'none'}, "
        f"unexpected {', '.join(unexpected) or 'none'} (re-export with `{_hint(meta)}`)"
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
    tensors = [read_tensors(d / m["file"], meta) for m in members]  # before the backbone: fail fast
    backbone = load_backbone(b["name"], **_load_args(meta))
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


# --- images and predictions -------------------------------------------------------------------------
def _read_image(path: str | Path) -> Any:
    """An RGB uint8 array; unreadable, truncated or oversized images are one line naming the file."""
    import numpy as np
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse both the same way
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB")).copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ConfigError(
            f"image {str(path)!r} has more pixels than the {limit} accepted (PIL's decompression-bomb "
            "limit, Image.MAX_IMAGE_PIXELS); resize it first"
        ) from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise ConfigError(
            f"cannot read image {str(path)!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


def preprocess(paths: Sequence[str | Path], meta: Mapping[str, Any]) -> torch.Tensor:
    """Images -> float [N, 3, S, S] through the task's own evaluation transform (the one the model
    was trained and tested with: antialiased resize, FGVC centre crop, backbone normalisation)."""
    return torch.stack([_transform(meta)(torch.from_numpy(_read_image(p)).permute(2, 0, 1)) for p in paths])


def _transform(meta: Mapping[str, Any]) -> Any:
    from vptsearch.data._transforms import sample_transform

    return sample_transform(
        meta.get("preprocessing", "vtab"), int(meta["image_size"]), meta["mean"], meta["std"], train=False
    )


@torch.inference_mode()
def predict(
    bundle_dir: str | Path,
    images: Sequence[str | Path],
    *,
    verify: bool = True,
    top_k: int = 1,
    seed: int | None = None,
    errors: str = "raise",
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Predictions for image files: ``[{image, label, class_name, prob, top}]`` in input order.

    A bundle of several seeds predicts with their ensemble (mean logits) unless ``seed`` picks one.
    ``errors="collect"``: an unreadable image gives ``{image, error}`` instead of raising, and
    the other images are still predicted.
    """
    if not images:
        raise ConfigError("no images given; pass one or more image files after --bundle DIR")
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"--top-k {top_k!r}: expected an integer >= 1")
    if errors not in ("raise", "collect"):
        raise ConfigError(f"errors={errors!r}; accepted: raise, collect")
    model, meta = load_bundle(bundle_dir, verify=verify, seed=seed)
    names = meta.get("class_names") or [str(i) for i in range(int(meta["num_classes"]))]
    transform = _transform(meta)
    out: list[dict[str, Any]] = [{"image": str(p)} for p in images]
    good: list[tuple[int, torch.Tensor]] = []
    for i, p in enumerate(images):
        try:
            good.append((i, transform(torch.from_numpy(_read_image(p)).permute(2, 0, 1))))
        except ConfigError as exc:
            if errors == "raise":
                raise
            out[i]["error"] = str(exc)
    for start in range(0, len(good), batch_size):  # bounded memory for many images
        chunk = good[start : start + batch_size]
        probs = model(torch.stack([x for _, x in chunk])).softmax(-1)
        for (i, _), p in zip(chunk, probs, strict=True):
            values, idx = p.topk(min(top_k, len(names)))
            out[i].update(
                label=int(idx[0]),
                class_name=names[int(idx[0])],
                prob=float(values[0]),
                top=[(names[int(j)], float(v)) for v, j in zip(values, idx, strict=True)],
            )
    return out


def evaluate_bundle(
    bundle_dir: str | Path,
    split: str | None = None,
    root: str | None = None,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> float:
    """Accuracy of a bundle (its ensemble, or member ``seed``) on its task's test split (or ``split``).

    ``seed=exported_seed`` reproduces ``test_accuracy``; the default (all members) reproduces
    ``ensemble.test_accuracy`` for a bundle of several seeds.
    """
    from vptsearch.data import get_task, make_loader
    from vptsearch.train import evaluate

    meta = read_meta(bundle_dir)
    model, meta = load_bundle(bundle_dir, verify=meta["backbone"].get("sha256") is not None, seed=seed)
    info = get_task(meta["task"], root)
    loader = make_loader(
        meta["task"],
        split or info.final_splits[1],
        root=root,
        batch_size=256,
        image_size=int(meta["image_size"]),
        mean=meta["mean"],
        std=meta["std"],
        train=False,
    )
    return evaluate(model.to(device), loader, precision)[0]


def meta_has_sha(bundle_dir: str | Path) -> bool:
    return read_meta(bundle_dir)["backbone"].get("sha256") is not None
