"""The files of a bundle folder and their checks (the layout is in :mod:`vptsearch.search._bundle`).

:func:`read_meta` reads and verifies ``bundle.json`` (its format version, keys, types and members),
:func:`read_tensors` one safetensors file, :func:`read_member` one member's file checked against the
sha256 bundle.json recorded for it and for non-finite values; every malformed part is one line
naming the file and what is accepted, with the command that exports the bundle again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vptsearch._errors import ConfigError
from vptsearch._hashing import sha256_bytes
from vptsearch.data._writer import check_class_names
from vptsearch.spec._fields import unsafe_name

BUNDLE_JSON, WEIGHTS = "bundle.json", "prompts.safetensors"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
REEXPORT = "vptsearch export --run-dir RUN_DIR"
_REQUIRED = ("num_classes", "method", "backbone", "image_size", "mean", "std")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def task_dirname(task: str) -> str:
    """``mini/digits`` -> ``mini__digits`` (one flat folder per task, under ``final/`` and in the
    export dir); a name that would not be one safe folder (``../x``, ``.x``) is refused."""
    leaf = task.replace("/", "__")
    problem = unsafe_name(leaf)
    if problem:
        raise ConfigError(f"task {task!r}: its folder {problem}")
    return leaf


def member_file(seed: int, exported: bool) -> str:
    """The exported seed keeps the plain name, so one-seed readers need nothing new."""
    return WEIGHTS if exported else f"prompts-seed{seed}.safetensors"


def reexport_hint(meta: Mapping[str, Any] | None = None) -> str:
    """The export command that writes the bundle again (its own run dir when it records one)."""
    run_dir = (meta or {}).get("run_dir")
    return f"vptsearch export --run-dir {run_dir}" if run_dir else REEXPORT


def read_meta(bundle_dir: str | Path) -> dict[str, Any]:
    """``bundle.json`` of a bundle folder, checked: one line naming the file for anything malformed."""
    from vptsearch.search._exports import resolve_bundle_dir

    d = resolve_bundle_dir(bundle_dir)
    path = d / BUNDLE_JSON
    if not path.is_file() or not (d / WEIGHTS).is_file():
        raise ConfigError(f"{str(d)!r} is not a vptsearch bundle: expected {BUNDLE_JSON} and {WEIGHTS} in it")
    try:
        meta = json.loads(path.read_bytes())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; expected the JSON a vptsearch export writes "
                          f"(re-export with `{REEXPORT}`)") from None  # fmt: skip
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}); expected the bundle.json "
            f"a vptsearch export writes (re-export with `{REEXPORT}`)"
        ) from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ConfigError(
            f"{path}: format_version {version!r}; this vptsearch reads "
            f"{', '.join(map(str, READABLE_VERSIONS))} (re-export with `{reexport_hint(meta)}`)"
        )
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ConfigError(
            f"{path}: lacks key(s) {', '.join(missing)} (re-export with `{reexport_hint(meta)}`)"
        )
    _check_types(path, meta)
    meta["members"] = _members(path, meta)
    meta["_dir"] = str(d)
    return meta


def _check_types(path: Path, meta: Mapping[str, Any]) -> None:
    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"{path}: {key} is {meta.get(key)!r}; expected {what}")

    n = meta["num_classes"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise bad("num_classes", "an integer >= 1")
    if not isinstance(meta["image_size"], int) or meta["image_size"] < 1:
        raise bad("image_size", "an integer >= 1")
    for key in ("mean", "std"):
        v = meta[key]
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise bad(key, "a list of 3 numbers")
    if not isinstance(meta["backbone"], dict) or not isinstance(meta["backbone"].get("name"), str):
        raise ConfigError(f"{path}: backbone must be an object with a name; got {meta['backbone']!r}")
    if not isinstance(meta["method"], str):
        raise bad("method", "a method name")
    if not isinstance(meta.get("method_options", {}), dict):
        raise bad("method_options", "an object of build_model options")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == n):
        raise ConfigError(f"{path}: class_names must be a list of num_classes ({n}) names")
    if names is not None:  # a newline or tab in one would break predict's image<TAB>class<TAB>prob lines
        check_class_names(names, str(path))


def _members(path: Path, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{seed, file, test_accuracy}]``; format 1 has one member, the exported seed."""
    if meta["format_version"] == 1 or "members" not in meta:
        return [
            {"seed": meta.get("exported_seed"), "file": WEIGHTS, "test_accuracy": meta.get("test_accuracy")}
        ]
    members = meta["members"]
    ok = isinstance(members, list) and members and all(
        isinstance(m, dict) and isinstance(m.get("seed"), int) and isinstance(m.get("file"), str)
        # a plain file name in this folder: a bundle must not make predict read elsewhere
        and m["file"] == Path(m["file"]).name and m["file"].endswith(".safetensors")
        # sha256: optional, bundles written before it was recorded have none (compatibility)
        and (m.get("sha256") is None or (isinstance(m["sha256"], str) and _SHA256.fullmatch(m["sha256"])))
        for m in members
    )  # fmt: skip
    if not ok:
        raise ConfigError(
            f"{path}: members must be a non-empty list of {{seed: int, file: NAME.safetensors, "
            f"sha256: 64 hex digits}} (files in the bundle folder); got {members!r}"[:400]
        )
    for m in members:
        if not (path.parent / m["file"]).is_file():
            raise ConfigError(
                f"{path}: member seed {m['seed']} names {m['file']}, which is not in {path.parent}"
            )
    return [dict(m) for m in members]


