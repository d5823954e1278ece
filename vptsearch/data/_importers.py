"""Importers for the layouts users arrive with.

- VTAB-1k extracted folders and plain train/val/test lists: see :mod:`vptsearch.data._import_lists`.
- FGVC in the VPT json layout: ``train.json``, ``val.json`` (optional: else a seeded 90/10 split of
  train), ``test.json`` mapping image path -> label.
- A generic image folder (one sub-folder per class) with a seeded VTAB-style 800/200/test split.

Images are stored as they are (PNG/JPEG bytes, after checking they decode) unless ``resize`` asks
for ``resize x resize`` JPEGs. Every importer writes through :func:`write_task`, so bad input
raises one DataError and leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vptsearch._errors import DataError, unknown
from vptsearch._hashing import sha256_file
from vptsearch.data._import_common import (
    check_name,
    image_inside,
    image_sample,
    refuse_mini,
    refuse_rebuild,
    target_name,
)
from vptsearch.data._lookup import get_task, list_tasks
from vptsearch.data._tasks import CUSTOM_SUITE, TASKS, TaskInfo
from vptsearch.data._writer import Sample, check_class_names, write_task

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IMAGE_SUFFIXES |= {".ppm", ".pgm", ".pbm", ".pnm"}  # netpbm: 16-bit grey often comes as .pgm


# --- FGVC json -----------------------------------------------------------------------------------


def _read_json(path: Path) -> list[tuple[str, int]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must map image path -> integer label, got {type(data).__name__}")
    out = []
    for rel, label in sorted(data.items()):
        if isinstance(label, bool) or not isinstance(label, int):
            raise DataError(f"{path}: label of {rel!r} must be an integer, got {label!r}")
        out.append((rel, label))
    return out


def _image_base(src: Path, images_dir: Path | None, first: str) -> Path:
    candidates = [images_dir] if images_dir else [src, src / "images", src / "Images", src / "jpg"]
    for base in candidates:
        if base is not None and (base / first).is_file():
            return base
    raise DataError(
        f"image {first!r} (first entry of train.json) is not under "
        f"{', '.join(str(c) for c in candidates)}; pass --images-dir"
    )


def _class_names(entries: list[tuple[str, int]], k: int) -> list[str]:
    """Use the first path component as class name when it maps one-to-one onto labels (CUB, dogs...)."""
    names: dict[int, set[str]] = {}
    for rel, label in entries:
        parts = Path(rel).parts
        names.setdefault(label, set()).add(parts[0] if len(parts) > 1 else "")
    if names and all(len(v) == 1 and "" not in v for v in names.values()):
        chosen = {label: next(iter(v)) for label, v in names.items()}
        if len(set(chosen.values())) == len(chosen):  # labels without images keep their number
            return [chosen.get(i, str(i)) for i in range(k)]
    return [str(i) for i in range(k)]


def import_fgvc(
    src: str | os.PathLike,
    task: str,
    *,
    root: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    resize: int | None = None,
    overwrite: bool = False,
) -> str:
    """Import an FGVC task from the VPT json layout; without ``val.json`` a seeded 90/10 split of train.

    An already built task is replaced only with ``overwrite=True``.
    """
    name = task if "/" in task else f"fgvc/{task}"
    if name not in list_tasks("fgvc"):
        raise unknown("FGVC task", task, [t.split("/", 1)[1] for t in list_tasks("fgvc")])
    info = get_task(name)
    refuse_rebuild(info.name, root, overwrite)
    src = Path(src).expanduser()
    if not (src / "train.json").is_file() or not (src / "test.json").is_file():
        raise DataError(
            f"{src} must contain train.json and test.json (and optionally val.json) mapping image -> label"
        )
    train = _read_json(src / "train.json")
    test = _read_json(src / "test.json")
    if (src / "val.json").is_file():
        val = _read_json(src / "val.json")
        how = "val.json"
    else:
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, round(len(train) * val_fraction))
        val = [train[i] for i in sorted(order[:n_val])]
        train = [train[i] for i in sorted(order[n_val:])]
        how = f"seeded split of train.json (seed {seed}, val fraction {val_fraction})"
    if not train:
        raise DataError(f"{src / 'train.json'} is empty")
    base = _image_base(src, Path(images_dir).expanduser() if images_dir else None, train[0][0])
    val_from = "val.json" if (src / "val.json").is_file() else "train.json"
    for file, entries in (("train.json", train), (val_from, val), ("test.json", test)):
        for rel, _ in entries:
            image_inside(base, rel, f"listed in {file}")  # before any image is read

    def samples(entries: list[tuple[str, int]]) -> Iterator[Sample]:
        for rel, label in entries:
            yield image_sample(base / rel, Path(rel).with_suffix("").as_posix(), label, resize)

    splits = {
        "train": samples(train),
        "val": samples(val),
        "trainval": samples(sorted(train + val)),
        "test": samples(test),
    }
    params = {
        "source": str(src.resolve()),
        "images": str(base.resolve()),
        "val": how,
        "resize": resize,
        "json_sha256": {p.name: sha256_file(p) for p in sorted(src.glob("*.json"))},
    }
    write_task(
        info,
        splits,
        class_names=_class_names(train + val + test, info.num_classes),
        builder="import-fgvc",
        params=params,
        root=root,
        overwrite=overwrite,
    )
    return info.name


def class_folder_order(names: list[str], src: Path) -> list[str]:
    """Class folders in label order: numerically when all are numbers, else as text.

    Text order puts ``10`` before ``2``; a mix of numbers and words, or names whose numbers would
    sort differently as text (``class2``, ``class10``), are refused rather than guessed.
    """
    names = sorted(names)  # directory listing order varies: errors name the same folders every time
    if all(n.isascii() and n.isdigit() for n in names):
        by_value: dict[int, list[str]] = {}
        for n in names:
            by_value.setdefault(int(n), []).append(n)
        clash = next((v for v in by_value.values() if len(v) > 1), None)
        if clash:
            raise DataError(
                f"class folders {clash[0]!r} and {clash[1]!r} in {src} are the same number; "
                "accepted: distinct numbers (labels follow their numeric order) or names"
            )
        return sorted(names, key=int)
    numeric = [n for n in names if n.isascii() and n.isdigit()]
    if numeric:
        word = next(n for n in names if n not in numeric)
        raise DataError(
            f"class folders in {src} mix numbers ({numeric[0]!r}) and names ({word!r}), so their label "
            "order is ambiguous; accepted: all numbers (sorted numerically) or all names (sorted as text)"
        )
    as_text = sorted(names)
    natural = sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
    if natural != as_text:
        i = next(i for i, (a, b) in enumerate(zip(as_text, natural, strict=True)) if a != b)
        raise DataError(
            f"class folders {as_text[i]!r} and {natural[i]!r} in {src} sort differently as text and by "
            "their numbers, so their label order is ambiguous; accepted: zero-padded numbers "
            "(class02, class10) or plain numbers (2, 10)"
        )
    return as_text


# --- generic image folder ------------------------------------------------------------------------


def _class_files(src: Path) -> tuple[list[str], list[tuple[str, Path]]]:
    """The class folders of ``src`` in label order, and every image under them as ``(class, path)``."""
    classes = class_folder_order(
        [p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")], src
    )
    if len(classes) < 2:
        raise DataError(f"image folder {src} needs at least 2 class sub-folders, found {len(classes)}")
    check_class_names(classes, f"class folders of {src}")  # a folder name may hold a newline or tab
    files = [
        (c, p) for c in classes for p in sorted((src / c).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    seen: dict[Path, str] = {}
    for _, p in files:  # a symlink out of the folder would copy that file into the shards
        rel = str(p.relative_to(src))
        real = image_inside(src, rel, "in the image folder")
        if real in seen:  # a symlink to another image or class folder: one image, two samples
            raise DataError(
                f"image {rel!r} in {src} is the same file as {seen[real]!r} (through a symlink): it would "
                "be two samples, maybe one in train and one in test; accepted: each image once"
            )
        seen[real] = rel
    if len(files) < 10:
        raise DataError(
            f"image folder {src} has {len(files)} images; at least 10 are needed for train/val/test"
        )
    return classes, files


def _folder_task(task: str, src: Path, num_classes: int) -> TaskInfo:
    """The registered task ``task`` (its class count must match), or a new one of that name."""
    if task in TASKS:
        refuse_mini(task, src)
        info = TASKS.get(task)
        if info.num_classes != num_classes:
            raise DataError(
                f"task {task!r} has {info.num_classes} classes but {src} has {num_classes} class folders"
            )
        return info
    target_name(task)  # a new name inside vtab1k/, fgvc/ or mini/ is refused
    return TaskInfo(
        name=task,
        suite=task.split("/", 1)[0],
        group="custom",
        num_classes=num_classes,
        build_hint=f"vptsearch data import-folder {src} --task {task}",
    )


def import_folder(
    src: str | os.PathLike,
    task: str,
    *,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    n_train: int = 800,
    n_val: int = 200,
    resize: int | None = None,
    overwrite: bool = False,
) -> str:
    """Import ``src/<class>/<image>`` as a VTAB-shaped task: seeded train800 / val200 / test (the rest).

    With fewer than ``2 * (n_train + n_val)`` images, train+val shrinks to half of them (80/20).
    Labels follow :func:`class_folder_order`. A built task is replaced only with ``overwrite=True``.
    """
    src = Path(src).expanduser()
    if not src.is_dir():
        raise DataError(f"image folder {src} does not exist")
    if "/" not in task:
        task = f"{CUSTOM_SUITE}/{task}"
    check_name(task, src)  # `--task ../x` or `/tmp/x` would be written outside the data root
    refuse_rebuild(task, root, overwrite)
    classes, files = _class_files(src)
    info = _folder_task(task, src, len(classes))
    label_of = {c: i for i, c in enumerate(classes)}
    n_tv = min(n_train + n_val, len(files) // 2)
    n_tr = n_train if n_tv == n_train + n_val else round(n_tv * n_train / (n_train + n_val))
    order = np.random.default_rng(seed).permutation(len(files))
    parts = {
        "train800": order[:n_tr],
        "val200": order[n_tr:n_tv],
        "train800val200": order[:n_tv],
        "test": order[n_tv:],
    }

    def samples(idx: np.ndarray) -> Iterator[Sample]:
        for i in sorted(idx.tolist()):
            c, p = files[i]
            key = f"{c}/{p.relative_to(src / c).with_suffix('').as_posix()}"
            yield image_sample(p, key, label_of[c], resize)

    params = {
        "source": str(src.resolve()),
        "seed": seed,
        "n_train": n_tr,
        "n_val": n_tv - n_tr,
        "resize": resize,
    }
    write_task(
        info,
        {s: samples(idx) for s, idx in parts.items()},
        class_names=classes,
        builder="import-folder",
        params=params,
        root=root,
        overwrite=overwrite,
    )
    return info.name
