"""Search spaces, names, tracking stores and launch records that ``launch``, ``ui``, ``report`` and
``export`` refuse before Ray starts (issue 31: S2, T1, bad specs, results.json).

The folder holds what earlier work left: a launch's run dir (``work/deep/runs/smoke/<stamp>``), an
MLflow store (``mlflow.db``), exported bundles and ``exports/smoke/LATEST``; every refusal must leave
all of it byte for byte, create no run dir, export dir or escaped folder, and start no Ray.
S2: the spec's ``name`` (in the file or ``--set``) ``../../x``, ``a/b``, ``..``, ``/abs``, empty,
with a newline or NUL, or longer than a folder name, is refused in one line before anything is
written. Bad specs: malformed YAML, not UTF-8, empty, a directory, missing; an unknown key, a wrong
type, a bad range, method, suite, task or backbone; a NUL in a path; a path too long for the disk.
T1: a tracking store that is a text file, a folder, in a missing folder, of an unknown scheme, or
read-only (skipped as root, who writes through read-only modes: this machine runs tests as root),
through ``ui`` (the cheapest command that checks a store) and ``launch`` (after its data and
backbone checks, still before Ray). Broken results.json: ``report`` and ``export`` in one line.
P1 (a closed stdout: ``--help | head -1``, ``data list | head -1``) is tests/test_cli_pipes.py's
and tests/data/test_bad_input.py's, as it needs a real pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from vptsearch.search import _ui_cli

from ..search._fake_launch import bundle_raw
from ._corpus import Case, Setup, check, nothing, params

ROOT = os.geteuid() == 0
AS_ROOT = pytest.mark.skipif(ROOT, reason="root writes through read-only modes (this machine runs as root)")
RULE = r"accepted: one folder name of letters, digits, '\.', '_' and '-', not starting with '\.'"
STORE = r"accepted: sqlite:///FILE with FILE a SQLite database \(or new\) in a writable folder"
RUN = "work/deep/runs/smoke/20261201-080000"  # a launch's run dir, relative to the folder
LAUNCH = ("launch", "--no-dashboard", "--space", "space.yaml")
VERIFIED = r"(verified \d+ samples of 1 task\(s\) against their manifests .*\n)?"  # the data check's line


def _changed(raw: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with ``changes`` (``a__b`` is key b of section a; ``params__x`` is param x)."""
    out = json.loads(json.dumps(raw))
    for key, value in changes.items():
        node, parts = out, key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def space(**changes: Any) -> Setup:
    """space.yaml: the folder's base.json (a valid one-task spec) with ``changes``."""

    def setup(folder: Path) -> None:
        raw = _changed(json.loads((folder / "base.json").read_text()), changes)
        (folder / "space.yaml").write_text(yaml.safe_dump(raw))

    return setup


def space_bytes(data: bytes | None) -> Setup:
    """space.yaml holding ``data`` (None: a folder of that name)."""

    def setup(folder: Path) -> None:
        if data is None:
            (folder / "space.yaml").mkdir()
        else:
            (folder / "space.yaml").write_bytes(data)

    return setup


def launch(id: str, setup: Setup, err: str, *extra: str, **kw: Any) -> Case:
    return Case(id, setup, (*LAUNCH, *extra), err, **kw)


def set_name(id: str, value: str, err: str) -> Case:
    return launch(id, space(), err, "--set", f"name={value}")


def both(*setups: Setup) -> Setup:
    def setup(folder: Path) -> None:
        for one in setups:
            one(folder)

    return setup


def text_file(name: str, text: str = "not a database\n") -> Setup:
    return lambda folder: (folder / name).write_text(text)


