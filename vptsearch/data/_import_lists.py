"""Import task folders described by list files (``relative/path label`` per line), keeping their splits.

Two layouts, told apart by their files:

- **VTAB-1k**: ``train800.txt``, ``val200.txt``, ``test.txt`` and (optional) ``train800val200.txt``;
  splits ``train800`` / ``val200`` / ``train800val200`` / ``test``.
- **plain**: ``train.txt``, ``test.txt``, optional ``val.txt`` (without it: a seeded hold-out of
  train) and optional ``trainval.txt``; splits ``train`` / ``val`` / ``trainval`` / ``test``.

The rule for both (recorded in the manifest, see docs/data.md): the search trains on the first
split and picks on the second (train800 -> val200, train -> val); the winner is retrained on the
third and tested on ``test``. The third split is its list file when there is one, else the union
of the first two (first's lines, then second's), written as shards of its own like any other.

A folder named like a VTAB-1k task (``dtd``, ``cifar`` -> ``cifar100``) becomes ``vtab1k/<task>``;
any other name becomes ``custom/<name>`` (or ``<suite>/<name>`` if given so), with the class count
inferred from the labels (or the class names: ``classes.txt`` in the folder or ``class_names=``).
Every listed path must stay inside its task folder once symlinks are resolved (no ``..`` out, no
absolute path, no symlink out), and splits are compared as the files they name (``./a.png`` is
``a.png``). Everything is read and checked before the first task is written; a task that is already
built is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from vptsearch._errors import ConfigError, DataError
from vptsearch.data._import_common import image_sample, refuse_rebuild, target_name
from vptsearch.data._list_files import ACCEPTED_LAYOUTS, VTAB_LAYOUT, Plan, layout_of, plan_folder
from vptsearch.data._tasks import PREPROCESSING, data_root
from vptsearch.data._writer import Sample, write_task


def _task_folders(src: Path) -> list[Path]:
    if not src.is_dir():
        raise DataError(f"source folder {src} does not exist; accepted: {ACCEPTED_LAYOUTS}")
    if layout_of(src) is not None:
        return [src]
    found = [f for f in sorted(src.iterdir()) if f.is_dir() and not f.name.startswith(".") and layout_of(f)]
    if not found:
        raise DataError(f"no task folders in {src}; accepted: {ACCEPTED_LAYOUTS}")
    return found


def _folders_by_task(
    paths: list[str | os.PathLike], task: str | None, tasks: Sequence[str] | None, class_names: str | None
) -> dict[str, Path]:
    """The task folders found in ``paths``, by the task name each becomes (``task``/``tasks`` applied)."""
    folders = [f for p in paths for f in _task_folders(Path(p).expanduser())]
    if (task is not None or class_names is not None) and len(folders) != 1:
        flag = "--task" if task is not None else "--class-names"
        raise ConfigError(
            f"{flag} names one task, but {len(folders)} task folders were found "
            f"({', '.join(f.name for f in folders[:4])}{', ...' if len(folders) > 4 else ''}); "
            "accepted: one task folder with it, or --tasks to pick among several "
            "(class names: a classes.txt in each)"
        )
    named = {f: target_name(task if task is not None else f.name) for f in folders}
    if tasks:
        wanted = {target_name(t) for t in tasks}
        unmatched = sorted(t for t in tasks if target_name(t) not in named.values())
        if unmatched:
            raise DataError(
                f"no folder for {unmatched[0]!r} in {', '.join(str(p) for p in paths)}; "
                f"found: {', '.join(sorted(named.values()))}"
            )
        named = {f: n for f, n in named.items() if n in wanted}
    by_name: dict[str, Path] = {}
    for folder, name in named.items():
        if name in by_name:
            raise ConfigError(
                f"folders {by_name[name]} and {folder} would both become task {name!r}; "
                "accepted: one folder per task name (import them separately with --task)"
            )
        by_name[name] = folder
    return by_name


def _samples(plan: Plan, split: str, resize: int | None) -> Iterator[Sample]:
    for rel, label in plan.lists[split]:
        yield image_sample(plan.folder / rel, Path(rel).with_suffix("").as_posix(), label, resize)


def _write(plan: Plan, base: Path, resize: int | None, overwrite: bool) -> None:
    write_task(
        plan.info,
        {split: _samples(plan, split, resize) for split in plan.info.splits},
        class_names=plan.class_names,
        builder="import-vtab",
        params={
            "source": str(plan.folder.resolve()),
            "resize": resize,
            "splits_from": plan.how,
            "lists_sha256": plan.lists_sha256,
        },
        root=base,
        overwrite=overwrite,
    )


def _summary(plan: Plan) -> str:
    counts = " ".join(f"{s}={len(plan.lists[s])}" for s in plan.info.splits)
    (tr, va), (fi, te) = plan.info.search_splits, plan.info.final_splits
    return (
        f"{plan.info.name}: imported, {plan.info.num_classes} classes, {counts}; "
        f"search {tr} -> {va}, final {fi} -> {te}"
    )


def import_lists(
    srcs: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    task: str | None = None,
    tasks: Sequence[str] | None = None,
    class_names: str | None = None,
    root: str | os.PathLike | None = None,
    resize: int | None = None,
    overwrite: bool = False,
    preprocessing: str = "vtab",
    val_fraction: float = 0.1,
    seed: int = 0,
    log_fn: Callable[[str], None] | None = None,
) -> list[str]:
    """Import every task folder in ``srcs`` (task folders, or folders of task folders); see the module doc.

    ``task`` names the task of a single task folder (a VTAB-1k name or any name: ``flowers`` ->
    ``custom/flowers``); ``tasks`` keeps only these of the folders found; ``class_names`` (a file,
    or ``"a,b,c"``) applies to a single task. Returns the task names written, in order.
    """
    if preprocessing not in PREPROCESSING:
        raise ConfigError(f"unknown preprocessing {preprocessing!r}; accepted: {', '.join(PREPROCESSING)}")
    paths = [srcs] if isinstance(srcs, str | os.PathLike) else list(srcs)
    if not paths:
        raise ConfigError(f"no source folder given; accepted: {ACCEPTED_LAYOUTS}")
    by_name = _folders_by_task(paths, task, tasks, class_names)
    base = data_root(root)
    if isinstance(base, str):
        raise DataError(f"cannot write to remote root {base}; build locally, then copy (e.g. `aws s3 sync`)")
    for name in by_name:
        refuse_rebuild(name, base, overwrite)
    # read and check everything first: a bad list in the third folder writes nothing at all
    plans = [
        plan_folder(
            folder, name, layout_of(folder) or VTAB_LAYOUT, class_names, preprocessing, val_fraction, seed
        )
        for name, folder in by_name.items()
    ]
    for plan in plans:
        _write(plan, base, resize, overwrite)
        if log_fn is not None:
            log_fn(_summary(plan))
    return [plan.info.name for plan in plans]


def import_vtab(
    src: str | os.PathLike | Sequence[str | os.PathLike],
    tasks: Sequence[str] | None = None,
    *,
    root: str | os.PathLike | None = None,
    resize: int | None = None,
    task: str | None = None,
    class_names: str | None = None,
    overwrite: bool = False,
    preprocessing: str = "vtab",
    val_fraction: float = 0.1,
    seed: int = 0,
    log_fn: Callable[[str], None] | None = None,
) -> list[str]:
    """Import VTAB-1k-layout (or plain train/val/test-layout) task folders: :func:`import_lists`."""
    return import_lists(
        src,
        task=task,
        tasks=tasks,
        class_names=class_names,
        root=root,
        resize=resize,
        overwrite=overwrite,
        preprocessing=preprocessing,
        val_fraction=val_fraction,
        seed=seed,
        log_fn=log_fn,
    )
