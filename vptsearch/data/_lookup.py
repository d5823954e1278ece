"""Tasks by name: the registered ones and those built under a data root (imported folders).

:func:`get_task`, :func:`list_tasks`, :func:`resolve_tasks` and :func:`suites` see both the task
registry (:mod:`vptsearch.data._tasks`) and the manifests under the root
(:func:`vptsearch.data._manifest.disk_tasks`); :func:`read_manifest` opens a built task by any of
those names. Both lower modules are imported, neither imports this one: no import circle.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from vptsearch._errors import ConfigError, DataError, suggest, unknown
from vptsearch.data._manifest import MANIFEST, Manifest, disk_tasks, manifest_at, task_info_from_disk
from vptsearch.data._tasks import (
    CUSTOM_SUITE,
    TASKS,
    TaskInfo,
    data_root,
    hint_for,
    reserved_suites,
    task_dir,
)


def suites(root: str | os.PathLike | None = None) -> list[str]:
    """Suite names: the registered ones, plus (given a ``root``) those of the tasks built there."""
    names = set(reserved_suites())
    if root is not None:
        names |= {info.suite for info in disk_tasks(root).values()}
    return sorted(names)


def list_tasks(suite: str | None = None, root: str | os.PathLike | None = None) -> list[str]:
    """Task names, optionally of one suite (``mini``, ``vtab1k``, ``fgvc``, ``custom``, ...).

    Without ``root`` only the registered tasks; with a ``root`` also the unregistered tasks built
    there (imported folders), which is what a search space may name.
    """
    disk = disk_tasks(root) if root is not None else {}
    if suite is None:
        return TASKS.names() + sorted(disk)
    if suite not in suites(root):
        raise ConfigError(
            f"unknown suite {suite!r}{suggest(suite, suites(root))}; accepted: {', '.join(suites(root))}"
        )
    return [n for n in TASKS.names() if TASKS.get(n).suite == suite] + sorted(
        n for n, info in disk.items() if info.suite == suite
    )


def get_task(name: str, root: str | os.PathLike | None = None) -> TaskInfo:
    """The :class:`TaskInfo` of a registered task, or of a task built under the data root.

    ``root`` defaults to the data root (``$VPTSEARCH_DATA``, else ``~/.cache/vptsearch/shards``).
    A bare task name that is unique across suites (``"cifar100"``, or ``"flowers"`` for an
    imported ``custom/flowers``) is accepted too.
    """
    if name in TASKS:
        return TASKS.get(name)
    if "/" not in name:
        registered = [n for n in TASKS.names() if n.split("/", 1)[1] == name]
        matches = registered + [n for n in disk_tasks(root) if n.split("/", 1)[1] == name]
        if len(matches) == 1:
            return TASKS.get(matches[0]) if matches[0] in TASKS else disk_tasks(root)[matches[0]]
        if len(matches) > 1:
            raise ConfigError(f"task {name!r} is ambiguous; use one of: {', '.join(matches)}")
    else:
        info = task_info_from_disk(name, root)
        if info is not None:
            return info
    accepted = TASKS.names() + sorted(disk_tasks(root))
    raise ConfigError(
        f"unknown task {name!r}{suggest(name, accepted)}; accepted: {', '.join(accepted)}"
        f" (or import your own: `vptsearch data import-vtab <folder> --task {name.rsplit('/', 1)[-1]}`)"
    )


def resolve_tasks(suite_or_list: str | Sequence[str], root: str | os.PathLike | None = None) -> list[str]:
    """Turn a suite name (``"mini"``, ``"vtab1k"``, ``"fgvc"``, ``"custom"``), one task or a list into names.

    Unregistered tasks (``custom/<name>`` from the importers) come from the manifests under
    ``root`` (default: the data root), so a search space can name them like any other task.
    """
    items: Iterable[str] = [suite_or_list] if isinstance(suite_or_list, str) else suite_or_list
    names: list[str] = []
    for item in items:
        if item in reserved_suites():
            names.extend(list_tasks(item))
        elif "/" not in item and any(info.suite == item for info in disk_tasks(root).values()):
            names.extend(list_tasks(item, data_root(root)))
        elif item == CUSTOM_SUITE:
            raise DataError(
                f"no custom task is built under {data_root(root)}; import one with "
                "`vptsearch data import-vtab <folder> --task <name>` (see docs/data.md)"
            )
        else:
            names.append(get_task(item, root).name)
    if not names:
        raise ConfigError("no tasks given; pass a suite name (mini, vtab1k, fgvc, custom) or a list of tasks")
    return list(dict.fromkeys(names))


def _task_name(task: TaskInfo | str, root: str | os.PathLike | None) -> str:
    if isinstance(task, TaskInfo):
        return task.name
    if task in TASKS or "/" in task:
        return task
    return get_task(task, root).name  # a bare name: registered or built under root


def read_manifest(task: TaskInfo | str, root: str | os.PathLike | None = None) -> Manifest:
    """The manifest of a built task; a one-line :class:`DataError` naming the build command if not built."""
    name = _task_name(task, root)
    location = task_dir(name, root)
    if isinstance(location, str):  # remote root
        return manifest_at(location, name)
    data_root(root, must_exist=True)
    if not (location / MANIFEST).is_file():
        info = task if isinstance(task, TaskInfo) else TASKS.get(name) if name in TASKS else None
        if info is None:  # neither registered nor on disk
            raise unknown("task", name, TASKS.names() + sorted(disk_tasks(root)))
        raise DataError(
            f"task {name!r} is not built under {data_root(root)}; build it with {hint_for(info, root)}"
        )
    return manifest_at(location, name)
