"""``vptsearch data ...``: build the mini suite, import VTAB-1k / FGVC / image folders, list and inspect."""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from vptsearch._errors import DataError
from vptsearch.data._lookup import get_task, list_tasks, suites
from vptsearch.data._tasks import PREPROCESSING, data_root


def _root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root", default=None, help="data root (default: $VPTSEARCH_DATA or ~/.cache/vptsearch/shards)"
    )


def _resize(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resize", type=int, default=None, metavar="N", help="store N x N JPEGs instead of the originals"
    )


def _overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite", action="store_true", help="replace a task that is already built (default: refuse)"
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="build, import and inspect task shards")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])
    # in the order `vptsearch data --help` lists them
    for add in (_add_build_mini, _add_import_vtab, _add_import_tfds, _add_import_fgvc, _add_import_folder,
                _add_list, _add_info):  # fmt: skip
        add(sub)


def _add_build_mini(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-mini", help="build the offline mini suite (32 px, from packaged data)")
    _root(p)
    p.add_argument("--tasks", nargs="+", default=None, help=f"subset of: {', '.join(list_tasks('mini'))}")
    p.add_argument("--force", action="store_true", help="rebuild tasks that are already up to date")
    p.set_defaults(func=_build_mini)


def _add_import_vtab(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-vtab",
        help="import task folders with list files, keeping their splits "
        "(VTAB-1k train800/val200/test.txt, or train/val/test.txt)",
    )
    p.add_argument("src", nargs="+", help="task folder(s), or folder(s) holding task folders")
    p.add_argument(
        "--task",
        default=None,
        help="name of the one task imported: a VTAB-1k task (dtd) or any name (flowers -> custom/flowers)",
    )
    p.add_argument("--tasks", nargs="+", default=None, help="only these tasks (default: every folder found)")
    p.add_argument(
        "--class-names",
        default=None,
        metavar="FILE|A,B,...",
        help="class names, line/item i = label i (default: classes.txt in the task folder, else 0..K-1)",
    )
    p.add_argument(
        "--preprocessing", default="vtab", choices=PREPROCESSING, help="of a custom task (default: vtab)"
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="without val.txt: held-out part of train")
    p.add_argument("--seed", type=int, default=0, help="of that hold-out")
    _overwrite(p)
    _root(p)
    _resize(p)
    p.set_defaults(func=_import_vtab)


def _add_import_tfds(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-vtab-tfds", help="import VTAB-1k through TensorFlow Datasets (optional dependency)"
    )
    p.add_argument("--tasks", nargs="+", default=None, help="default: all 19")
    p.add_argument("--tfds-dir", default=None, help="TFDS data_dir")
    _root(p)
    p.set_defaults(func=_import_tfds)


def _add_import_fgvc(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-fgvc", help="import an FGVC task from train.json / val.json / test.json")
    p.add_argument("src", help="folder with the json files")
    p.add_argument("--task", required=True, help=f"one of: {', '.join(list_tasks('fgvc'))}")
    p.add_argument(
        "--images-dir", default=None, help="where the json paths are relative to (default: guessed)"
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="without val.json: held-out part of train")
    p.add_argument("--seed", type=int, default=0)
    _overwrite(p)
    _root(p)
    _resize(p)
    p.set_defaults(func=_import_fgvc)


def _add_import_folder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-folder", help="import <src>/<class>/<image> with a seeded 800/200/test split")
    p.add_argument("src")
    p.add_argument("--task", required=True, help="task name, e.g. custom/flowers")
    p.add_argument("--seed", type=int, default=0)
    _overwrite(p)
    _root(p)
    _resize(p)
    p.set_defaults(func=_import_folder)


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list tasks and whether they are built")
    p.add_argument("--suite", default=None, help=f"only this suite ({', '.join(suites())}, custom, ...)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _root(p)
    p.set_defaults(func=_list)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a built task's manifest")
    p.add_argument("task")
    p.add_argument(
        "--verify", action="store_true", help="check every shard's size, sha256, sample count and images"
    )
    _root(p)
    p.set_defaults(func=_info)


def _build_mini(args: argparse.Namespace) -> int:
    from vptsearch.data._mini import build_mini

    start = time.perf_counter()
    built = build_mini(args.root, args.tasks, force=args.force, log_fn=print)
    print(f"{len(built)} mini tasks ready under {data_root(args.root)} ({time.perf_counter() - start:.1f} s)")
    return 0


def _import_vtab(args: argparse.Namespace) -> int:
    from vptsearch.data._import_lists import import_lists

    names = import_lists(args.src, task=args.task, tasks=args.tasks, class_names=args.class_names,
                         root=args.root, resize=args.resize, overwrite=args.overwrite,
                         preprocessing=args.preprocessing, val_fraction=args.val_fraction, seed=args.seed,
                         log_fn=print)  # fmt: skip
    where = data_root(args.root)
    print(f"{len(names)} task(s) imported under {where}; `vptsearch data info <task>` shows one")
    return 0


def _import_tfds(args: argparse.Namespace) -> int:
    from vptsearch.data._tfds import import_vtab_tfds

    for name in import_vtab_tfds(args.tasks, root=args.root, data_dir=args.tfds_dir):
        print(f"{name}: imported")
    return 0


def _import_fgvc(args: argparse.Namespace) -> int:
    from vptsearch.data._importers import import_fgvc

    name = import_fgvc(args.src, args.task, root=args.root, images_dir=args.images_dir,
                       val_fraction=args.val_fraction, seed=args.seed, resize=args.resize,
                       overwrite=args.overwrite)  # fmt: skip
    print(f"{name}: imported")
    return 0


def _import_folder(args: argparse.Namespace) -> int:
    from vptsearch.data._importers import import_folder

    name = import_folder(
        args.src, args.task, root=args.root, seed=args.seed, resize=args.resize, overwrite=args.overwrite
    )
    print(f"{name}: imported")
    return 0


def _list(args: argparse.Namespace) -> int:
    from vptsearch.data._lookup import read_manifest
    from vptsearch.data._manifest import built_tasks

    root = data_root(args.root)
    on_disk = set(built_tasks(root))
    names = list_tasks(args.suite, root)  # with the custom tasks built under root
    in_suite = [n for n in on_disk if not args.suite or n.startswith(args.suite + "/")]
    broken = sorted(n for n in in_suite if n not in names)  # built but unreadable: listed with the error
    rows: list[dict[str, Any]] = []
    for name in names + broken:
        try:
            info = get_task(name, root)
            counts = read_manifest(name, root).counts if name in on_disk else {}
        except DataError as exc:  # one unreadable task folder does not hide the others
            rows.append({"task": name, "group": "?", "classes": 0, "built": False, "samples": {},
                         "error": str(exc)})  # fmt: skip
            continue
        rows.append({"task": name, "group": info.group, "classes": info.num_classes,
                     "built": name in on_disk, "samples": counts})  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"data root: {root}")
    for r in rows:
        sizes = " ".join(f"{k}={v}" for k, v in r["samples"].items()) if r["built"] else "not built"
        if "error" in r:
            sizes = f"unreadable: {r['error']}"
        print(f"{r['task']:<32} {r['group']:<12} {r['classes']:>4}  {sizes}")
    return 0


def _abridged(value: Any) -> Any:
    """The parameters with sha256 digests cut to 12 hex digits: one readable line (the manifest has all)."""
    if isinstance(value, dict):
        return {k: _abridged(v) for k, v in value.items()}
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12] + "..."
    return value


def _info(args: argparse.Namespace) -> int:
    from vptsearch.data._lookup import read_manifest
    from vptsearch.data._verify import verify_task

    m = read_manifest(args.task, args.root)
    t = m.task
    (tr, va), (fi, te) = t.search_splits, t.final_splits
    print(f"task:          {t.name} ({t.group}, {t.num_classes} classes, preprocessing {t.preprocessing})")
    print(f"location:      {m.location}")
    print(f"built by:      {m.builder} {json.dumps(_abridged(dict(m.params)), sort_keys=True)}")
    print(f"image size:    {m.image_size or 'varies'}")
    print(f"class names:   {', '.join(m.class_names[:12])}{' ...' if len(m.class_names) > 12 else ''}")
    print(f"a launch:      searches {tr} -> {va}, retrains the winner on {fi}, tests on {te}")
    for split in m.splits:
        shards = m.split_shards(split)
        print(f"  {split:<16} {m.counts[split]:>7} samples in {len(shards)} shard(s)")
    if args.verify:
        done = verify_task(m.task, args.root, use_cache=False)
        if done.remote:
            print("not verified: shards under a remote root are checked while they stream")
        else:
            print(f"verified: {done.checked} samples, every shard matches its size, sha256 and sample "
                  f"count, and every image decodes ({done.seconds:.1f} s)")  # fmt: skip
    return 0
