"""One task folder of list files read and checked: the :class:`Plan` that
:func:`vptsearch.data._import_lists.import_lists` writes (the layouts and rules are in its doc).

Every check runs before the first image is written, in the order a user fixes them: the names, the
list files, the splits (disjoint, the held-out val), the labels against the classes, the images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vptsearch._errors import ConfigError, DataError
from vptsearch._hashing import sha256_file
from vptsearch.data._import_common import check_name, image_inside, refuse_mini
from vptsearch.data._tasks import CUSTOM_SUITE, FGVC_SPLITS, TASKS, VTAB_SPLITS, TaskInfo
from vptsearch.data._writer import check_class_names

CLASSES_FILE = "classes.txt"
Lists = dict[str, list[tuple[str, int]]]  # split -> [(relative image path, label)]
Resolved = dict[str, list[Path]]  # split -> the image files of its entries, symlinks resolved
# A label is a class index and every class needs an image, so a label of 30 digits is already a
# typo; longer ones are refused before int() (slow for thousands of digits, refused past 4300).
_MAX_LABEL_DIGITS = 30


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
class Plan:
    """One task folder read and checked, ready to write."""

    folder: Path
    info: TaskInfo
    lists: Lists
    class_names: list[str]
    how: dict[str, str]  # where each split came from, recorded in the manifest params
    lists_sha256: dict[str, str]


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first path
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}); accepted: UTF-8 list files") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_list(path: Path) -> list[tuple[str, int]]:
    """``relative/path label`` lines (blank lines skipped; paths may contain spaces), each path
    inside the list's folder (see :func:`image_inside`)."""
    entries = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        # ASCII digits only: \d also matches other scripts' digits, which int() would accept
        if len(parts) != 2 or not re.fullmatch(r"[0-9]+", parts[1]):
            raise DataError(
                f"{path}:{lineno}: expected '<image path> <label>' with a label 0, 1, 2, ..., "
                f"got {line.strip()[:80]!r}"
            )
        if len(parts[1]) > _MAX_LABEL_DIGITS:
            raise DataError(
                f"{path}:{lineno}: label {parts[1][:20]}... ({len(parts[1])} digits) is out of range; "
                "accepted: labels 0, 1, 2, ..., one per class, each used by an image"
            )
        image_inside(path.parent, parts[0], f"{path.name}:{lineno}")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise DataError(f"{path} lists no images; accepted: lines '<image path> <label>'")
    return entries


def read_class_names(spec: str | Path, where: str) -> list[str]:
    """Class names from a file (one per line, line i = label i) or a comma-separated string."""
    path = Path(spec)
    if path.is_file():
        # only line ends (text mode reads \r\n and \r as \n) end a name: splitlines() would also
        # split at \x0c, \x1c, \u2028 ... and shift every later label; those are refused below
        lines = _read_text(path).split("\n")
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
    check_class_names(names, source)  # no newline, tab or other control character in a name
    return names


def _resolved(folder: Path, lists: Lists) -> Resolved:
    """The files the entries name: ``./images/a.png``, ``images//a.png`` and a symlink to
    ``images/a.png`` are all that one file."""
    return {s: [(folder / rel).resolve() for rel, _ in entries] for s, entries in lists.items()}


def _check_disjoint(folder: Path, lists: Lists, files: Resolved, a: str, b: str) -> None:
    in_a = dict(zip(files[a], (rel for rel, _ in lists[a]), strict=True))
    common = [(rel, in_a[f]) for (rel, _), f in zip(lists[b], files[b], strict=True) if f in in_a]
    if common:
        rel_b, rel_a = min(common)
        also = f" (as {rel_b!r} in {b})" if rel_b != rel_a else ""
        raise DataError(
            f"{folder}: image {rel_a!r} is listed in both {a} and {b}{also} ({len(common)} shared); "
            "accepted: disjoint train / val / test lists (searching or testing on training images "
            "would report wrong accuracies)"
        )


def _hold_out_val(
    folder: Path, lists: Lists, how: dict[str, str], layout: Layout, fraction: float, seed: int
) -> None:
    """Plain layout without val.txt: a seeded hold-out of train becomes val (like import-fgvc)."""
    tr, va = layout.splits[:2]
    if not 0 < fraction < 1:
        raise ConfigError(f"--val-fraction {fraction} is not in (0, 1)")
    order = np.random.default_rng(seed).permutation(len(lists[tr]))
    n_val = max(1, round(len(lists[tr]) * fraction))
    if n_val >= len(lists[tr]):
        raise DataError(
            f"{folder / f'{tr}.txt'} has {len(lists[tr])} image(s): too few to hold out a {va} split"
        )
    lists[va] = [lists[tr][i] for i in sorted(order[:n_val])]
    lists[tr] = [lists[tr][i] for i in sorted(order[n_val:])]
    how[tr] = f"{tr}.txt minus {va}"
    how[va] = f"seeded hold-out of {tr}.txt (seed {seed}, fraction {fraction})"


def _read_splits(
    folder: Path, layout: Layout, val_fraction: float, seed: int
) -> tuple[Lists, dict[str, str], Resolved]:
    """Every split's entries, where they came from and the files they name; the final train split
    is the union of the search splits when it has no list file of its own."""
    for split in layout.required:
        if not (folder / f"{split}.txt").is_file():
            raise DataError(f"missing split list {folder / f'{split}.txt'}; accepted: {ACCEPTED_LAYOUTS}")
    tr, va, final, test = layout.splits
    lists = {s: read_list(folder / f"{s}.txt") for s in layout.splits if (folder / f"{s}.txt").is_file()}
    how = {s: f"{s}.txt" for s in lists}
    if va not in lists:
        _hold_out_val(folder, lists, how, layout, val_fraction, seed)
    files = _resolved(folder, lists)  # compared as files, not as spellings of their paths
    _check_disjoint(folder, lists, files, tr, va)
    for s in (tr, va):
        _check_disjoint(folder, lists, files, s, test)
    if final not in lists:
        lists[final] = lists[tr] + lists[va]
        files[final] = files[tr] + files[va]
        how[final] = f"{tr} + {va}"
    else:
        _check_disjoint(folder, lists, files, final, test)
    return lists, how, files


