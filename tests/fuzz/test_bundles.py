"""Malformed bundles and images through ``vptsearch predict`` (issue 31: W2).

Each case copies one good two-seed bundle (exported from a launch made without Ray) to ``bundle/``
and breaks it: one changed byte of a tensor, a NaN or inf in the prompts, the head or a member, a
truncated, empty or foreign weights file, a bundle.json that is malformed, of another version,
lacking keys, with values of the wrong type or size, class names with a newline, tab or twice, an
image size the backbone does not take, members outside the folder; or it gives an image that is a
decompression bomb, truncated, text or a folder. ``predict --json`` must refuse in one line naming
the file, print nothing (never a ``NaN``, which is not JSON) and change nothing in the bundle.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from ..search._fake_launch import (
    TASK,
    bundle_raw,
    flip_byte,
    make_launch,
    png_header,
    record_sha256,
    rewrite_member,
    save_png,
)
from ._corpus import Case, Setup, check, nothing, params

D, W, M = "bundle", "prompts.safetensors", "prompts-seed1.safetensors"  # the folder, its weights, a member
W_, M_ = re.escape(W), re.escape(M)
PREDICT = ("predict", "--bundle", D, "--json", "a.png")
NON_FINITE = (
    r"bundle/{}: tensor {} holds 1 non-finite value\(s\) \(NaN or inf\); accepted: finite values only"
)
UNREADABLE = r"bundle/{}: not a readable safetensors file \(.*\); expected the tensors a vptsearch export"
CHANGED = r"bundle/{}: sha256 [0-9a-f]{{64}} differs from the [0-9a-f]{{64}} that bundle.json recorded"


@pytest.fixture(scope="module")
def good(tiny_backbone_file: Path, mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vptsearch.search._export import export_bundles

    root = tmp_path_factory.mktemp("fuzz-bundle")
    run_dir, _ = make_launch(bundle_raw(tiny_backbone_file, mini_root, root), root, seeds=(0, 1))
    return export_bundles(run_dir)[TASK]


def _meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / D / "bundle.json").read_text())


def meta(**changes: Any) -> Setup:
    """bundle.json with ``changes`` (a callable value: of the old bundle.json)."""

    def setup(folder: Path) -> None:
        old = _meta(folder)
        new = {k: v(old) if callable(v) else v for k, v in changes.items()}
        (folder / D / "bundle.json").write_text(json.dumps({**old, **new}))

    return setup


def write(file: str, data: bytes | Callable[[bytes], bytes], signed: bool = False) -> Setup:
    """``file`` holding ``data`` (a callable: of its old bytes); ``signed``: with its sha256 recorded,
    so that what is refused is the content itself."""

    def setup(folder: Path) -> None:
        path = folder / D / file
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)
        if signed:
            record_sha256(folder / D, file)

    return setup


def value(file: str, tensor: str, v: float) -> Setup:
    """One value of ``tensor`` in ``file`` set to ``v``, its sha256 recorded again: only the value is bad."""

    def setup(folder: Path) -> None:
        tensors = load_file(str(folder / D / file))
        tensors[tensor].view(-1)[0] = v
        rewrite_member(folder / D, file, tensors)

    return setup


def names(change: Callable[[list[str]], list[str]]) -> Setup:
    return meta(class_names=lambda old: change(list(old["class_names"])))


def bad_image(id: str, make: Setup, err: str) -> Case:
    return Case(id, lambda folder: make(folder / "x.png"), ("predict", "--bundle", D, "--json", "x.png"), err)


def bad(id: str, setup: Setup, err: str, *flags: str) -> Case:
    """``predict --bundle bundle --json a.png [flags]`` on the bundle as ``setup`` left it."""
    return Case(id, setup, (*PREDICT, *flags), err)


def flip(file: str, tensor: str) -> Setup:
    return lambda folder: flip_byte(folder / D / file, tensor)


def remove(file: str, then_mkdir: bool = False) -> Setup:
    def setup(folder: Path) -> None:
        (folder / D / file).unlink()
        if then_mkdir:
            (folder / D / file).mkdir()

    return setup


def link_out(file: str, target: str) -> Setup:
    """``file`` replaced by a symlink to ``target`` (absolute, or relative to the test's folder)."""

    def setup(folder: Path) -> None:
        (folder / D / file).unlink()
        (folder / D / file).symlink_to(target if target.startswith("/") else folder / target)

    return setup


J = r"bundle/bundle\.json: "  # errors that name bundle.json
LINK_OUT = r"bundle/{}: a link to .*, outside the bundle folder; accepted: the member's own file"
LIST_OF_MEMBERS = J + r"members must be a non-empty list of \{seed: int, file: NAME\.safetensors"
NAN, INF = float("nan"), float("inf")

CORPUS = [
    # (W2) one changed byte, a NaN or inf: the recorded sha256 and the finite check
    bad("one-byte-of-head-bias", flip(W, "head.bias"), CHANGED.format(W_) + ".*modified or corrupted"),
    bad("one-byte-of-the-prompts", flip(W, "prompt_tokens"), CHANGED.format(W_)),
    bad("one-byte-of-a-member", flip(M, "prompt_tokens"), CHANGED.format(M_)),
    bad("nan-in-the-prompts", value(W, "prompt_tokens", NAN), NON_FINITE.format(W_, "prompt_tokens")),
    bad("nan-in-a-member", value(M, "prompt_tokens", NAN), NON_FINITE.format(M_, "prompt_tokens")),
    bad("minus-inf-in-the-head", value(W, "head.weight", -INF), NON_FINITE.format(W_, "head.weight")),
    bad(
        "inf-in-the-seed-asked-for",
        value(W, "head.bias", INF),
        NON_FINITE.format(W_, "head.bias"),
        "--seed",
        "0",
    ),
    bad(
        "prompts-that-overflow",
        value(W, "prompt_tokens", 3e38),
        r"bundle 'bundle' gave non-finite outputs "
        r"\(NaN or inf\) for image 'a\.png'; accepted: finite logits only",
    ),
    # weights files
    bad("truncated-weights", write(W, lambda b: b[:200]), CHANGED.format(W_)),
    bad("truncated-weights-signed", write(W, lambda b: b[:200], signed=True), UNREADABLE.format(W_)),
    bad("empty-weights-signed", write(W, b"", signed=True), UNREADABLE.format(W_)),
    bad("zeros-for-a-member-signed", write(M, b"\x00" * 64, signed=True), UNREADABLE.format(M_)),
    bad("member-missing", remove(M), J + r"member seed 1 names prompts-seed1\.safetensors, which is not in"),
    bad("weights-a-folder", remove(W, then_mkdir=True), r"'bundle' is not a vptsearch bundle: expected"),
    bad(
        "no-bundle-json", remove("bundle.json"), r"'bundle' is not a vptsearch bundle: expected bundle\.json"
    ),
    bad("weights-a-link-to-etc-passwd", link_out(W, "/etc/passwd"), LINK_OUT.format(W_)),
    bad("member-a-link-beside-the-bundle", link_out(M, "a.png"), LINK_OUT.format(M_)),
    # bundle.json
    bad("malformed-json", write("bundle.json", b'{"task": '), J + "malformed JSON"),
    bad("latin-1-json", write("bundle.json", b'{"task": "caf\xe9"}'), J + "not UTF-8 text"),
    bad("utf-16-bom-json", write("bundle.json", b"\xff\xfe{}"), J + "malformed JSON"),
    bad("json-list", write("bundle.json", b"[]"), J + "expected a JSON object, got list"),
    bad(
        "nan-format-version",
        write("bundle.json", lambda b: b.replace(b'"format_version": 2', b'"format_version": NaN')),
        J + "format_version nan; this vptsearch reads 1, 2",
    ),
    bad("future-version", meta(format_version=99), J + "format_version 99; this vptsearch reads 1, 2"),
    bad("missing-keys", write("bundle.json", b'{"format_version": 2}'), J + r"lacks key\(s\) num_classes"),
    bad("num-classes-text", meta(num_classes="ten"), J + "num_classes is 'ten'; expected an integer >= 1"),
    bad("num-classes-true", meta(num_classes=True), J + "num_classes is True; expected an integer >= 1"),
    bad("num-classes-huge", meta(num_classes=10**12), J + r"class_names must be a list of num_classes"),
    bad("mean-short", meta(mean=[0.5]), J + r"mean is \[0\.5\]; expected a list of 3 numbers"),
    bad("image-size-zero", meta(image_size=0), J + "image_size is 0; expected an integer >= 1"),
    bad(
        "image-size-another",
        meta(image_size=64),
        J + "image_size is 64, but backbone '.*' takes 32 px images",
    ),
    bad(
        "image-size-huge", meta(image_size=10**9), J + "image_size is 1000000000, but backbone '.*' takes 32"
    ),
    bad("members-not-a-list", meta(members={"seed": 0}), LIST_OF_MEMBERS),
    bad("member-outside", meta(members=[{"seed": 0, "file": "../x.safetensors"}]), LIST_OF_MEMBERS),
    bad("member-absolute", meta(members=[{"seed": 0, "file": "/etc/passwd"}]), LIST_OF_MEMBERS),
    bad("sha256-not-hex", meta(members=lambda old: [{**old["members"][0], "sha256": "ff"}]), LIST_OF_MEMBERS),
    bad(
        "class-names-short", meta(class_names=["a"]), J + r"class_names must be a list of num_classes \(10\)"
    ),
    bad(
        "class-name-newline",
        names(lambda n: ["a\nb", *n[1:]]),
        r"class name 'a\\nb' of label 0 \(bundle/bundle\.json\) contains control character '\\n'",
    ),
    bad("class-name-tab", names(lambda n: [*n[:-1], "a\tb"]), r"label 9 .* contains control character '\\t'"),
    bad("class-name-twice", names(lambda n: [n[1], *n[1:]]), r"class name '1' .* is given to labels 0 and 1"),
    bad("backbone-text", meta(backbone="vit"), J + "backbone must be an object with a name"),
    # the command line
    bad("top-k-zero", nothing, r"--top-k 0: expected an integer >= 1", "--top-k", "0"),
    bad("seed-not-in-it", nothing, r"seed 7 is not in bundle 'bundle'; accepted: 0, 1", "--seed", "7"),
    # images
    bad_image("image-bomb", lambda p: png_header(p, 20000, 20000), r"image 'x\.png' has more pixels than"),
    # between PIL's limit and twice it PIL only warns: refused the same
    bad_image("image-warned-bomb", lambda p: png_header(p, 10000, 10000), r"image 'x\.png' has more pixels"),
    bad_image(
        "image-truncated",
        lambda p: p.write_bytes(save_png(p).read_bytes()[:60]),
        r"cannot read image 'x\.png': image file is truncated",
    ),
    bad_image("image-text", lambda p: p.write_text("hello"), r"cannot read image 'x\.png': cannot identify"),
    bad_image("image-a-folder", lambda p: p.mkdir(), r"cannot read image 'x\.png': \[Errno 21\]"),
    bad_image("image-missing", nothing, r"cannot read image 'x\.png': \[Errno 2\]"),
]


@pytest.mark.parametrize("case", params(CORPUS))
def test_bundle_corpus(case: Case, good: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    shutil.copytree(good, tmp_path / D)
    save_png(tmp_path / "a.png")
    check(case, tmp_path, capsys, monkeypatch)
