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
Everything is read and checked before the first task is written; a task that is already built is
replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vptsearch._errors import ConfigError, DataError
from vptsearch._hashing import sha256_file
from vptsearch.data._manifest import MANIFEST
from vptsearch.data._tasks import (
    CUSTOM_SUITE,
    FGVC_SPLITS,
    PREPROCESSING,
    TASKS,
    VTAB_SPLITS,
    TaskInfo,
    data_root,
    reserved_suites,
)
from vptsearch.data._writer import Sample, already_built, write_task

# folder names used by the common VTAB-1k extraction (e.g. NOAH / VPT releases) -> our task names
VTAB_FOLDER_ALIASES = {"cifar": "cifar100"}
CLASSES_FILE = "classes.txt"
MINI_SUITE = "mini"  # built from packaged data only (build-mini): never an import target
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a suite or task name is one safe folder name


@dataclass(frozen=True)
class Layout:
    name: str
    splits: tuple[str, str, str, str]  # (search train, search val, final train, final test)
    required: tuple[str, ...]  # list files that must exist (without .txt)

    def describe(self) -> str:
        return ", ".join(f"{s}.txt" for s in self.splits)


VTAB_LAYOUT = Layout("VTAB-1k", VTAB_SPLITS, ("train800", "val200", "test"))
PLAIN_LAYOUT = Layout("plain", FGVC_SPLITS, ("train", "test"))
ACCEPTED_LAYOUTS = (
    "a task folder with train800.txt, val200.txt, test.txt [train800val200.txt] (VTAB-1k) "
    "or train.txt, test.txt [val.txt, trainval.txt] ('relative/path label' per line), "
    "or a folder of such task folders"
)


def layout_of(folder: Path) -> Layout | None:
    """The layout of a task folder, or None when it holds neither set of list files."""
    if (folder / "train800.txt").is_file():
        return VTAB_LAYOUT
    if (folder / "train.txt").is_file() and (folder / "test.txt").is_file():
        return PLAIN_LAYOUT
    return None


@dataclass
class _Plan:
    """One task folder read and checked, ready to write."""

    folder: Path
    info: TaskInfo
    lists: dict[str, list[tuple[str, int]]]
    class_names: list[str]
    how: dict[str, str]  # where each split came from, recorded in the manifest params
    lists_sha256: dict[str, str]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}); accepted: UTF-8 list files") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_list(path: Path) -> list[tuple[str, int]]:
    """``relative/path label`` lines (blank lines skipped; paths may contain spaces)."""
    entries = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"\d+", parts[1]):
            raise DataError(
                f"{path}:{lineno}: expected '<image path> <label>' with a label 0, 1, 2, ..., "
                f"got {line.strip()[:80]!r}"
            )
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise DataError(f"{path} lists no images; accepted: lines '<image path> <label>'")
    return entries


def read_class_names(spec: str | Path, where: str) -> list[str]:
    """Class names from a file (one per line, line i = label i) or a comma-separated string."""
    path = Path(spec)
    if path.is_file():
        lines = _read_text(path).splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        names = [line.strip() for line in lines]
        source = str(path)
    else:
        if isinstance(spec, Path) or "," not in str(spec):
            raise DataError(
                f"class names {str(spec)!r} ({where}) is neither a file nor a comma-separated list; "
                "accepted: a file with one name per line, or 'cat,dog,owl'"
            )
        names = [n.strip() for n in str(spec).split(",")]
        source = "--class-names"
    if any(not n for n in names):
        raise DataError(f"{source} has an empty class name (line/item {names.index('') + 1}); "
                        "accepted: one non-empty name per label 0, 1, 2, ...")  # fmt: skip
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{source} names class {dupes[0]!r} twice; accepted: distinct names")
    return names


def target_name(requested: str) -> str:
    """``dtd`` / ``cifar`` -> ``vtab1k/...``; other bare names -> ``custom/<name>``; ``suite/name`` as is."""
    if "/" not in requested:
        vtab = f"vtab1k/{VTAB_FOLDER_ALIASES.get(requested, requested)}"
        return vtab if vtab in TASKS else f"{CUSTOM_SUITE}/{requested}"
    if requested in TASKS:
        return requested
    suite, _, short = requested.partition("/")
    if suite in reserved_suites():
        raise ConfigError(
            f"task {requested!r} is not one of the registered {suite} tasks, and {suite}/ holds only those; "
            f"accepted: a registered name, or your own name such as {CUSTOM_SUITE}/{short}"
        )
    return requested


