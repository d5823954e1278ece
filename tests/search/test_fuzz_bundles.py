"""A fuzz corpus of malformed bundles and images: `predict` exits 2 with one line on stderr naming
the file and what is accepted, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from vptsearch.cli import main

from ._fake_launch import TASK, make_launch, png_header, save_png
from .test_bundle import base, flip_byte  # noqa: F401  (module fixture)


@pytest.fixture(scope="module")
def good(base, tmp_path_factory):  # noqa: F811
    from vptsearch.search._export import export_bundles

    root = tmp_path_factory.mktemp("fuzz")
    run_dir, _ = make_launch(base, root, seeds=(0, 1))
    return export_bundles(run_dir)[TASK]


def _meta(d):
    return json.loads((d / "bundle.json").read_text())


def _set(d, **kw):
    (d / "bundle.json").write_text(json.dumps({**_meta(d), **kw}))


CASES = {
    "truncated weights": (
        lambda d: (d / "prompts.safetensors").write_bytes((d / "prompts.safetensors").read_bytes()[:200]),
        "prompts.safetensors",
    ),
    "empty weights": (lambda d: (d / "prompts.safetensors").write_bytes(b""), "prompts.safetensors"),
    "random member file": (
        lambda d: (d / "prompts-seed1.safetensors").write_bytes(b"\x00" * 64),
        "prompts-seed1.safetensors",
    ),
    "malformed json": (lambda d: (d / "bundle.json").write_text('{"task": '), "malformed JSON"),
    "non-utf8 json": (lambda d: (d / "bundle.json").write_bytes(b"\xff\xfe{}"), "bundle.json"),
    "json list": (lambda d: (d / "bundle.json").write_text("[]"), "JSON object"),
    "future version": (lambda d: _set(d, format_version=99), "format_version 99"),
    "missing keys": (
        lambda d: (d / "bundle.json").write_text(json.dumps({"format_version": 2})),
        "lacks key",
    ),
    "num_classes text": (lambda d: _set(d, num_classes="ten"), "num_classes"),
    "mean short": (lambda d: _set(d, mean=[0.5]), "mean"),
    "members not a list": (lambda d: _set(d, members={"seed": 0}), "members"),
    "member outside": (lambda d: _set(d, members=[{"seed": 0, "file": "../x.safetensors"}]), "members"),
    "member missing": (lambda d: (d / "prompts-seed1.safetensors").unlink(), "prompts-seed1.safetensors"),
    "class names": (lambda d: _set(d, class_names=["a"]), "class_names"),
    "backbone text": (lambda d: _set(d, backbone="vit"), "backbone"),
    "one byte of head.bias": (
        lambda d: flip_byte(d / "prompts.safetensors", "head.bias"),
        "modified or corrupted",
    ),
    "one byte of a member": (
        lambda d: flip_byte(d / "prompts-seed1.safetensors", "prompt_tokens"),
        "prompts-seed1.safetensors: sha256",
    ),
    "sha256 not hex": (
        lambda d: _set(d, members=[{**_meta(d)["members"][0], "sha256": "ff"}]),
        "sha256: 64 hex digits",
    ),
    "no bundle.json": (lambda d: (d / "bundle.json").unlink(), "not a vptsearch bundle"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_bundle_is_one_line(case, good, tmp_path, capsys) -> None:
    d = tmp_path / "b"
    shutil.copytree(good, d)
    mutate, expect = CASES[case]
    mutate(d)
    img = save_png(tmp_path / "a.png")
    assert main(["predict", "--bundle", str(d), str(img)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vptsearch: error: ") and "\n" not in err and "Traceback" not in err
    assert str(d) in err and expect in err


@pytest.mark.parametrize("kind", ["bomb", "warned bomb", "truncated png", "text", "folder"])
def test_bad_image_is_one_line(kind, good, tmp_path, capsys) -> None:
    p = tmp_path / "x.png"
    if kind == "bomb":
        png_header(p, 20000, 20000)
    elif kind == "warned bomb":  # between PIL's limit and twice it PIL only warns: refused the same
        png_header(p, 10000, 10000)
    elif kind == "truncated png":
        p.write_bytes(save_png(tmp_path / "ok.png").read_bytes()[:60])
    elif kind == "text":
        p.write_text("hello")
    else:
        p.mkdir()
    assert main(["predict", "--bundle", str(good), str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vptsearch: error: ") and "\n" not in err and str(p) in err
