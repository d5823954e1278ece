"""The one sha256 hasher: data manifests, imported lists, backbone weights, cache keys.

Every digest vptsearch records or checks is computed here, so there is one place that decides how
a file is read (in blocks: weights files can be gigabytes) and how a digest is memoised.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# (resolved path, size, mtime, ctime, inode) -> digest; per process, in front of the on-disk cache
_sha_memo: dict[tuple[str, int, int, int, int], str] = {}


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes already in memory (a shard being verified, a cache key's JSON)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights files can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file_cached(path: str | os.PathLike, cache_file: Path) -> str:
    """:func:`sha256_file`, memoised per (path, size, mtime, ctime, inode) in memory and in ``cache_file``.

    Ray workers load the backbone once per trial; re-hashing a ViT-B (350 MB) each time would cost
    about a second, so the digest is remembered until the file changes. ctime is part of the key
    because no user tool can set it back: a write that restores mtime (``touch -r``) still rehashes.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key in _sha_memo:
        return _sha_memo[key]
    disk_key = "|".join(str(k) for k in key)
    disk: dict[str, str] = {}
    try:
        disk = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        disk = {}
    digest = disk.get(disk_key)
    if digest is None:
        digest = sha256_file(p)
        disk[disk_key] = digest
        try:  # best effort: a read-only home must not break loading
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(disk))
            tmp.replace(cache_file)
        except OSError:
            pass
    _sha_memo[key] = digest
    return digest