def _check_name(name: str, folder: Path) -> None:
    parts = name.split("/")
    if len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts):
        raise ConfigError(
            f"task name {name!r} (for {folder}) is not a valid name; accepted: <name> or <suite>/<name> "
            "made of letters, digits, '_', '-', '.' (e.g. flowers or custom/flowers); pass --task"
        )


def _check_disjoint(folder: Path, lists: dict[str, list[tuple[str, int]]], a: str, b: str) -> None:
    common = {p for p, _ in lists[a]} & {p for p, _ in lists[b]}
    if common:
        raise DataError(
            f"{folder}: image {sorted(common)[0]!r} is listed in both {a} and {b} ({len(common)} shared); "
            "accepted: disjoint train / val / test lists (searching or testing on training images "
            "would report wrong accuracies)"
        )


def _plan(
    folder: Path,
    name: str,
    layout: Layout,
    class_names_spec: str | None,
    preprocessing: str,
    val_fraction: float,
    seed: int,
) -> _Plan:
    _check_name(name, folder)
    if name in TASKS and TASKS.get(name).suite == MINI_SUITE:
        raise ConfigError(
            f"task {name!r} is built by `vptsearch data build-mini` from packaged data, not imported "
            f"(from {folder}); accepted: your own name such as --task {CUSTOM_SUITE}/{name.split('/')[1]}"
        )
    for split in layout.required:
        if not (folder / f"{split}.txt").is_file():
            raise DataError(f"missing split list {folder / f'{split}.txt'}; accepted: {ACCEPTED_LAYOUTS}")
    tr, va, final, test = layout.splits
    lists = {
        s: read_list(folder / f"{s}.txt") for s in (tr, va, final, test) if (folder / f"{s}.txt").is_file()
    }
    how = {s: f"{s}.txt" for s in lists}
    if va not in lists:  # plain layout without val.txt: a seeded hold-out of train, like import-fgvc
        if not 0 < val_fraction < 1:
            raise ConfigError(f"--val-fraction {val_fraction} is not in (0, 1)")
        order = np.random.default_rng(seed).permutation(len(lists[tr]))
        n_val = max(1, round(len(lists[tr]) * val_fraction))
        if n_val >= len(lists[tr]):
            raise DataError(
                f"{folder / f'{tr}.txt'} has {len(lists[tr])} image(s): too few to hold out a {va} split"
            )
        lists[va] = [lists[tr][i] for i in sorted(order[:n_val])]
        lists[tr] = [lists[tr][i] for i in sorted(order[n_val:])]
        how[tr], how[va] = (
            f"{tr}.txt minus {va}",
            f"seeded hold-out of {tr}.txt (seed {seed}, fraction {val_fraction})",
        )
    _check_disjoint(folder, lists, tr, va)
    for s in (tr, va):
        _check_disjoint(folder, lists, s, test)
    if final not in lists:  # no list file for it: the union of the search splits
        lists[final] = lists[tr] + lists[va]
        how[final] = f"{tr} + {va}"
    else:
        _check_disjoint(folder, lists, final, test)
    max_label = max(label for entries in lists.values() for _, label in entries)
    if class_names_spec is not None:
        names = read_class_names(class_names_spec, f"for {folder}")
    elif (folder / CLASSES_FILE).is_file():
        names = read_class_names(folder / CLASSES_FILE, f"in {folder}")
    else:
        names = []
    registered = TASKS.get(name) if name in TASKS else None
    k = registered.num_classes if registered else len(names) or max_label + 1
    if names and len(names) != k:
        raise DataError(
            f"{len(names)} class names given for {folder}, but task {name!r} has {k} classes; "
            f"accepted: exactly {k} names (if this is other data, import it with "
            f"--task {CUSTOM_SUITE}/{name.split('/')[1]})"
        )
    if names and registered is None and max_label >= k:
        split, rel = next((s, r) for s, es in lists.items() for r, lab in es if lab == max_label)
        raise DataError(
            f"{len(names)} class names given for {folder}, but its labels go up to {max_label} "
            f"({folder / rel} in {how[split]}); accepted: exactly {max_label + 1} names "
            "(line/item i = label i)"
        )
    if max_label >= k:
        split, rel = next((s, r) for s, es in lists.items() for r, lab in es if lab == max_label)
        own = f"; to import it as your own task, pass --task {CUSTOM_SUITE}/{name.split('/')[1]}"
        raise DataError(
            f"label {max_label} of {folder / rel} is out of range for task {name!r}; accepted: integers "
            f"0..{k - 1} (listed in {how[split]}{own if registered is not None else ''})"
        )
    if k < 2:
        raise DataError(f"{folder}: every label is 0; accepted: at least 2 classes (labels 0 and 1)")
    # Every class must have images: a gap (labels 0, 1, 5) is a numbering mistake, and a registered
    # task whose classes are mostly absent is another data set imported under its name.
    unused = sorted(set(range(k)) - {label for entries in lists.values() for _, label in entries})
    if unused:
        source = (
            f"task {name!r} has {k} classes"
            if registered is not None
            else f"{len(names)} class names"
            if names
            else f"the largest label is {k - 1}"
        )
        own = (
            f"; this is not the data of {name!r}: import it as your own task with "
            f"--task {CUSTOM_SUITE}/{name.split('/')[1]}"
            if registered is not None
            else ""
        )
        raise DataError(
            f"{folder}: no image has label {unused[0]} ({len(unused)} of labels 0..{k - 1} unused), but "
            f"{source}; accepted: labels 0..{k - 1}, each used at least once{own}"
        )
    for split, entries in lists.items():
        for rel, _ in entries:
            if not (folder / rel).is_file():
                raise DataError(f"cannot read image {folder / rel} (listed in {split}): no such file")
    if registered is not None:
        if registered.splits != layout.splits:
            raise DataError(
                f"{folder} has the {layout.name} layout, but {name!r} needs {', '.join(registered.splits)}"
            )
        info = registered
    else:
        suite = name.split("/", 1)[0]
        info = TaskInfo(
            name=name,
            suite=suite,
            group="custom",
            num_classes=k,
            splits=layout.splits,
            search_splits=(tr, va),
            final_splits=(final, test),
            preprocessing=preprocessing,
            build_hint=f"vptsearch data import-vtab {folder} --task {name}",
            sizes={s: len(e) for s, e in lists.items()},
            description=f"imported from {folder}",
        )
    shas = {p.name: sha256_file(p) for p in sorted(folder.glob("*.txt"))}
    return _Plan(folder, info, lists, names or [str(i) for i in range(k)], how, shas)


