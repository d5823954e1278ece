"""Shard fuzz corpus: every way a built task can go bad on disk, caught by `data info --verify` and by
:func:`vptsearch.data.verify_tasks` (the launch preflight) in one line naming the file, and the
verification cache (a second verify reads no shard; any changed file is checked again).

Each case starts from a tiny task built with the real writer beside a second task that must stay
untouched, corrupts one file, and runs the real CLI.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from vptsearch._errors import DataError
from vptsearch._hashing import sha256_file
from vptsearch.cli import main
from vptsearch.data import (
    Sample,
    TaskInfo,
    clear_cache,
    read_manifest,
    verify_task,
    verify_tasks,
    write_task,
)
from vptsearch.data import _verify as verify_module
from vptsearch.data._manifest import MANIFEST, ShardInfo, write_manifest

K = 3
TINY = TaskInfo(name="fuzz/tiny", suite="fuzz", group="custom", num_classes=K, build_hint="(fuzz fixture)")
OTHER = TaskInfo(name="fuzz/other", suite="fuzz", group="custom", num_classes=K, build_hint="(fuzz fixture)")
VICTIM = "train800-000000.tar"  # the first shard of the search split a launch reads


def _splits(offset: int) -> dict[str, list[Sample]]:
    def make(lo: int, hi: int) -> list[Sample]:
        rng = np.random.default_rng(offset + lo)
        return [
            Sample(f"s{i:04d}", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), i % K) for i in range(lo, hi)
        ]

    train, val, test = make(0, 12), make(12, 15), make(100, 106)
    return {"train800": train, "val200": val, "train800val200": train + val, "test": test}


def _digest(path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".verified.json"}  # fmt: skip


@pytest.fixture()
def root(tmp_path, monkeypatch):
    clear_cache()
    for info, offset in ((TINY, 0), (OTHER, 5000)):
        write_task(
            info, _splits(offset), class_names=["a", "b", "c"], builder="test", root=tmp_path, maxcount=5
        )
    monkeypatch.setenv("VPTSEARCH_DATA", str(tmp_path))
    yield tmp_path
    clear_cache()


def _rewrite_manifest(folder, change) -> None:
    """Rewrite the manifest with ``change(shard) -> ShardInfo`` applied to every row."""
    m = read_manifest(TINY.name, folder.parent.parent)
    write_manifest(folder, m.task, list(m.class_names), [change(s) for s in m.shards], builder=m.builder,
                   params=dict(m.params), image_size=m.image_size)  # fmt: skip


def _replace_member(shard, suffix: str, data: bytes) -> None:
    """Rewrite the tar with the first member ending in ``suffix`` holding ``data``."""
    members = []
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            members.append((m, tar.extractfile(m).read()))
    buf = io.BytesIO()
    done = False
    with tarfile.open(fileobj=buf, mode="w") as out:
        for m, content in members:
            if not done and m.name.endswith(suffix):
                content, done = data, True
            m.size = len(content)
            out.addfile(m, io.BytesIO(content))
    shard.write_bytes(buf.getvalue())


def _resign(folder) -> None:
    """Record the victim shard's new sha256 and size: only the tar's content is wrong now."""
    path = folder / VICTIM
    sha, size = sha256_file(path), path.stat().st_size
    _rewrite_manifest(
        folder, lambda s: ShardInfo(s.split, s.name, s.num_samples, sha, size) if s.name == VICTIM else s
    )


def _truncate(folder):
    path = folder / VICTIM
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(folder):
    path = folder / VICTIM
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _more_samples_claimed(folder):
    _rewrite_manifest(folder, lambda s: ShardInfo(s.split, s.name, s.num_samples + 1, s.sha256, s.size_bytes)
                      if s.name == VICTIM else s)  # fmt: skip


def _undecodable_png(folder):
    _replace_member(folder / VICTIM, ".png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8)
    _resign(folder)


def _label_out_of_range(folder):
    _replace_member(folder / VICTIM, ".cls", b"7")
    _resign(folder)


def _random_bytes_resigned(folder):  # sha256 and size "match": the tar itself does not parse
    _random_bytes(folder)
    _resign(folder)


def _missing_shard(folder):
    (folder / VICTIM).unlink()


def _manifest_bad_json(folder):
    table = pq.read_table(folder / MANIFEST)
    table = table.replace_schema_metadata({b"vptsearch": b'{"version": 1, "task": "fuzz/tiny", '})
    pq.write_table(table, folder / MANIFEST)


def _manifest_json_lacks_key(folder):
    table = pq.read_table(folder / MANIFEST)
    meta = json.loads(table.schema.metadata[b"vptsearch"])
    del meta["class_names"]
    pq.write_table(
        table.replace_schema_metadata({b"vptsearch": json.dumps(meta).encode()}), folder / MANIFEST
    )


def _manifest_random_bytes(folder):
    (folder / MANIFEST).write_bytes(np.random.default_rng(1).bytes(700))


# (corruption, regex the one error line must match: the file it names and what is wrong)
CORPUS = [
    (
        _truncate,
        rf"shard .*/fuzz/tiny/{VICTIM} is \d+ bytes but its manifest says \d+ \(truncated or modified\)",
    ),
    (_random_bytes, rf"shard .*/fuzz/tiny/{VICTIM} does not match its manifest sha256"),
    (_more_samples_claimed, rf"shard .*/fuzz/tiny/{VICTIM} holds 5 samples but its manifest says 6"),
    (_undecodable_png, rf"image of sample 's0000' of shard .*/fuzz/tiny/{VICTIM} does not decode"),
    (_label_out_of_range, rf"sample 's0000' of shard .*/fuzz/tiny/{VICTIM} has label 7, out of range 0\.\.2"),
    (_random_bytes_resigned, rf"corrupt or truncated shard .*/fuzz/tiny/{VICTIM}"),
    (_missing_shard, rf"shard .*/fuzz/tiny/{VICTIM} listed in the manifest is missing"),
    (
        _manifest_bad_json,
        r"manifest .*/fuzz/tiny/manifest\.parquet is not a vptsearch manifest \(JSONDecodeError",
    ),
    (_manifest_json_lacks_key, r"manifest .*/fuzz/tiny/manifest\.parquet .*lacks 'class_names'"),
    (_manifest_random_bytes, r"manifest .*/fuzz/tiny/manifest\.parquet is not a vptsearch manifest"),
]


@pytest.mark.parametrize(("corrupt", "message"), CORPUS, ids=[c.__name__.strip("_") for c, _ in CORPUS])
def test_verify_names_the_bad_file_in_one_line(root, capsys, corrupt, message):
    assert verify_tasks([TINY.name, OTHER.name], root)[0].checked == 36  # a cached pass first
    other_before = _digest(root / OTHER.name)
    corrupt(root / TINY.name)
    clear_cache()
    assert main(["data", "info", TINY.name, "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vptsearch: error: ") and "Traceback" not in err, err
    assert re.search(message, err), err
    # the launch preflight sees the same error despite the earlier cached pass
    with pytest.raises(DataError) as caught:
        verify_tasks([TINY.name], root)
    assert f"vptsearch: error: {caught.value}\n" == err
    # the other task is untouched and still verifies; listing still shows both
    assert _digest(root / OTHER.name) == other_before
    assert verify_task(OTHER.name, root, use_cache=False).checked == 36
    assert main(["data", "list", "--suite", "fuzz"]) == 0
    assert "fuzz/other" in capsys.readouterr().out


def test_second_verify_is_cached_and_a_changed_shard_is_checked_again(root, monkeypatch):
    first = verify_tasks([TINY.name], root)[0]
    assert first.samples == first.checked == 36  # train800 12 + val200 3 + train800val200 15 + test 6
    read = []
    original = verify_module.verify_shard
    monkeypatch.setattr(
        verify_module, "verify_shard", lambda m, s, **kw: read.append(s.name) or original(m, s, **kw)
    )
    again = verify_tasks([TINY.name], root)[0]
    assert again.checked == 0 and again.samples == 36 and read == []  # no shard read at all
    # the same bytes rewritten (new mtime/ctime): that split is read again, and passes
    shard = root / TINY.name / VICTIM
    shard.write_bytes(shard.read_bytes())
    assert verify_tasks([TINY.name], root)[0].checked == 12 and set(read) == {
        f"train800-00000{i}.tar" for i in range(3)}  # fmt: skip
    # one byte changed at the same size: the cached pass does not hide it
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{VICTIM} does not match its manifest sha256"):
        verify_tasks([TINY.name], root)


def test_verify_cache_file_that_is_garbage_is_ignored(root):
    assert verify_task(TINY.name, root).checked == 36
    (root / TINY.name / ".verified.json").write_text("{not json")
    assert verify_task(TINY.name, root).checked == 36
    assert verify_task(TINY.name, root).checked == 0
    assert verify_task(TINY.name, root, ["test"], use_cache=False).checked == 6
    with pytest.raises(DataError, match=r"has no split 'train'"):
        verify_task(TINY.name, root, ["train"])


def test_cli_verify_reads_every_shard_and_reports_the_count(root, capsys):
    verify_tasks([TINY.name], root)
    assert main(["data", "info", TINY.name, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verified: 36 samples, every shard matches its size, sha256 and sample count" in out
