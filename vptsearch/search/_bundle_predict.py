"""A bundle at work: images through the task's own evaluation transform, predictions, and the
accuracy on a split of its task."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vptsearch._errors import ConfigError, DataError
from vptsearch.search._bundle_format import read_meta
from vptsearch.search._bundle_load import load_bundle


def _read_image(path: str | Path) -> Any:
    """An RGB uint8 array; unreadable, truncated or oversized images are one line naming the file."""
    from PIL import Image

    from vptsearch.data._codec import to_rgb

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse both the same way
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return to_rgb(img)  # the importers' conversion: 16-bit, float, alpha as in training
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
        logits = model(torch.stack([x for _, x in chunk]))
        _check_finite_outputs(bundle_dir, logits, [images[i] for i, _ in chunk])
        probs = logits.softmax(-1)
        for (i, _), p in zip(chunk, probs, strict=True):
            values, idx = p.topk(min(top_k, len(names)))
            out[i].update(
                label=int(idx[0]),
                class_name=names[int(idx[0])],
                prob=float(values[0]),
                top=[(names[int(j)], float(v)) for v, j in zip(values, idx, strict=True)],
            )
    return out


def _check_finite_outputs(bundle_dir: str | Path, logits: torch.Tensor, images: Sequence[str | Path]) -> None:
    """Finite tensors can still give NaN/inf logits (a backbone loaded with --no-verify, an
    overflow): refuse them rather than print ``nan`` probabilities (``--json`` would emit ``NaN``,
    which is not JSON)."""
    bad = ~torch.isfinite(logits).all(-1)
    if bool(bad.any()):
        image = images[int(bad.nonzero()[0, 0])]
        raise DataError(
            f"bundle {str(bundle_dir)!r} gave non-finite outputs (NaN or inf) for image {str(image)!r}; "
            "accepted: finite logits only (check the backbone weights, or run without --no-verify)"
        )


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
