"""The probe reference: a standardised logistic regression on a backbone's frozen features.

It answers "is this search's result below what the features alone give?". Protocol (the launch's
own, see docs/search.md "The probe reference"):

- features: ``build_model(backbone, num_classes, "linear").forward_features`` (the final-norm CLS
  token, or the backbone's own pooling + ``fc_norm``: exactly what a ``linear`` trial's head sees),
  over each split with the task's evaluation preprocessing (``make_loader(..., train=False)``);
- every feature dimension standardised with the training split's mean and sd (``StandardScaler``),
  then an L2-regularised multinomial ``LogisticRegression`` (lbfgs);
- ``C`` chosen from :data:`C_GRID` by accuracy on the search splits (fit ``train800``, score
  ``val200``; ties go to the smaller C), then refitted on the final train split
  (``train800val200``) and scored once on ``test``: search splits choose, final splits report.

Results are cached per (backbone sha256, task, manifest digest, probe settings) in
``<task folder>/probes/`` (or ``~/.cache/vptsearch/probes/`` when that is not writable), so a
launch or a second CLI call does not recompute them.

Also here: the pretrained-vs-random probe recorded in the shipped backbones' model cards
(:func:`probe_card`, used by ``pipelines/pretrain_tiny_backbones.py``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vptsearch._errors import VptsearchError
from vptsearch._hashing import sha256_bytes
from vptsearch._linear_probe import (  # noqa: F401  (the solver's names are part of this module's API)
    C_GRID,
    MAX_ITER,
    LinearFit,
    Split,
    choose_c,
    extract_features,
    fit_score,
    fit_standardised,
    predict,
)

PROBE_VERSION = 1  # bump when the protocol changes: cached results of other versions are ignored
CACHE_DIR = "probes"


# --- features and the classifier ---------------------------------------------------------------
def split_features(
    model: nn.Module,
    task: str,
    split: str,
    *,
    root: str | os.PathLike | None,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
) -> Split:
    """Features of one split, preprocessed exactly as a trial evaluates it."""
    from vptsearch.data import make_loader

    loader = make_loader(
        task, split, root=root, batch_size=batch_size, image_size=image_size, mean=mean, std=std, train=False
    )
    return extract_features(model, loader)


def select_and_report(
    feats: dict[str, Split],
    search_splits: tuple[str, str],
    final_splits: tuple[str, str],
    c_grid: Sequence[float] = C_GRID,
    max_iter: int = MAX_ITER,
) -> dict[str, Any]:
    """The protocol on precomputed features: C by val accuracy, then refit and test once."""
    fit, val = search_splits
    best_c, val_by_c, _ = choose_c(feats[fit], feats[val], c_grid, max_iter)
    train, test = final_splits
    return {
        "C": best_c,
        "val_acc": val_by_c[best_c],
        "test_acc": fit_score(feats[train], feats[test], best_c, max_iter),
        "val_acc_by_C": {str(c): a for c, a in val_by_c.items()},
    }


# --- the product probe -------------------------------------------------------------------------
def manifest_digest(manifest: Any, splits: Iterable[str]) -> str:
    """sha256 of what the probe reads: task, class names and every shard (name, count, sha256)."""
    shards = [
        (s.split, s.name, s.num_samples, s.sha256) for split in splits for s in manifest.split_shards(split)
    ]
    blob = json.dumps([manifest.task.name, list(manifest.class_names), shards])
    return sha256_bytes(blob.encode())


def probe_key(
    backbone: Any,
    task: str,
    digest: str,
    *,
    image_size: int,
    c_grid: Sequence[float],
    max_iter: int,
    splits: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """Everything a cached result depends on (compared in full when a cache file is read)."""
    return {
        "version": PROBE_VERSION,
        "backbone_sha256": backbone.sha256,
        "architecture": backbone.architecture,
        "model_kwargs": dict(backbone.model_kwargs),
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "task": task,
        "manifest_digest": digest,
        "image_size": int(image_size),
        "C_grid": [float(c) for c in c_grid],
        "max_iter": int(max_iter),
        "splits": {k: list(v) for k, v in splits.items()},
    }


def _cache_files(location: Path | str, task: str, key: dict[str, Any]) -> list[Path]:
    name = sha256_bytes(json.dumps(key, sort_keys=True).encode())[:20] + ".json"
    fallback = Path.home() / ".cache" / "vptsearch" / CACHE_DIR / task / name
    return [Path(location) / CACHE_DIR / name, fallback] if isinstance(location, Path) else [fallback]


def _read_cache(files: list[Path], key: dict[str, Any]) -> dict[str, Any] | None:
    for f in files:
        try:
            stored = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(stored, dict) and stored.get("key") == key:
            return dict(stored["result"])
    return None


def _write_cache(files: list[Path], key: dict[str, Any], result: dict[str, Any]) -> None:
    for f in files:  # the task folder first; a read-only data root falls back to the user cache
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, "result": result}, indent=1) + "\n")
            tmp.replace(f)
            return
        except OSError:
            continue


def probe_task(
    backbone: Any,
    task: str,
    *,
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    batch_size: int = 256,
    c_grid: Sequence[float] = C_GRID,
    max_iter: int = MAX_ITER,
    device: str | torch.device | None = None,
    cache: bool = True,
) -> dict[str, Any]:
    """Probe ``backbone`` (a ``Backbone`` record from ``load_backbone``) on ``task``.

    Returns ``task``, ``backbone``, ``C``, ``val_acc`` (fit on the search train split, on val),
    ``test_acc`` (refit on the final train split, on test), ``val_acc_by_C``, ``splits``,
    ``num_features``, ``image_size``, ``seconds`` (of the computation) and ``cached``.
    ``device``: where the features are computed (default: cuda when available, else cpu).
    A result whose backbone has no sha256 (random weights) is never cached.
    """
    from vptsearch.data import get_task, read_manifest
    from vptsearch.models import build_model

    info = get_task(task, root)
    manifest = read_manifest(info, root)
    size = int(image_size or backbone.image_size)
    splits = {"select": info.search_splits, "report": info.final_splits}
    used = list(dict.fromkeys([*info.search_splits, *info.final_splits]))
    key = probe_key(
        backbone, info.name, manifest_digest(manifest, used),
        image_size=size, c_grid=c_grid, max_iter=max_iter, splits=splits,
    )  # fmt: skip
    files = _cache_files(manifest.location, info.name, key)
    if cache and backbone.sha256:
        hit = _read_cache(files, key)
        if hit is not None:
            return {**hit, "cached": True}

    t0 = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(backbone, info.num_classes, method="linear").to(dev)
    feats = {
        s: split_features(model, info.name, s, root=root, image_size=size,
                          mean=backbone.mean, std=backbone.std, batch_size=batch_size)
        for s in used
    }  # fmt: skip
    result = {
        "task": info.name,
        "backbone": backbone.name,
        "backbone_sha256": backbone.sha256,
        **select_and_report(feats, info.search_splits, info.final_splits, c_grid, max_iter),
        "splits": {k: list(v) for k, v in splits.items()},
        "num_features": int(feats[used[0]][0].shape[1]),
        "num_samples": {s: len(feats[s][1]) for s in used},
        "image_size": size,
        "protocol": PROTOCOL,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if cache and backbone.sha256:
        _write_cache(files, key, result)
    return {**result, "cached": False}


PROTOCOL = (
    "standardised (train-split statistics) L2 logistic regression on frozen linear-method features; "
    "C chosen on the search splits, refit on the final train split, accuracy on test"
)


def launch_probes(spec: Any, tasks: Sequence[str], say: Callable[[str], Any] = print) -> dict[str, Any]:
    """The probe of every task of a launch, in the driver (``protocol.probe``; cached, see above).

    A task whose probe fails gets ``None`` and one printed line: the reference must never cost a
    finished search its results.
    """
    from vptsearch.data import clear_cache
    from vptsearch.train import get_backbone

    backbone = get_backbone(spec)
    size = spec.training.image_size or backbone.image_size
    out: dict[str, Any] = {}
    for task in tasks:
        try:
            r = probe_task(
                backbone, task, root=spec.data_root, image_size=size, batch_size=spec.training.eval_batch_size
            )
        except (VptsearchError, ValueError, RuntimeError) as exc:
            say(f"  probe {task}: skipped ({str(exc).splitlines()[0][:200]})")
            out[task] = None
            continue
        finally:
            clear_cache()  # the driver keeps no decoded splits (a VTAB test split is gigabytes)
        how = "cached" if r["cached"] else f"{r['seconds']:.1f} s"
        say(f"  probe {task}: val {100 * r['val_acc']:.2f} %, test {100 * r['test_acc']:.2f} % "
            f"(C={r['C']:g}, {how})")  # fmt: skip
        out[task] = r
    return out


# --- the model cards' pretrained-vs-random probe (pipelines/pretrain_tiny_backbones.py) ---------
def probe(
    model: nn.Module,
    random_model: nn.Module,
    tasks: Sequence[str],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train_split: str = "train800",
    test_split: str = "test",
    root: Path | None = None,
) -> dict[str, Any]:
    """Per task: card-protocol probe accuracy (C=1, train -> test) of ``model`` and of
    ``random_model`` (timm ViTs); plus the means."""
    from vptsearch.data import get_task
    from vptsearch.models import build_model

    per_task: dict[str, dict[str, float]] = {}
    for task in tasks:
        n_cls = get_task(task, root).num_classes
        row = {}
        for key, m in (("pretrained", model), ("random", random_model)):
            tuned = build_model(m, n_cls, method="linear")
            kw: dict[str, Any] = dict(root=root, image_size=image_size, mean=mean, std=std)
            train, test = (split_features(tuned, task, s, **kw) for s in (train_split, test_split))
            row[key] = round(fit_score(train, test, C=1.0, max_iter=2000), 4)
        per_task[task] = row
    n = max(1, len(per_task))
    return {
        "protocol": f"sklearn LogisticRegression(C=1, standardised features) on frozen pooled features of "
        f"{train_split}, accuracy on {test_split}; 'random' = same architecture, torch.manual_seed(0) init",
        "data": "mini suite built by vptsearch.data.build_mini "
        f"(deterministic; mini_version {_mini_version()})",
        "tasks": per_task,
        "mean_pretrained": round(sum(r["pretrained"] for r in per_task.values()) / n, 4),
        "mean_random": round(sum(r["random"] for r in per_task.values()) / n, 4),
    }


def _mini_version() -> str:
    try:
        from vptsearch.data._mini import MINI_VERSION
    except ImportError:  # pragma: no cover - the data package names it differently
        return "unknown"
    return str(MINI_VERSION)


def probe_card(
    card_path: Path, tasks: Sequence[str] | None = None, root: Path | None = None
) -> dict[str, Any]:
    """Probe the weights next to ``card_path`` on the mini suite and store the result in the card."""
    import timm
    from safetensors.torch import load_file

    from vptsearch.data import list_tasks

    card = json.loads(card_path.read_text())

    def build() -> nn.Module:
        return timm.create_model(
            card["architecture"], pretrained=False, num_classes=0, **card["model_kwargs"]
        )

    model = build()
    model.load_state_dict(load_file(str(card_path.with_suffix(".safetensors"))))
    torch.manual_seed(0)
    random_model = build()
    tasks = list(tasks) if tasks is not None else list_tasks("mini")
    result = probe(
        model,
        random_model,
        tasks,
        image_size=card["image_size"],
        mean=card["mean"],
        std=card["std"],
        root=root,
    )
    card["linear_probe"] = result
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return result