def read_tensors(
    path: str | Path, meta: Mapping[str, Any] | None = None, *, sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """One safetensors file of a bundle; a truncated or foreign file is one line naming it.

    ``sha256``: the digest the file must have (checked on the very bytes that are then parsed).
    """
    from safetensors.torch import load

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc, meta) from None
    if sha256 is not None:  # before parsing: a changed file is named as changed, not as malformed
        _check_digest(path, data, sha256, meta)
    try:
        return load(data)
    except Exception as exc:  # SafetensorError (truncated, bad header)
        raise _unreadable(path, exc, meta) from None


def _unreadable(path: str | Path, exc: Exception, meta: Mapping[str, Any] | None) -> ConfigError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ConfigError(
        f"{path}: not a readable safetensors file ({first}); expected the tensors a vptsearch "
        f"export writes (re-export with `{reexport_hint(meta)}`)"
    )


def _check_digest(path: str | Path, data: bytes, sha256: str, meta: Mapping[str, Any] | None) -> None:
    got = sha256_bytes(data)
    if got != sha256:
        raise ConfigError(
            f"{path}: sha256 {got} differs from the {sha256} that bundle.json recorded when the "
            f"bundle was written: the file was modified or corrupted since; accepted: the file as "
            f"exported (re-export with `{reexport_hint(meta)}`)"
        )


def read_member(member: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of one member of a bundle read by :func:`read_meta`: its file's sha256 checked
    when bundle.json records one (bundles written before it was recorded have none and still load:
    compatibility), every tensor finite (a NaN or inf would make predict print ``nan``), and nothing
    read through a link out of the bundle folder."""
    path = Path(meta["_dir"]) / member["file"]
    if not path.resolve().is_relative_to(Path(meta["_dir"]).resolve()):  # a symlink out of the bundle
        raise ConfigError(
            f"{path}: a link to {path.resolve()}, outside the bundle folder; accepted: the member's own "
            f"file in the bundle (re-export with `{reexport_hint(meta)}`)"
        )
    tensors = read_tensors(path, meta, sha256=member.get("sha256"))
    check_finite(path, tensors, meta)
    return tensors


def check_finite(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(
                f"{path}: tensor {name} holds {int((~torch.isfinite(t)).sum())} non-finite value(s) "
                f"(NaN or inf); accepted: finite values only (a diverged training or a changed file: "
                f"retrain, or re-export with `{reexport_hint(meta)}`)"
            )


def read_bundle(bundle_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(bundle.json, the exported seed's tensors)``, checked like :func:`read_member`."""
    meta = read_meta(bundle_dir)
    member = next((m for m in meta["members"] if m["file"] == WEIGHTS), {"file": WEIGHTS})
    return meta, read_member(member, meta)