def _task_folders(src: Path) -> list[Path]:
    if not src.is_dir():
        raise DataError(f"source folder {src} does not exist; accepted: {ACCEPTED_LAYOUTS}")
    if layout_of(src) is not None:
        return [src]
    found = [f for f in sorted(src.iterdir()) if f.is_dir() and not f.name.startswith(".") and layout_of(f)]
    if not found:
        raise DataError(f"no task folders in {src}; accepted: {ACCEPTED_LAYOUTS}")
    return found


def _samples(plan: _Plan, split: str, resize: int | None) -> Iterator[Sample]:
    from vptsearch.data._importers import _sample  # _importers imports this module

    for rel, label in plan.lists[split]:
        yield _sample(plan.folder / rel, Path(rel).with_suffix("").as_posix(), label, resize)


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
    base = data_root(root)
    if isinstance(base, str):
        raise DataError(f"cannot write to remote root {base}; build locally, then copy (e.g. `aws s3 sync`)")
    if not overwrite:
        for name in by_name:
            if (base / name / MANIFEST).exists():
                raise already_built(name, base / name)
    # read and check everything first: a bad list in the third folder writes nothing at all
    plans = [
        _plan(folder, name, layout_of(folder) or VTAB_LAYOUT, class_names, preprocessing, val_fraction, seed)
        for name, folder in by_name.items()
    ]
    done = []
    for plan in plans:
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
        done.append(plan.info.name)
        if log_fn is not None:
            counts = " ".join(f"{s}={len(plan.lists[s])}" for s in plan.info.splits)
            (tr, va), (fi, te) = plan.info.search_splits, plan.info.final_splits
            log_fn(
                f"{plan.info.name}: imported, {plan.info.num_classes} classes, {counts}; "
                f"search {tr} -> {va}, final {fi} -> {te}"
            )
    return done


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