def _class_count(
    folder: Path, name: str, registered: TaskInfo | None, names: list[str], lists: Lists, how: dict[str, str]
) -> int:
    """The number of classes (the registered task's, else the names', else the largest label + 1),
    checked against the class names and the labels."""
    max_label = max(label for entries in lists.values() for _, label in entries)
    k = registered.num_classes if registered else len(names) or max_label + 1
    own = f"--task {CUSTOM_SUITE}/{name.split('/')[1]}"
    if names and len(names) != k:
        raise DataError(
            f"{len(names)} class names given for {folder}, but task {name!r} has {k} classes; "
            f"accepted: exactly {k} names (if this is other data, import it with {own})"
        )
    if max_label >= k:  # named by the first image listed with it
        split, rel = next((s, r) for s, es in lists.items() for r, lab in es if lab == max_label)
        if names and registered is None:
            raise DataError(
                f"{len(names)} class names given for {folder}, but its labels go up to {max_label} "
                f"({folder / rel} in {how[split]}); accepted: exactly {max_label + 1} names "
                "(line/item i = label i)"
            )
        hint = f"; to import it as your own task, pass {own}" if registered is not None else ""
        raise DataError(
            f"label {max_label} of {folder / rel} is out of range for task {name!r}; accepted: integers "
            f"0..{k - 1} (listed in {how[split]}{hint})"
        )
    return k


def _check_every_label_used(
    folder: Path, name: str, registered: TaskInfo | None, names: list[str], k: int, lists: Lists
) -> None:
    # A gap (labels 0, 1, 5) is a numbering mistake, and a registered task whose classes are mostly
    # absent is another data set imported under its name.
    if k < 2:
        raise DataError(f"{folder}: every label is 0; accepted: at least 2 classes (labels 0 and 1)")
    # k may be a typo's 10**22: the gaps are counted from the labels used, never from range(k)
    used = {label for entries in lists.values() for _, label in entries if label < k}
    n_unused = k - len(used)
    if not n_unused:
        return
    first_unused = next(i for i in range(len(used) + 1) if i not in used)
    if registered is not None:
        source = f"task {name!r} has {k} classes"
        own = (f"; this is not the data of {name!r}: import it as your own task with "
               f"--task {CUSTOM_SUITE}/{name.split('/')[1]}")  # fmt: skip
    else:
        source = f"{len(names)} class names" if names else f"the largest label is {k - 1}"
        own = ""
    raise DataError(
        f"{folder}: no image has label {first_unused} ({n_unused} of labels 0..{k - 1} unused), but "
        f"{source}; accepted: labels 0..{k - 1}, each used at least once{own}"
    )


def _task_info(
    folder: Path, name: str, layout: Layout, registered: TaskInfo | None, k: int, lists: Lists,
    preprocessing: str,
) -> TaskInfo:  # fmt: skip
    """The registered task's info (its splits must be this layout's), or a new custom task's."""
    if registered is not None:
        if registered.splits != layout.splits:
            raise DataError(
                f"{folder} has the {layout.name} layout, but {name!r} needs {', '.join(registered.splits)}"
            )
        return registered
    tr, va, final, test = layout.splits
    return TaskInfo(
        name=name,
        suite=name.split("/", 1)[0],
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


def _check_images(folder: Path, lists: Lists, files: Resolved) -> None:
    """Every entry names a file, and no split names one file twice (``a.png`` and ``./x/../a.png``
    would be two samples of one image)."""
    for split, entries in lists.items():
        seen: dict[Path, str] = {}
        for (rel, _), file in zip(entries, files[split], strict=True):
            if file in seen:
                raise DataError(
                    f"{folder}: image {rel!r} is listed twice in {split} (also as {seen[file]!r}); "
                    "accepted: each image once per split"
                )
            if not file.is_file():
                raise DataError(f"cannot read image {folder / rel} (listed in {split}): no such file")
            seen[file] = rel


def plan_folder(
    folder: Path, name: str, layout: Layout, class_names: str | None, preprocessing: str,
    val_fraction: float, seed: int,
) -> Plan:  # fmt: skip
    """Read and check the task folder ``folder`` as task ``name``; nothing is written."""
    check_name(name, folder)
    refuse_mini(name, folder)
    lists, how, files = _read_splits(folder, layout, val_fraction, seed)
    if class_names is not None:
        names = read_class_names(class_names, f"for {folder}")
    elif (folder / CLASSES_FILE).is_file():
        names = read_class_names(folder / CLASSES_FILE, f"in {folder}")
    else:
        names = []
    registered = TASKS.get(name) if name in TASKS else None
    k = _class_count(folder, name, registered, names, lists, how)
    _check_every_label_used(folder, name, registered, names, k, lists)
    _check_images(folder, lists, files)
    info = _task_info(folder, name, layout, registered, k, lists, preprocessing)
    shas = {p.name: sha256_file(p) for p in sorted(folder.glob("*.txt"))}
    return Plan(folder, info, lists, names or [str(i) for i in range(k)], how, shas)
