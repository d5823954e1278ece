"""Image folders the import tests build: one sub-folder per class, tiny PNGs of known values."""

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
