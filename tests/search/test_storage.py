"""Tune storage outside the run dir: precedence of --storage / $VPTSEARCH_STORAGE / storage.path,
and a real S3-compatible endpoint (moto's server on 127.0.0.1) reached through pyarrow."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from vptsearch._errors import ConfigError
from vptsearch.search._storage import (
    ENV,
    check_storage,
    filesystem,
    is_uri,
    launch_storage,
    upload,
    with_storage,
)
from vptsearch.spec import spec_from_dict

from .conftest import TASKS

BUCKET = "vptsearch-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto S3 server (a real HTTP endpoint) with one bucket, for the whole module."""
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                         access_key="test", secret_key="test", allow_bucket_creation=True)  # fmt: skip
    s3.create_dir(BUCKET)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3_env(moto_endpoint, monkeypatch):
    """AWS variables as a MinIO user would set them (Ray workers started later inherit them)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    monkeypatch.delenv(ENV, raising=False)
    return moto_endpoint


def _listing(prefix: str) -> list[str]:
    fs, path = filesystem(f"s3://{prefix}")
    from pyarrow.fs import FileSelector

    return [i.path for i in fs.get_file_info(FileSelector(path, recursive=True, allow_not_found=True))]


# --- resolution ------------------------------------------------------------------------------------
def test_precedence_flag_env_spec_default(base_raw, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    run_dir = tmp_path / "runs" / "smoke" / "20260101-000000"
    spec = spec_from_dict(base_raw)
    assert with_storage(spec, None).storage.path is None
    default = launch_storage(spec, run_dir)
    assert default.path == str(run_dir.resolve() / "ray") and not default.shared and not default.remote

    spec = spec_from_dict({**base_raw, "storage": {"path": str(tmp_path / "from-spec")}})
    assert with_storage(spec, None).storage.path == str(tmp_path / "from-spec")
    monkeypatch.setenv(ENV, str(tmp_path / "from-env"))
    assert with_storage(spec, None).storage.path == str(tmp_path / "from-env")
    resolved = with_storage(spec, "s3://bucket/from-flag/")
    assert resolved.storage.path == "s3://bucket/from-flag"
    store = launch_storage(resolved, run_dir)
    assert store.remote and store.shared  # object storage is always shared
    assert store.path == "bucket/from-flag/smoke/20260101-000000"
    assert store.uri == "s3://bucket/from-flag/smoke/20260101-000000"

    monkeypatch.chdir(tmp_path)  # a relative local path is pinned to an absolute one (for --resume)
    assert with_storage(spec, "file://rel/dir").storage.path == str(tmp_path / "rel" / "dir")
    assert not is_uri("/abs/path") and not is_uri("file:///x") and is_uri("s3://b/p")


def test_bad_storage_uris_are_one_line_errors(base_raw, tmp_path) -> None:
    spec = spec_from_dict(base_raw)
    with pytest.raises(ConfigError, match=r"unknown scheme 'ftp'.*s3://BUCKET/PREFIX"):
        with_storage(spec, "ftp://host/x")
    with pytest.raises(ConfigError, match="expected s3://BUCKET/PREFIX"):
        with_storage(spec, "s3:///nobucket")
    blocker = tmp_path / "file"
    blocker.write_text("")
    spec = with_storage(spec, str(blocker / "sub"))
    with pytest.raises(ConfigError, match="cannot create it"):
        check_storage(launch_storage(spec, tmp_path / "runs" / "x"))


def test_s3_endpoint_from_the_environment(s3_env, base_raw, tmp_path, monkeypatch) -> None:
    spec = with_storage(spec_from_dict(base_raw), f"s3://{BUCKET}/exp")
    store = launch_storage(spec, tmp_path / "stamp")
    check_storage(store)  # bucket exists: passes
    missing = with_storage(spec_from_dict(base_raw), "s3://no-such-bucket/exp")
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        check_storage(launch_storage(missing, tmp_path / "stamp"))
    (tmp_path / "bundle" / "mini__digits").mkdir(parents=True)
    (tmp_path / "bundle" / "mini__digits" / "bundle.json").write_text("{}")
    upload(tmp_path / "bundle", f"s3://{BUCKET}/exports")
    assert f"{BUCKET}/exports/mini__digits/bundle.json" in _listing(f"{BUCKET}/exports")

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{_free_port()}")  # nobody listens
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"S3 endpoint .* unreachable"):
        check_storage(store)
    assert time.monotonic() - t0 < 10


# --- a launch whose Tune storage is the S3 bucket ---------------------------------------------------
def _trial_runs(db: Path) -> int:
    with sqlite3.connect(db) as con:
        sql = "select count(*) from tags where key = 'vptsearch.kind' and value = 'trial'"
        return int(con.execute(sql).fetchone()[0])


@pytest.mark.slow
def test_launch_keeps_tune_state_in_s3_and_resumes_from_it(s3_env, base_raw, tmp_path) -> None:
    from vptsearch.search import launch

    raw = {**base_raw, "search": {**base_raw["search"], "trials_per_task": 2},
           "training": {"epochs": 2, "warmup_epochs": 1, "batch_size": 64},
           "protocol": {"final_seeds": [0]},
           "export": {"dir": f"s3://{BUCKET}/exports"}}  # fmt: skip
    spec = spec_from_dict(raw)
    first = launch(spec, dashboard=False, say=lambda *_: None, storage=f"s3://{BUCKET}/exp")
    root = f"{BUCKET}/exp/smoke/{first.run_dir.name}"
    keys = _listing(root)
    for phase in ("search", "final"):
        assert any(k.startswith(f"{root}/{phase}/experiment_state") for k in keys), keys
        assert any(f"{root}/{phase}/" in k and "/checkpoint_" in k and k.endswith("/state.pt") for k in keys)
    assert not (first.run_dir / "ray").exists()  # nothing of Tune's in the local run dir
    listing = _listing(f"{BUCKET}/exports")
    for task in TASKS:
        assert f"{BUCKET}/exports/{first.run_dir.name}/{task.replace('/', '__')}/bundle.json" in listing
    assert f"{BUCKET}/exports/LATEST" in listing
    runs_before = _trial_runs(tmp_path / "mlflow.db")

    # --resume without --storage: the saved spec points at the bucket; both experiments are
    # restored from it and the results rebuilt from the checkpoints stored there.
    (first.run_dir / "results.json").unlink()
    shutil.rmtree(first.run_dir / "final")
    again = launch(spec, dashboard=False, say=lambda *_: None, resume=True)
    assert again.run_dir == first.run_dir
    assert again.rows == first.rows
    assert json.loads((again.run_dir / "results.json").read_text())["rows"] == first.rows
    assert _trial_runs(tmp_path / "mlflow.db") == runs_before  # no trial ran again
