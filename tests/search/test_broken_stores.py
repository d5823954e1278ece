"""Broken stores are refused in one line before anything starts; a failed export leaves no temp file.

The tracking sqlite that is not a database, cannot be written, sits in a folder that cannot be
written or on a full disk; an export dir that cannot be written (``/proc``) or an object store
that cannot be reached. Permission-based cases are skipped as root (root writes through them).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections import namedtuple
from pathlib import Path

import pytest

from vptsearch._errors import ConfigError
from vptsearch.search import _bundle, _tracking_store
from vptsearch.search._preflight import check_export
from vptsearch.search._tracking import check_tracking_uri
from vptsearch.spec import spec_from_dict

ROOT = os.geteuid() == 0


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_sqlite_store_that_is_a_text_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("not a database\n")
    with pytest.raises(ConfigError) as exc:
        check_tracking_uri(f"sqlite:///{f}")
    assert "is not a SQLite database" in _one_line(exc) and str(f) in str(exc.value)
    assert f.read_text() == "not a database\n"  # untouched


def test_sqlite_store_that_is_a_database_or_new_passes(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).execute("create table t (x int)").connection.commit()
    assert check_tracking_uri(f"sqlite:///{db}") == f"sqlite:///{db}"
    assert check_tracking_uri(f"sqlite:///{tmp_path / 'new.db'}")
    assert not (tmp_path / "new.db").exists()  # the check creates nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no probe file left


@pytest.mark.skipif(ROOT, reason="root writes to read-only files")
def test_read_only_sqlite_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).execute("create table t (x int)").connection.commit()
    db.chmod(0o444)
    with pytest.raises(ConfigError) as exc:
        check_tracking_uri(f"sqlite:///{db}")
    assert "cannot be written" in _one_line(exc)


@pytest.mark.skipif(ROOT, reason="root writes to read-only folders")
def test_sqlite_store_in_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ConfigError) as exc:
            check_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        assert "is not writable" in _one_line(exc)
    finally:
        folder.chmod(0o755)


def test_sqlite_store_on_a_full_disk_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(_tracking_store.shutil, "disk_usage", lambda p: usage(10 << 30, 10 << 30, 4096))
    with pytest.raises(ConfigError) as exc:
        check_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "no space left on device" in _one_line(exc) and str(tmp_path) in str(exc.value)


def _spec(base_raw: dict, export_dir: str):
    return spec_from_dict({**base_raw, "export": {"dir": export_dir}})


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_export_dir_that_cannot_be_written_is_refused(base_raw: dict) -> None:
    with pytest.raises(ConfigError) as exc:
        check_export(_spec(base_raw, "/proc/vptsearch-x"))
    assert "/proc" in _one_line(exc) and "cannot be written" in str(exc.value)


def test_export_dir_creatable_passes_and_creates_nothing(base_raw: dict, tmp_path: Path) -> None:
    check_export(_spec(base_raw, str(tmp_path / "a" / "b")))
    assert not (tmp_path / "a").exists()
    assert not list(tmp_path.glob(".vptsearch-write-test-*"))


def test_s3_export_dir_with_unreachable_endpoint_is_refused(
    base_raw: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ConfigError) as exc:
        check_export(_spec(base_raw, "s3://bucket/exports"))
    assert _one_line(exc).startswith("export.dir: ") and "unreachable" in str(exc.value)


def test_failed_bundle_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_bundle.os, "replace", full)
    meta = {"members": [{"seed": 0, "file": "prompts.safetensors"}]}
    with pytest.raises(OSError):
        _bundle.write_bundle(tmp_path / "b", {0: {"w": torch.zeros(2)}}, meta)
    assert list((tmp_path / "b").iterdir()) == []  # neither the file nor its .<pid>.tmp
