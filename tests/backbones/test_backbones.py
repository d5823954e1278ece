"""Backbone registry and loading: shipped weights, local checkpoints, timm names, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from vptsearch import _hashing as hashing
from vptsearch._errors import ConfigError, DataError, VptsearchError
from vptsearch.models import _hub, list_backbones, load_backbone
from vptsearch.models import backbones as bb

SHIPPED = ("vptsearch-tiny-sup", "vptsearch-tiny-mae")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep the sha256 cache and imported backbones of the tests out of the user's home."""
    monkeypatch.setenv("VPTSEARCH_BACKBONES", str(tmp_path / "cache"))
    hashing._sha_memo.clear()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_lists_shipped_and_imported_names():
    names = list_backbones()
    assert set(SHIPPED) <= set(names)
    assert "dinov2-s14" in names


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_backbone_loads_and_matches_card_sha(name):
    b = load_backbone(name)
    card = json.loads((bb.ASSETS_DIR / f"{name}.json").read_text())
    assert b.sha256 == card["sha256"] == _sha(bb.ASSETS_DIR / f"{name}.safetensors")
    assert b.source == "shipped" and b.architecture == card["architecture"] == "vit_tiny_patch16_224"
    assert b.image_size == 32 and list(b.mean) == card["mean"] and list(b.std) == card["std"]
    assert isinstance(b.model, timm.models.vision_transformer.VisionTransformer)
    assert b.model.num_classes == 0 and not b.model.training
    with torch.no_grad():
        feats = b.model(torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, 96)
    # the card carries what the issue asks for
    for key in ("model_kwargs", "pretraining", "num_params"):
        assert key in card
    if name.endswith("mae"):
        assert b.model.cls_token is None and b.model.global_pool == "avg"
    else:
        assert b.model.cls_token is not None and b.model.global_pool == "token"


def test_every_registered_backbone_builds_offline():
    for name in list_backbones():
        b = load_backbone(name, weights="none")
        assert b.source == "random" and b.sha256 is None
        assert isinstance(b.model, timm.models.vision_transformer.VisionTransformer)
        entry = bb.BACKBONES.get(name)
        if entry.available():
            assert load_backbone(name).sha256 is not None
        else:
            with pytest.raises(DataError, match=entry.missing_hint):
                load_backbone(name)


def test_tampered_shipped_file_is_refused(tmp_path, monkeypatch):
    for f in bb.ASSETS_DIR.glob("vptsearch-tiny-sup.*"):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setattr(bb, "ASSETS_DIR", tmp_path)
    assert load_backbone("vptsearch-tiny-sup").sha256  # the untouched copy loads
    weights = tmp_path / "vptsearch-tiny-sup.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match="fails its sha256 check"):
        load_backbone("vptsearch-tiny-sup")


def test_sha256_is_cached_per_path_mtime_size(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    first = bb.file_sha256(f)
    assert first == hashlib.sha256(b"abc").hexdigest()
    cache = json.loads((tmp_path / "cache" / "sha256-cache.json").read_text())
    assert first in cache.values()
    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda path: calls.append(1) or real(path))
    hashing._sha_memo.clear()  # as in a new process: the digest comes from the on-disk cache
    assert bb.file_sha256(f) == first and not calls
    f.write_bytes(b"abcd")  # size (and mtime) change -> rehash
    assert bb.file_sha256(f) == hashlib.sha256(b"abcd").hexdigest() and calls
    # same size, mtime restored afterwards (as `touch -r` would): ctime still changes -> rehash
    st = f.stat()
    f.write_bytes(b"abce")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert bb.file_sha256(f) == hashlib.sha256(b"abce").hexdigest()


def _tiny_state(tiny_vit_kwargs, num_classes=5):
    torch.manual_seed(0)
    kwargs = {**tiny_vit_kwargs, "num_classes": num_classes}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()
    return model, {k: v.contiguous() for k, v in model.state_dict().items()}


def test_local_safetensors_with_architecture_drops_head(tmp_path, tiny_vit_kwargs):
    model, state = _tiny_state(tiny_vit_kwargs)
    assert "head.weight" in state
    path = tmp_path / "mine.safetensors"
    save_file(state, str(path))
    kwargs = {k: v for k, v in tiny_vit_kwargs.items() if k != "num_classes"}
    b = load_backbone(path, architecture="vit_tiny_patch16_224", model_kwargs=kwargs)
    assert b.source == "local" and b.sha256 == _sha(path) and b.image_size == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(b.model(x), model.forward_head(model.forward_features(x), pre_logits=True))
    # the same file through a timm name with weights=<path>
    b2 = load_backbone("vit_tiny_patch16_224", weights=str(path), model_kwargs=kwargs)
    assert b2.name == "vit_tiny_patch16_224" and b2.sha256 == b.sha256


def test_local_pth_loads_with_weights_only_and_wrappers(tmp_path, tiny_vit_kwargs):
    _, state = _tiny_state(tiny_vit_kwargs)
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    kwargs = {k: v for k, v in tiny_vit_kwargs.items() if k != "num_classes"}
    b = load_backbone(path, architecture="vit_tiny_patch16_224", model_kwargs=kwargs)
    assert torch.equal(b.model.cls_token, state["cls_token"])


class _Evil:
    def __reduce__(self):
        return (print, ("this would run arbitrary code",))


def test_pickle_needing_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1), "extra": _Evil()}, path)
    with pytest.raises(ConfigError, match=r"evil\.pth is a pickle that needs arbitrary code"):
        load_backbone(path, architecture="vit_tiny_patch16_224")


