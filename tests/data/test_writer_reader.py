"""Shard writing and reading: round trip, determinism, atomicity and the bad-input errors."""

import hashlib
import io
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vptsearch._errors import DataError
from vptsearch.data import Sample, TaskInfo, clear_cache, load_split, read_manifest, write_task

TINY = TaskInfo(name="test/tiny", suite="test", group="custom", num_classes=5, build_hint="(test fixture)")


def coded_image(i: int, size: int = 8) -> np.ndarray:
    img = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
    img[0, 0] = (i % 256, i // 256, 7)
    return img


def tiny_splits(n_train: int = 40, n_val: int = 10, n_test: int = 25) -> dict:
    def make(lo, hi, prefix):
        return [Sample(f"{prefix}{i:04d}", coded_image(i), i % 5) for i in range(lo, hi)]

    train, val = make(0, n_train, "tv"), make(n_train, n_train + n_val, "tv")
    return {
        "train800": train,
        "val200": val,
        "train800val200": train + val,
        "test": make(1000, 1000 + n_test, "te"),
    }


def _write(root, splits=None, **kw):
    return write_task(TINY, splits or tiny_splits(), class_names=[f"c{i}" for i in range(5)], builder="test",
                      root=root, maxcount=7, **kw)  # fmt: skip


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_round_trip_preserves_every_image_and_label(tiny_root):
    splits = tiny_splits()
    m = read_manifest("test/tiny")
    assert m.counts == {"train800": 40, "val200": 10, "train800val200": 50, "test": 25}
    assert m.class_names == tuple(f"c{i}" for i in range(5)) and m.image_size == 8
    assert len(m.split_shards("train800")) == 6  # 40 samples, 7 per shard
    for split, samples in splits.items():
        x, y = load_split("test/tiny", split)
        assert x.dtype == torch.uint8 and x.shape == (len(samples), 3, 8, 8)
        want = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2)
        assert torch.equal(x, want)
        assert y.tolist() == [s.label for s in samples]


def test_load_split_is_cached_per_process(tiny_root):
    a = load_split("test/tiny", "test")
    assert load_split("test/tiny", "test")[0] is a[0]
    resized = load_split("test/tiny", "test", size=16)[0]
    assert resized.shape == (25, 3, 16, 16)


def test_jpeg_bytes_are_stored_as_given(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(coded_image(3, 16)).save(buf, format="JPEG", quality=90)
    splits = tiny_splits(5, 2, 3)
    splits["test"] = [Sample("jpeg0", buf.getvalue(), 1)]
    folder = _write(tmp_path, splits)
    with tarfile.open(folder / "test-000000.tar") as tar:
        assert tar.getnames() == ["jpeg0.cls", "jpeg0.jpg"]
        assert tar.extractfile("jpeg0.jpg").read() == buf.getvalue()


def test_writing_is_deterministic_and_idempotent(tmp_path):
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b")
    assert _digest(a) == _digest(b)  # identical shards and manifest bytes
    again = _write(tmp_path / "a")  # rebuild in place
    assert _digest(again) == _digest(b)
    assert [p.name for p in (tmp_path / "a" / "test").iterdir()] == ["tiny"]  # no temp folders left


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["test"].append(Sample("bad", coded_image(1), 5)), r"label 5 .* out of range .* 0\.\.4"),
        (lambda s: s["test"].append(Sample("te1000", coded_image(1), 0)), "duplicate sample key 'te1000'"),
        (
            lambda s: s["test"].append(Sample("junk", b"not an image", 0, source="x.jpg")),
            "image x.jpg does not decode",
        ),
        (lambda s: s["test"].append(Sample("a.b", coded_image(1), 0)), r"sample key 'a\.b'"),
    ],
)
def test_bad_input_writes_nothing(tmp_path, mutate, message):
    good = _write(tmp_path)
    before = _digest(good)
    splits = tiny_splits()
    mutate(splits)
    with pytest.raises(DataError, match=message):
        _write(tmp_path, splits)
    assert _digest(good) == before  # the previous build is untouched
    assert [p.name for p in (tmp_path / "test").iterdir()] == ["tiny"]  # and no half-written folder
    with pytest.raises(DataError, match=message):
        _write(tmp_path / "fresh", splits)
    assert not (tmp_path / "fresh" / "test" / "tiny").exists()


def test_truncated_shard_fails_sha256_check(tiny_root):
    shard = tiny_root / "test" / "tiny" / "train800-000002.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"shard .*train800-000002\.tar does not match its manifest sha256"):
        load_split("test/tiny", "train800")


def test_sha256_error_names_the_non_default_root(tiny_root):
    """The rebuild hint must point at the root the task lives in, or the rebuild lands elsewhere."""
    shard = tiny_root / "test" / "tiny" / "train800-000002.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(DataError, match=rf"rebuild the task with `.* --root {re.escape(str(tiny_root))}`"):
        load_split("test/tiny", "train800")
    shard.unlink()
    with pytest.raises(DataError, match=rf"is missing; rebuild with `.* --root {re.escape(str(tiny_root))}`"):
        load_split("test/tiny", "train800")


def test_truncated_shard_without_verify_names_shard_and_key(tiny_root):
    shard = tiny_root / "test" / "tiny" / "train800-000002.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"corrupt or truncated shard .*train800-000002\.tar.*sample 'tv001"):
        load_split("test/tiny", "train800", verify=False)


def test_undecodable_image_in_shard_names_shard_and_key(tiny_root):
    shard = tiny_root / "test" / "tiny" / "test-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            data = b"\x89PNG garbage" if m.name == "te1003.png" else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    clear_cache()
    with pytest.raises(
        DataError, match=r"image of sample 'te1003' of shard .*test-000000\.tar does not decode"
    ):
        load_split("test/tiny", "test", verify=False)


def test_missing_root_and_unbuilt_task(tmp_path, monkeypatch):
    monkeypatch.delenv("VPTSEARCH_DATA", raising=False)
    with pytest.raises(
        DataError, match=r"data root .*nowhere does not exist.*vptsearch data build-mini --root"
    ):
        read_manifest("mini/digits", tmp_path / "nowhere")
    with pytest.raises(
        DataError, match=r"'vtab1k/dtd' is not built .*`vptsearch data import-vtab .* --tasks dtd"
    ):
        read_manifest("vtab1k/dtd", tmp_path)
    with pytest.raises(DataError, match=r"no split 'train'.*accepted: train800"):
        _write(tmp_path)
        read_manifest("test/tiny", tmp_path).split_shards("train")