def empty_store(path: Path) -> None:
    """A real SQLite database without tables (the store check asks SQLite, which reads it all)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 1")


def read_only(name: str, mode: int) -> Setup:
    """``name`` (a file, or a folder when it ends in /) with ``mode``."""

    def setup(folder: Path) -> None:
        path = folder / name
        if name.endswith("/"):
            path.mkdir()
        else:
            empty_store(path)
        path.chmod(mode)

    return setup


def ui(id: str, setup: Setup, uri: str, err: str, **kw: Any) -> Case:
    return Case(id, setup, ("ui", "--tracking-uri", uri, "--port", "1"), err, **kw)


def ro_ui(id: str, name: str, mode: int, err: str) -> Case:
    """``ui`` on the store ``name`` (``x.db`` in it, for a folder) made read-only; skipped as root."""
    uri = f"sqlite:///{name}x.db" if name.endswith("/") else f"sqlite:///{name}"
    return ui(id, read_only(name, mode), uri, err, marks=(AS_ROOT,))


def broken(id: str, command: str, data: bytes, why: str) -> Case:
    """``report`` or ``export`` of the run dir whose results.json holds ``data``: refused, ``why``."""

    def setup(folder: Path) -> None:
        (folder / RUN / "results.json").write_bytes(data)

    return Case(id, setup, (command, "--run-dir", RUN), NOT_RESULTS.format(why))


TOO_LONG = r"file name too long: '.*/{}{{20}}.*'\.\.\. \(\d+ characters\); accepted: .* at most 255 bytes"
NOT_RESULTS = (
    r"work/deep/runs/smoke/20261201-080000/results\.json: not the results\.json a launch writes \({}"
)

CORPUS = [
    # (S2) the name becomes runs/<name>/ and exports/<name>/: one safe folder name
    set_name("set-name-dotdot-x", "../../x", r"name: '\.\./\.\./x' is not a safe folder name; " + RULE),
    set_name("set-name-a-b", "a/b", r"name: 'a/b' is not a safe folder name; " + RULE),
    set_name("set-name-dotdot", "..", r"name: '\.\.' is not a safe folder name"),
    set_name("set-name-hidden", ".hidden", r"name: '\.hidden' is not a safe folder name"),
    set_name("set-name-absolute", "/abs", r"name: '/abs' is not a safe folder name"),
    set_name("set-name-backslash", "a\\b", r"name: 'a\\\\b' is not a safe folder name"),
    set_name("set-name-empty", "", r"name: expected a non-empty string, got None"),
    set_name("set-name-list", "[a]", r"name: expected a non-empty string, got list"),
    set_name("set-name-newline", '"a\\nb"', r"name: 'a\\nb' is not a safe folder name"),
    set_name("set-name-nul", '"a\\0b"', r"name: 'a\\x00b' contains a NUL byte; accepted: text without NUL"),
    set_name(
        "set-name-too-long", "a" * 300, r"name: 'a{20}'\.\.\. is 300 characters long; accepted: at most 255"
    ),
    launch("file-name-trailing-newline", space(name="x\n"), r"name: 'x\\n' is not a safe folder name"),
    launch("file-name-dotdot", space(name="../escaped"), r"name: '\.\./escaped' is not a safe folder name"),
    launch("file-name-number", space(name=5), r"name: expected a non-empty string, got 5"),
    # malformed files
    launch(
        "unclosed-list",
        space_bytes(b"name: x\nsuite: [mini/digits\n"),
        r"space\.yaml: malformed YAML at line 3",
    ),
    launch(
        "tab-indent", space_bytes(b"name: x\nsearch:\n\ttrials_per_task: 2\n"), r"space\.yaml: malformed YAML"
    ),
    launch(
        "non-utf8", space_bytes(b"name: smoke\n# caf\xe9\n"), r"space\.yaml: not UTF-8 text \(byte 0xe9 at"
    ),
    launch("binary-garbage", space_bytes(bytes(range(256)) * 4), r"space\.yaml: not UTF-8 text"),
    launch("empty-file", space_bytes(b""), r"space\.yaml: the file is empty"),
    launch(
        "top-level-list",
        space_bytes(b"- name: x\n"),
        r"space\.yaml: expected a YAML mapping at the top level",
    ),
    launch(
        "a-directory", space_bytes(None), r"search space 'space\.yaml' is a directory, not a file; accepted:"
    ),
    launch("missing-file", nothing, r"search space file 'space\.yaml' does not exist; accepted:"),
    # keys and values
    launch(
        "unknown-top-key",
        space(schedular={}),
        r"schedular: unknown key \(did you mean 'scheduler'.*; accepted: name, suite",
    ),
    launch("unknown-param", space(params__prompt_lenght={"choice": [1]}), r"prompt_lenght.*accepted:"),
    launch(
        "wrong-type", space(search__trials_per_task="four"), r"search\.trials_per_task: expected an integer"
    ),
    launch(
        "empty-choice",
        space(params={"prompt.length": {"choice": []}}),
        r"params\.prompt\.length\.choice: .*an empty list",
    ),
    launch("empty-final-seeds", space(protocol__final_seeds=[]), r"protocol\.final_seeds: .*an empty list"),
    launch(
        "reversed-range",
        space(params={"optim.base_lr": {"loguniform": [1.0, 0.1]}}),
        r"params\.optim\.base_lr\.loguniform: .*low must be < high",
    ),
    launch(
        "range-not-pair",
        space(params={"optim.base_lr": {"uniform": [0.1]}}),
        r"params\.optim\.base_lr\.uniform: .*\[low, high\]",
    ),
    launch(
        "unknown-method",
        space(method="vtp"),
        r"method: unknown method 'vtp' \(did you mean 'vpt'\?\); accepted: vpt",
    ),
    launch("unknown-suite", space(suite="vtab2k"), r"unknown .*'vtab2k'"),
    launch(
        "unknown-task",
        space(suite=["mini/digitz"]),
        r"unknown task 'mini/digitz' \(did you mean 'mini/digits'",
    ),
    launch(
        "unknown-backbone",
        space(backbone={"name": "vit-nope-16"}),
        r"unknown timm model 'vit-nope-16'; accepted",
        out=VERIFIED,
    ),
    launch("set-not-key-value", space(), r"--set 'schedular': expected key=value", "--set", "schedular"),
    launch("set-unknown-key", space(), r"schedular: unknown key", "--set", "schedular.type=asha"),
    launch("set-bad-yaml", space(), r"--set name: value '\[a' is not valid YAML", "--set", "name=[a"),
    # paths no disk holds: a NUL, a name longer than 255 bytes
    launch("nul-in-data-root", space(data_root="/tmp/\0x"), r"data_root: '/tmp/\\x00x' contains a NUL byte"),
    launch("nul-in-run-dir", space(run_dir="r\0x"), r"run_dir: 'r\\x00x' contains a NUL byte"),
    launch(
        "nul-in-tracking-uri", space(tracking__uri="sqlite:///\0x"), r"tracking\.uri: .* contains a NUL byte"
    ),
    launch("nul-in-storage-path", space(storage__path="/s\0x"), r"storage\.path: .* contains a NUL byte"),
    launch("run-dir-too-long", space(run_dir="r" * 300), TOO_LONG.format("r")),
    launch(
        "run-dir-too-long-under-a-new-folder",  # fresh/ is made, then removed again with the refusal
        space(run_dir="fresh/" + "r" * 300),
        r"run_dir '.*/r{20}.*': cannot create a launch folder there \(File name too long\)",
    ),
    launch("data-root-too-long", space(data_root="d" * 300), TOO_LONG.format("d")),
    # (T1) tracking stores, through `ui` (checks the store first) and `launch` (after data and backbone)
    ui(
        "ui-store-a-text-file",
        text_file("notes.txt"),
        "sqlite:///notes.txt",
        r"'.*/notes\.txt' is not a SQLite database; " + STORE,
    ),
    ui("ui-store-a-folder", nothing, "sqlite:///work", r"'.*/work' is not a file; " + STORE),
    ui(
        "ui-store-in-a-missing-folder",
        nothing,
        "sqlite:///nowhere/x.db",
        r"directory '.*/nowhere' does not exist",
    ),
    ui("ui-store-scheme", nothing, "ftp://x", r"tracking URI 'ftp://x': unsupported scheme 'ftp'; accepted:"),
    ui(
        "ui-store-pasted-with-a-newline",
        nothing,
        "sqlite:///mlflow.db\n",
        r"tracking URI 'sqlite:///mlflow\.db\\n' contains control character '\\n'; accepted: printable",
    ),
    ro_ui(
        "ui-store-read-only", "ro.db", 0o444, r"'.*/ro\.db' cannot be written \(Permission denied\); " + STORE
    ),
    ro_ui(
        "ui-store-in-a-read-only-folder",
        "ro/",
        0o555,
        r"directory '.*/ro' is not writable \(Permission denied\)",
    ),
    launch(
        "launch-store-a-text-file",
        both(space(), text_file("notes.txt")),
        r"'.*/notes\.txt' is not a SQLite database; " + STORE,
        "--tracking-uri",
        "sqlite:///notes.txt",
        out=VERIFIED,
    ),
    launch(
        "launch-storage-with-a-tab",
        space(),
        r"--storage 's\\tx' contains control character '\\t'; accepted: printable text",
        "--storage",
        "s\tx",
        out=VERIFIED,
    ),
    launch(
        "launch-store-a-folder",
        space(),
        r"'.*/work' is not a file",
        "--tracking-uri",
        "sqlite:///work",
        out=VERIFIED,
    ),
    launch(
        "spec-store-a-results-file",
        space(tracking__uri=f"sqlite:///{RUN}/results.json"),
        r"results\.json' is not a SQLite database",
        out=VERIFIED,
    ),
    launch(
        "launch-store-read-only",
        both(space(tracking__uri="sqlite:///ro.db"), read_only("ro.db", 0o444)),
        r"'.*/ro\.db' cannot be written \(Permission denied\)",
        out=VERIFIED,
        marks=(AS_ROOT,),
    ),
    # results.json a launch did not write
    broken("report-results-not-json", "report", b"{not json", "JSONDecodeError: Expecting property name"),
    broken("report-results-a-list", "report", b"[]", "TypeError: expected an object with a launch_id string"),
    broken("report-results-lacks-keys", "report", b"{}", "KeyError: 'launch_id'"),
    broken(
        "report-row-lacks-keys",
        "report",
        b'{"launch_id": "x", "rows": [{}], "tasks": {}}',
        "KeyError: 'a row lacks task, group, method",
    ),
    broken(
        "report-rows-not-a-list",
        "report",
        b'{"launch_id": "x", "rows": {}, "tasks": {}}',
        r"TypeError: expected rows \(a list\) and tasks",
    ),
    broken("export-results-not-json", "export", b"\xff\xfe\x00", "UnicodeDecodeError: 'utf-8' codec"),
    broken("export-results-lacks-keys", "export", b"{}", "KeyError: 'tasks'"),
]


@pytest.fixture()
def computed(
    tmp_path: Path, tiny_backbone_file: Path, mini_root: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """What earlier work left in the folder, and base.json: a valid spec whose run_dir and export
    dir are relative (an escaping name that was not refused would land in the folder)."""
    run = tmp_path / RUN
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text("name: smoke\nsuite: mini\n")
    (run / "results.json").write_text('{"launch_id": "smoke/20261201-080000", "tasks": {}, "rows": []}')
    empty_store(tmp_path / "mlflow.db")
    bundle = tmp_path / "exports" / "smoke" / "20261201-080000" / "mini__digits"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text("{}")
    (tmp_path / "exports" / "smoke" / "LATEST").write_text("20261201-080000\n")
    raw = {**bundle_raw(tiny_backbone_file, mini_root, tmp_path), "run_dir": "work/deep/runs"}
    (tmp_path / "base.json").write_text(json.dumps({**raw, "tracking": {"uri": "sqlite:///mlflow.db"}}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def no_server(port: int, host: str = "127.0.0.1") -> None:  # `ui` then starts `mlflow ui`
        raise AssertionError("the tracking store passed its check")

    monkeypatch.setattr(_ui_cli, "check_port_free", no_server)
    return tmp_path


@pytest.mark.parametrize("case", params(CORPUS))
def test_spec_and_store_corpus(case: Case, computed: Path, capsys, monkeypatch) -> None:
    check(case, computed, capsys, monkeypatch)
