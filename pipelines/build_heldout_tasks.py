"""Two held-out tasks the mini suite never had, as VTAB-1k list folders (for ``import-vtab``).

    .venv/bin/python pipelines/build_heldout_tasks.py --out /tmp/heldout
    .venv/bin/vptsearch data import-vtab /tmp/heldout/count --task heldout_count
    .venv/bin/vptsearch data import-vtab /tmp/heldout/crops --task heldout_crops
    .venv/bin/vptsearch launch --space search_spaces/mini_deep.yaml \\
        --set 'suite=[custom/heldout_count, custom/heldout_crops]' --set name=heldout

What they are for: a search recipe tuned on the mini suite may only fit the mini suite. These are
new tasks of both kinds a user brings, made the way a user's own data arrives (image files and
``train800.txt`` / ``val200.txt`` / ``test.txt`` lists), so the recipe is checked where it was not
tuned (issue "Tuned beats untuned"):

- ``count`` (structured, 6 classes): how many coloured discs (1-6) lie on a noisy 32 px canvas.
  Counting is what the mini suite's CLEVR look-alike asks too, but with other shapes, colours,
  noise and sizes.
- ``crops`` (natural, 8 classes): which of eight photographs shipped with scikit-image a random
  48 px crop (resized to 32 px, maybe mirrored) comes from; none of them is in the mini suite
  (its textures are brick / grass / gravel).

Deterministic (seeded): every run writes identical images and lists. 2 000 images per task
(800 train, 200 val, 1 000 test); ~10 s on 2 cores.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
SPLITS = {"train800": 800, "val200": 200, "test": 1000}
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "camera",
)


def count_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """``label + 1`` discs of random colour and radius on a noisy background, barely overlapping."""
    img = rng.normal(rng.uniform(40, 110), 18, (SIZE, SIZE, 3))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centres: list[tuple[float, float, float]] = []
    while len(centres) < label + 1:
        r = rng.uniform(2.0, 4.0)
        cy, cx = rng.uniform(r, SIZE - r, 2)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 1) ** 2 for y, x, q in centres):
            centres.append((cy, cx, r))
    for cy, cx, r in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(120, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _photos() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        im = np.asarray(getattr(skimage.data, name)())
        im = np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im[..., :3]
        out.append(im)
    return out


def crops_maker() -> Callable[[np.random.Generator, int], np.ndarray]:
    photos = _photos()

    def crop(rng: np.random.Generator, label: int) -> np.ndarray:
        im = photos[label]
        side = 48
        y = int(rng.integers(0, im.shape[0] - side))
        x = int(rng.integers(0, im.shape[1] - side))
        patch = Image.fromarray(im[y : y + side, x : x + side]).resize((SIZE, SIZE), Image.BILINEAR)
        arr = np.asarray(patch)
        return arr[:, ::-1] if rng.random() < 0.5 else arr

    return crop


def write_task(
    out: Path, make: Callable[[np.random.Generator, int], np.ndarray], classes: list[str], seed: int
) -> None:
    """Images under ``out/images/<split>/`` and one ``<split>.txt`` list per split, balanced labels."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(c + "\n" for c in classes))
    for i, (split, n) in enumerate(SPLITS.items()):
        rng = np.random.default_rng([seed, i])
        labels = rng.permutation(np.arange(n) % len(classes))
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for j, label in enumerate(labels):
            rel = f"images/{split}/{j:05d}.png"
            Image.fromarray(make(rng, int(label))).save(out / rel)
            lines.append(f"{rel} {int(label)}\n")
        (out / f"{split}.txt").write_text("".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the two task folders")
    args = parser.parse_args()
    write_task(args.out / "count", count_image, [f"{k} disc{'s' * (k > 1)}" for k in range(1, 7)], seed=11)
    write_task(args.out / "crops", crops_maker(), list(PHOTOS), seed=12)
    print(f"wrote {args.out / 'count'} and {args.out / 'crops'}")


if __name__ == "__main__":
    main()
