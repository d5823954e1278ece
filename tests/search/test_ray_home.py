"""A local Ray writes its auth token under HOME: a HOME it cannot write is one line before Ray starts.

Ray's default token auth creates ``~/.ray/auth_token`` on a launch's first ``ray.init`` when no
token exists; with HOME read-only that failed half-way through starting Ray's processes. The check
runs only when Ray would write there. Root writes through permission bits, so the unwritable HOME
here is one whose ``.ray`` is a file (mkdir fails for root too).
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from vptsearch._errors import ConfigError
from vptsearch.search import _preflight, _tune_state


@pytest.fixture()
def home(tmp_path: Path, monkeypatch) -> Path:
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_a_home_ray_cannot_write_is_one_line_naming_it_and_the_ways_out(home: Path) -> None:
    (home / ".ray").write_text("a file where Ray wants its folder\n")
    with pytest.raises(ConfigError) as exc:
        _preflight.check_ray_home()
    line = str(exc.value)
    assert "\n" not in line and line.startswith(f"HOME ({home}): {home / '.ray'} cannot be written (")
    assert "$RAY_AUTH_TOKEN_PATH" in line and "make HOME writable" in line
    assert (home / ".ray").read_text() == "a file where Ray wants its folder\n"  # untouched


def test_a_read_only_home_is_named_by_its_errno(home: Path, monkeypatch) -> None:
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ConfigError, match=r"cannot be written \(Read-only file system\)"):
        _preflight.check_ray_home()


def test_a_writable_home_passes_and_keeps_no_probe_file(home: Path) -> None:
    _preflight.check_ray_home()
    assert (home / ".ray").is_dir() and list((home / ".ray").iterdir()) == []


@pytest.mark.parametrize(
    "env",
    [{"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "abc"}, {"RAY_AUTH_TOKEN_PATH": "/elsewhere/token"}],
)
def test_no_check_where_ray_writes_nothing_under_home(home: Path, monkeypatch, env: dict) -> None:
    (home / ".ray").write_text("a file\n")  # would be refused if checked
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _preflight.check_ray_home()


def test_an_existing_token_needs_no_write(home: Path, monkeypatch) -> None:
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("t0ken")
    monkeypatch.setattr(Path, "mkdir", lambda *a, **k: pytest.fail("nothing is created"))
    _preflight.check_ray_home()


def test_a_one_line_error_raised_from_none_is_not_read_as_a_full_disk() -> None:
    """The preflight's own line replaces the OSError it caught (``from None``); the launch's
    disk-full handler must not dig that OSError out and print a resume hint instead."""
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/home/u/.ray")
        except OSError:
            raise ConfigError("HOME (/home/u): ...") from None
    except ConfigError as exc:
        assert _tune_state.disk_full(exc) is None
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/run/x")
        except OSError:
            raise RuntimeError("tune failed")  # noqa: B904 (an implicit context is still a full disk)
    except RuntimeError as exc:
        found = _tune_state.disk_full(exc)
        assert found is not None and found.code == errno.ENOSPC
