"""VTAB-1k from TensorFlow Datasets (optional: needs ``tensorflow-datasets``, not a dependency).

Splits follow the VPT code (inherited from google-research/task_adaptation): train800 is the first
800 examples of the training pool, val200 the 200 examples after the pool's 90 % boundary (or the
first 200 of the official validation split where a task has one), train800val200 their union,
test the task's test split. Label functions follow task_adaptation's task definitions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from vptsearch._errors import DataError
from vptsearch.data._lookup import get_task, list_tasks
from vptsearch.data._writer import Sample, write_task

INSTALL_HINT = (
    "importing VTAB-1k from TensorFlow Datasets needs tensorflow-datasets: "
    "`pip install tensorflow tensorflow-datasets`; or import the extracted folders with "
    "`vptsearch data import-vtab <vtab-1k folder>`"
)

Label = Callable[[dict[str, Any]], int]


def _key(name: str) -> Label:
    return lambda ex: int(ex[name])


def _clevr_dist(ex: dict[str, Any]) -> int:
    dist = float(np.min(ex["objects"]["pixel_coords"][:, 2]))
    thresholds = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
    return int(np.max(np.where(thresholds - dist < 0)))


def _kitti_dist(ex: dict[str, Any]) -> int:
    obj = ex["objects"]
    vehicles = np.isin(obj["type"], [0, 1, 2])  # Car, Van, Truck
    dist = float(np.min(obj["location"][vehicles, 2])) if vehicles.any() else 1000.0
    thresholds = np.array([-100.0, 8.0, 20.0, 999.0])
    return int(np.max(np.where(thresholds - dist < 0)))


# task -> (tfds name, pool split, official validation split or None, test split, label, image key)
_SPECS: dict[str, tuple[str, str, str | None, str, Label, str]] = {
    "cifar100": ("cifar100:3.*.*", "train", None, "test", _key("label"), "image"),
    "caltech101": ("caltech101:3.*.*", "train", None, "test", _key("label"), "image"),
    "dtd": ("dtd:3.*.*", "train", "validation", "test", _key("label"), "image"),
    "oxford_flowers102": ("oxford_flowers102:2.*.*", "train", "validation", "test", _key("label"), "image"),
    "oxford_iiit_pet": ("oxford_iiit_pet:3.*.*", "train", None, "test", _key("label"), "image"),
    "svhn": ("svhn_cropped:3.*.*", "train", None, "test", _key("label"), "image"),
    "sun397": ("sun397/tfds:4.*.*", "train", "validation", "test", _key("label"), "image"),
    "patch_camelyon": ("patch_camelyon:2.*.*", "train", "validation", "test", _key("label"), "image"),
    "eurosat": ("eurosat/rgb:2.*.*", "train[:60%]", "train[60%:80%]", "train[80%:]", _key("label"), "image"),
    "resisc45": ("resisc45:3.*.*", "train[:60%]", "train[60%:80%]", "train[80%:]", _key("label"), "image"),
    "diabetic_retinopathy": (
        "diabetic_retinopathy_detection/btgraham-300:3.*.*",
        "train",
        "validation",
        "test",
        _key("label"),
        "image",
    ),
    "clevr_count": (
        "clevr:3.*.*",
        "train",
        "validation",
        "validation",
        lambda ex: len(ex["objects"]["size"]) - 3,
        "image",
    ),
    "clevr_dist": ("clevr:3.*.*", "train", "validation", "validation", _clevr_dist, "image"),
    "dmlab": ("dmlab:2.0.1", "train", "validation", "test", _key("label"), "image"),
    "kitti": ("kitti:3.2.0", "train", "validation", "test", _kitti_dist, "image"),
    "dsprites_loc": (
        "dsprites:2.*.*",
        "train[:60%]",
        "train[60%:80%]",
        "train[80%:]",
        lambda ex: int(ex["label_x_position"]) * 16 // 32,
        "image",
    ),
    "dsprites_ori": (
        "dsprites:2.*.*",
        "train[:60%]",
        "train[60%:80%]",
        "train[80%:]",
        lambda ex: int(ex["label_orientation"]) * 16 // 40,
        "image",
    ),
    "smallnorb_azi": ("smallnorb:2.*.*", "train", None, "test", _key("label_azimuth"), "image"),
    "smallnorb_ele": ("smallnorb:2.*.*", "train", None, "test", _key("label_elevation"), "image"),
}


def _tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(INSTALL_HINT) from None
    return tfds


def import_vtab_tfds(
    tasks: Sequence[str] | None = None,
    *,
    root: str | os.PathLike | None = None,
    data_dir: str | None = None,
    download: bool = True,
) -> list[str]:
    """Download/prepare VTAB-1k tasks with TensorFlow Datasets and write them as shards."""
    tfds = _tfds()  # the install hint comes first, before any other check
    names = (
        [get_task(t if "/" in t else f"vtab1k/{t}").name for t in tasks] if tasks else list_tasks("vtab1k")
    )
    done = []
    for name in names:
        info = get_task(name)
        short = info.short_name
        tfds_name, pool, val, test, label_fn, image_key = _SPECS[short]
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        if download:
            builder.download_and_prepare()
        pool_base = pool.split("[")[0]
        val_base = (val or pool).split("[")[0]
        n_pool = builder.info.splits[pool_base].num_examples
        if val is None:
            cut = int(n_pool * 0.9)
            val_spec = f"{pool_base}[{cut}:{cut + 200}]"
        elif "%" in val:  # e.g. train[60%:80%]: the first 200 examples of that slice
            start = int(n_pool * int(val.split("[")[1].split("%")[0]) / 100)
            val_spec = f"{val_base}[{start}:{start + 200}]"
        else:
            val_spec = f"{val}[:200]"
        tf_splits = {"train800": f"{pool_base}[:800]", "val200": val_spec, "test": test}

        def read(
            split: str,
            prefix: str,
            tf_splits: dict[str, str] = tf_splits,
            builder: Any = builder,
            label_fn: Label = label_fn,
            image_key: str = image_key,
        ) -> Iterator[Sample]:
            ds = builder.as_dataset(split=tf_splits[split], shuffle_files=False)
            for i, ex in enumerate(tfds.as_numpy(ds)):
                yield Sample(f"{prefix}{i:06d}", np.asarray(ex[image_key]).squeeze(), label_fn(ex))

        train800, val200 = list(read("train800", "tr")), list(read("val200", "va"))
        splits = {
            "train800": train800,
            "val200": val200,
            "train800val200": train800 + val200,
            "test": read("test", "te"),
        }
        write_task(
            info,
            splits,
            class_names=[str(i) for i in range(info.num_classes)],
            builder="import-vtab-tfds",
            params={"tfds": tfds_name, "splits": tf_splits},
            root=root,
        )
        done.append(name)
    return done
