"""make_loader (in-memory and streaming) and the WebDataset pipeline: 2 workers, exactly once, http."""

import functools
import http.server
import shutil
import threading
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from vptsearch._errors import DataError
from vptsearch.data import make_loader, make_webdataset, shard_urls
from vptsearch.data._reader import shard_url
from vptsearch.data._transforms import random_resized_crop_flip

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_in_memory_eval_batches_are_normalised_in_order(tiny_root, tiny):
    loader = make_loader("test/tiny", "test", batch_size=10, image_size=8, mean=MEAN, std=STD, train=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 3 and [len(y) for _, y in batches] == [10, 10, 5]
    x = torch.cat([b[0] for b in batches])
    want = (
        torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in tiny.splits()["test"]]).float() / 255
    )
    want = (want - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert x.dtype == torch.float32 and torch.allclose(x, want, atol=1e-5)


def test_in_memory_train_reshuffles_each_epoch_reproducibly(tiny_root):
    def epochs(seed):
        loader = make_loader(
            "test/tiny", "train800", batch_size=16, image_size=8, mean=MEAN, std=STD, train=True, seed=seed
        )
        return [torch.cat([y for _, y in loader]) for _ in range(2)]

    a, b = epochs(0), epochs(0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same seed, same order
    assert not torch.equal(a[0], a[1])  # a new order each epoch
    assert Counter(a[0].tolist()) == Counter(a[1].tolist()) == Counter(i % 5 for i in range(40))


def test_vtab_resizes_once_to_model_size(tiny_root):
    loader = make_loader("test/tiny", "val200", batch_size=4, image_size=24, mean=MEAN, std=STD, train=False)
    x, _ = next(iter(loader))
    assert x.shape == (4, 3, 24, 24)
    assert loader.images.shape[-1] == 24  # kept resized in memory, not resized per batch


def test_random_resized_crop_flip_shapes_and_variety():
    x = torch.arange(2 * 3 * 20 * 20, dtype=torch.float32).view(2, 3, 20, 20)
    g = torch.Generator().manual_seed(0)
    a, b = random_resized_crop_flip(x, 12, g), random_resized_crop_flip(x, 12, g)
    assert a.shape == (2, 3, 12, 12) and not torch.equal(a, b)
    assert x.min() <= a.min() and a.max() <= x.max()  # crops stay inside the image


def _keys_seen(ds, workers):
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    return Counter(k for x, y in loader for k in ([x] if x.dim() == 3 else list(x)))


@pytest.mark.parametrize(("reader", "shuffle"), [("lean", 0), ("lean", 20), ("webdataset", 20)])
def test_two_workers_see_each_sample_exactly_once(tiny_root, tiny, reader, shuffle):
    ds = make_webdataset("test/tiny", "train800", shuffle=shuffle, seed=1, reader=reader)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    for _ in range(2):  # two epochs
        seen = Counter(tiny.index(x) for x, _ in loader)
        assert seen == Counter(range(40))


def test_streaming_loader_two_workers_batches(tiny_root, tiny):
    loader = make_loader(
        "test/tiny",
        "train800val200",
        batch_size=8,
        image_size=8,
        mean=MEAN,
        std=STD,
        train=True,
        in_memory=False,
        num_workers=2,
    )
    labels = torch.cat([y for x, y in loader])
    assert sorted(labels.tolist()) == sorted(i % 5 for i in range(50))
    x, _ = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8)


@pytest.mark.parametrize("reader", ["lean", "webdataset"])
@pytest.mark.parametrize("cut", [2500, 3072])  # inside a member / at a member boundary
def test_streaming_corrupt_shard_names_the_shard(tiny_root, reader, cut):
    shard = tiny_root / "test" / "tiny" / "test-000001.tar"
    shard.write_bytes(shard.read_bytes()[:cut])
    loader = make_loader(
        "test/tiny",
        "test",
        batch_size=4,
        image_size=8,
        mean=MEAN,
        std=STD,
        train=False,
        in_memory=False,
        num_workers=2,
        reader=reader,
    )
    with pytest.raises(DataError, match=r"test-000001\.tar"):
        list(loader)


def test_url_schemes():
    assert shard_url("s3://b/x/test-000000.tar") == "pipe:aws s3 cp s3://b/x/test-000000.tar -"
    assert shard_url("https://h/x/a.tar") == "pipe:curl -s -L --fail https://h/x/a.tar"
    assert shard_url("file:///data/a.tar") == "/data/a.tar"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_http_root_streams_through_curl(tiny_root, tiny, monkeypatch):
    monkeypatch.delenv("VPTSEARCH_DATA")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tiny_root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        root = f"http://127.0.0.1:{server.server_address[1]}"
        urls = shard_urls("test/tiny", "test", root)
        assert urls[0].startswith("pipe:curl") and len(urls) == 4
        seen = Counter(tiny.index(x) for x, _ in make_webdataset("test/tiny", "test", root=root))
        assert seen == Counter(range(1000, 1025))
    finally:
        server.shutdown()


@pytest.mark.skipif(shutil.which("aws") is None, reason="needs the aws CLI")
def test_s3_root_streams_through_aws_cli(tiny_root, tiny, monkeypatch):
    """Against a real S3-compatible server (moto's), when moto[server] is installed."""
    import socket
    import subprocess

    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for key, value in {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("VPTSEARCH_DATA")
        subprocess.run(["aws", "s3", "mb", "s3://shards"], check=True, capture_output=True)
        subprocess.run(
            ["aws", "s3", "cp", "--recursive", str(tiny_root), "s3://shards/root"],
            check=True,
            capture_output=True,
        )
        urls = shard_urls("test/tiny", "val200", "s3://shards/root")
        assert urls == [f"pipe:aws s3 cp s3://shards/root/test/tiny/val200-00000{i}.tar -" for i in (0, 1)]
        loader = DataLoader(
            make_webdataset("test/tiny", "val200", root="s3://shards/root"), batch_size=None, num_workers=2
        )
        assert Counter(tiny.index(x) for x, _ in loader) == Counter(range(40, 50))
    finally:
        server.stop()


# --- device-resident splits (issue 14) --------------------------------------------------------------
def _uint8_split(n: int = 12, size: int = 10):
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 4


@pytest.mark.parametrize("augment", [False, True])
def test_device_path_yields_the_cpu_paths_batches(augment):
    from vptsearch.data._loader import InMemoryLoader

    images, labels = _uint8_split()
    kw = dict(batch_size=5, image_size=8, mean=MEAN, std=STD, train=True, augment=augment, seed=7)
    host, dev = InMemoryLoader(images, labels, **kw), InMemoryLoader(images, labels, device="cpu", **kw)
    for _ in range(2):  # two epochs: shuffles and crops drawn the same way on both paths
        for (xa, ya), (xb, yb) in zip(host, dev, strict=True):
            assert xa.dtype == xb.dtype == torch.float32 and xa.shape == (len(ya), 3, 8, 8)
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_device_split_is_moved_once_per_process_and_batches_are_made_there():
    from vptsearch.data import _loader

    images, labels = _uint8_split()
    kw = dict(batch_size=5, image_size=10, mean=MEAN, std=STD, train=True, augment=False)
    # "meta" stands in for a GPU here: a real move to another device, with shapes but no values
    a = _loader.InMemoryLoader(images, labels, device="meta", **kw)
    b = _loader.InMemoryLoader(images, labels, device="meta", **kw)
    assert a.images.device.type == "meta" and a.images.dtype == torch.uint8  # kept as uint8 there
    assert a.images is b.images and a.labels is b.labels  # the second trial reuses the device copy
    x, y = next(iter(a))
    assert x.device.type == y.device.type == "meta" and x.shape == (5, 3, 10, 10) and x.dtype == torch.float32
    _loader._DEVICE_CACHE.clear()
