"""Image folders the import tests build: one sub-folder per class, or a task folder with list files;
tiny PNGs of known values."""

from __future__ import annotations

import numpy as np
from PIL import Image


def class_tree(src, names, per_class=4):
    """One folder per class; every image of class ``name`` is filled with a value derived from it."""
    for ci, name in enumerate(names):
        for i in range(per_class):
            path = src / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 10 * ci + i, dtype=np.uint8)).save(path)
    return {10 * ci + i: name for ci, name in enumerate(names) for i in range(per_class)}


VTAB = {"train800": 9, "val200": 3, "test": 6}


def make_task_folder(base, counts=VTAB, k=3, size=8, trainval: str | None = "train800val200", seed=0):
    """``base/images/<split>/<i>.png`` plus ``<split>.txt`` lists (label ``i % k``); returns the pixels."""
    pixels, lists, n = {}, {}, seed * 1000
    for split, count in counts.items():
        lines = []
        for _ in range(count):
            rel = f"images/{split}/{n}.png"
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            img = np.random.default_rng(n).integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(base / rel)
            pixels[rel] = img
            lines.append(f"{rel} {n % k}")
            n += 1
        lists[split] = lines
    if trainval:
        first, second = list(counts)[:2]
        lists[trainval] = lists[first] + lists[second]
    for split, lines in lists.items():
        (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return pixels, lists