def test_shape_mismatch_names_first_tensor(tmp_path, tiny_vit_kwargs):
    _, state = _tiny_state(tiny_vit_kwargs)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    kwargs = {**{k: v for k, v in tiny_vit_kwargs.items() if k != "num_classes"}, "embed_dim": 48}
    with pytest.raises(
        ConfigError, match=r"tensor 'cls_token' has shape \[1, 1, 32\] in the file but \[1, 1, 48\]"
    ):
        load_backbone(path, architecture="vit_tiny_patch16_224", model_kwargs=kwargs)
    kwargs = {**kwargs, "embed_dim": 32, "depth": 2}
    with pytest.raises(ConfigError, match=r"unexpected \['blocks\.2\."):
        load_backbone(path, architecture="vit_tiny_patch16_224", model_kwargs=kwargs)


def test_local_file_needs_architecture_and_existing_path(tmp_path, tiny_vit_kwargs):
    _, state = _tiny_state(tiny_vit_kwargs)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(ConfigError, match="needs architecture="):
        load_backbone(path)
    with pytest.raises(ConfigError, match="not found"):
        load_backbone(tmp_path / "nope.safetensors", architecture="vit_tiny_patch16_224")


def test_unknown_names_suggest_close_ones():
    with pytest.raises(
        ConfigError, match=r"unknown backbone 'vptsearch-tiny-sop' \(did you mean 'vptsearch-tiny-sup'"
    ):
        load_backbone("vptsearch-tiny-sop")
    with pytest.raises(
        ConfigError, match=r"unknown timm model 'vit_tinny_patch16_224' \(did you mean 'vit_tiny_patch16_224'"
    ):
        load_backbone("vit_tinny_patch16_224", weights="none")


def test_non_vit_is_refused():
    with pytest.raises(ConfigError, match="'resnet18' is a ResNet, not a timm VisionTransformer"):
        load_backbone("resnet18", weights="none")


def test_timm_name_random_weights_carry_timm_preprocessing(tiny_vit_kwargs):
    kwargs = {**tiny_vit_kwargs, "num_classes": 10}  # num_classes is always forced to 0
    b = load_backbone("vit_tiny_patch16_224", weights="none", model_kwargs=kwargs)
    assert b.source == "random" and b.sha256 is None and b.model.num_classes == 0
    assert b.image_size == 32 and b.mean == (0.5, 0.5, 0.5)  # augreg cfg: mean/std 0.5
    b = load_backbone("vit_small_patch14_dinov2", weights="none", model_kwargs={"img_size": 28, "depth": 1})
    assert b.image_size == 28 and b.mean == bb.IMAGENET_MEAN


def test_hub_offline_error_names_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(_hub, "cached_file", lambda arch: None)
    with pytest.raises(DataError) as info:
        load_backbone("vit_tiny_patch16_224.augreg_in21k", weights="hub")
    msg = str(info.value)
    assert "weights: /path/to/file.safetensors with architecture: vit_tiny_patch16_224.augreg_in21k" in msg
    assert "\n" not in msg


def test_bad_weights_value():
    with pytest.raises(ConfigError, match="weights 'latest'"):
        load_backbone("vit_tiny_patch16_224", weights="latest")
    with pytest.raises(VptsearchError, match="accepted: none"):
        load_backbone("vptsearch-tiny-sup", weights="hub")


def test_cli_list_info_verify(capsys, tmp_path, monkeypatch):
    from vptsearch.cli import main

    assert main(["backbones", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["vptsearch-tiny-sup"]["present"] and rows["vptsearch-tiny-sup"]["source"] == "shipped"
    assert not rows["dinov2-s14"]["present"]  # the isolated cache is empty
    assert rows["dinov2-s14"]["how_to_get"] == "vptsearch backbones import-dinov2-s"

    assert main(["backbones", "info", "vptsearch-tiny-mae"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_features"] == 96 and info["image_size"] == 32 and len(info["sha256"]) == 64

    assert main(["backbones", "verify"]) == 0
    assert capsys.readouterr().out.count("ok   ") == len(SHIPPED)

    assert main(["backbones", "info", "vptsearch-tiny-sop"]) == 2
    assert "did you mean 'vptsearch-tiny-sup'" in capsys.readouterr().err

    for f in bb.ASSETS_DIR.glob("vptsearch-tiny-*"):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setattr(bb, "ASSETS_DIR", tmp_path)
    (tmp_path / "vptsearch-tiny-mae.safetensors").write_bytes(b"\0" * 16)
    assert main(["backbones", "verify"]) == 1
    out = capsys.readouterr().out
    assert "FAIL vptsearch-tiny-mae" in out and "ok   vptsearch-tiny-sup" in out


@pytest.mark.parametrize("name", SHIPPED)
def test_card_records_probe_evidence_of_pretraining(name):
    card = json.loads((bb.ASSETS_DIR / f"{name}.json").read_text())
    probe = card["linear_probe"]
    assert len(probe["tasks"]) >= 5
    # the pretrained features beat the same architecture with random weights by a clear margin
    assert probe["mean_pretrained"] >= probe["mean_random"] + 0.05
    recipe = card["pretraining"]["recipe"]
    assert recipe["steps"] * recipe["batch_size"] == recipe["images_seen"]
    assert "pipelines/pretrain_tiny_backbones.py" in card["pretraining"]["command"]
