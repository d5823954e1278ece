"""Data: the task registry, WebDataset shards (writer, manifest, reader), importers and the mini suite.

Layout on disk: ``<root>/<suite>/<task>/<split>-%06d.tar`` with samples ``{__key__, png|jpg, cls}``
and a ``manifest.parquet`` per task. See docs/data.md.

Names are imported lazily (like ``vptsearch`` itself) so that the CLI can list its commands and the
task registry can be consulted without importing torch, pyarrow or webdataset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vptsearch._lazy import lazy_getattr

_LAZY = {
    # tasks and roots
    "TASKS": "_tasks",
    "TaskInfo": "_tasks",
    "data_root": "_tasks",
    "register_task": "_tasks",
    "get_task": "_lookup",
    "list_tasks": "_lookup",
    "resolve_tasks": "_lookup",
    "suites": "_lookup",
    # manifest
    "Manifest": "_manifest",
    "ShardInfo": "_manifest",
    "built_tasks": "_manifest",
    "read_manifest": "_lookup",
    # writing
    "Sample": "_writer",
    "write_task": "_writer",
    # reading
    "clear_cache": "_reader",
    "load_split": "_reader",
    "make_webdataset": "_reader",
    "shard_urls": "_reader",
    "InMemoryLoader": "_loader",
    "StreamingLoader": "_loader",
    "make_loader": "_loader",
    # building and importing
    "MINI_SOURCES": "_mini",
    "build_mini": "_mini",
    "import_fgvc": "_importers",
    "import_folder": "_importers",
    "import_vtab": "_import_lists",
    "import_lists": "_import_lists",
    "disk_tasks": "_manifest",
    "verify_task": "_verify",
    "verify_tasks": "_verify",
    "Verified": "_verify",
    "import_vtab_tfds": "_tfds",
}

__all__ = [
    "MINI_SOURCES",
    "TASKS",
    "InMemoryLoader",
    "Manifest",
    "Sample",
    "ShardInfo",
    "StreamingLoader",
    "TaskInfo",
    "Verified",
    "build_mini",
    "built_tasks",
    "clear_cache",
    "data_root",
    "disk_tasks",
    "get_task",
    "import_fgvc",
    "import_folder",
    "import_lists",
    "import_vtab",
    "import_vtab_tfds",
    "list_tasks",
    "load_split",
    "make_loader",
    "make_webdataset",
    "read_manifest",
    "register_task",
    "resolve_tasks",
    "shard_urls",
    "suites",
    "verify_task",
    "verify_tasks",
    "write_task",
]

if TYPE_CHECKING:
    from vptsearch.data._import_lists import import_lists, import_vtab
    from vptsearch.data._importers import import_fgvc, import_folder
    from vptsearch.data._loader import InMemoryLoader, StreamingLoader, make_loader
    from vptsearch.data._lookup import get_task, list_tasks, read_manifest, resolve_tasks, suites
    from vptsearch.data._manifest import Manifest, ShardInfo, built_tasks, disk_tasks
    from vptsearch.data._mini import MINI_SOURCES, build_mini
    from vptsearch.data._reader import clear_cache, load_split, make_webdataset, shard_urls
    from vptsearch.data._tasks import TASKS, TaskInfo, data_root, register_task
    from vptsearch.data._tfds import import_vtab_tfds
    from vptsearch.data._verify import Verified, verify_task, verify_tasks
    from vptsearch.data._writer import Sample, write_task


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return __all__
