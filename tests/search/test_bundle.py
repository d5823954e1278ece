"""Bundles without Ray: ensemble round trip, one-seed compatibility, head norm, per-launch layout,
the backbone record, format 1 bundles, file modes, the bundle's own checksums and finite values,
and predict/export on the command line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vptsearch._errors import ConfigError
from vptsearch.cli import main
from vptsearch.search import _bundle, _bundle_load
from vptsearch.search._export import export_bundles

from ._fake_launch import TASK, bundle_raw, flip_byte, make_launch, png_header, rewrite_member, save_png


@pytest.fixture(scope="module")
def base(tiny_backbone_file, mini_root, tmp_path_factory):
    return bundle_raw(tiny_backbone_file, mini_root, tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def two_seeds(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    run_dir, models = make_launch(base, root, seeds=(0, 1))
    bundles = export_bundles(run_dir)
    return run_dir, models, bundles[TASK], root


def _listing(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _x(n: int = 4) -> torch.Tensor:
    torch.manual_seed(123)
    return torch.randn(n, 3, 32, 32)


def test_ensemble_round_trip_averages_the_seeds_logits(two_seeds, mini_root) -> None:
    run_dir, models, d, _ = two_seeds
    meta = json.loads((d / "bundle.json").read_text())
    assert meta["format_version"] == 2 and meta["exported_seed"] == 0
    assert [(m["seed"], m["file"]) for m in meta["members"]] == [
        (0, "prompts.safetensors"),
        (1, "prompts-seed1.safetensors"),
    ]
    res = json.loads((run_dir / "results.json").read_text())["tasks"][TASK]
    assert [m["test_accuracy"] for m in meta["members"]] == [res["test_accs"]["0"], res["test_accs"]["1"]]

    ens, _ = _bundle.load_bundle(d)
    assert isinstance(ens, _bundle.EnsembleModel) and ens.seeds == [0, 1]
    x = _x()
    with torch.no_grad():
        want = (models[0](x) + models[1](x)) / 2
        assert torch.allclose(ens(x), want, atol=1e-6)
        one, _ = _bundle.load_bundle(d, seed=1)
        assert torch.equal(one(x), models[1](x))

    # the ensemble accuracy: computed at export on the written bundle, stored in both places
    acc = meta["ensemble"]["test_accuracy"]
    assert acc is not None and acc == res["ensemble_test_acc"]
    assert json.loads((run_dir / "results.json").read_text())["rows"][0]["ensemble_test"] == acc
    assert _bundle.evaluate_bundle(d, root=str(mini_root)) == pytest.approx(acc, abs=1e-12)
    assert _bundle.evaluate_bundle(d, root=str(mini_root), seed=0) == pytest.approx(meta["test_accuracy"])
    with pytest.raises(Exception, match=r"seed 7 is not in bundle .*accepted: 0, 1"):
        _bundle.load_bundle(d, seed=7)


def test_one_seed_bundle_predicts_exactly_as_before(base, tmp_path) -> None:
    run_dir, models = make_launch(base, tmp_path, seeds=(3,))
    d = export_bundles(run_dir)[TASK]
    meta = json.loads((d / "bundle.json").read_text())
    assert [m["file"] for m in meta["members"]] == ["prompts.safetensors"]
    assert meta["ensemble"]["test_accuracy"] is None
    assert sorted(p.name for p in d.iterdir()) == ["bundle.json", "prompts.safetensors"]
    model, _ = _bundle.load_bundle(d)
    assert not isinstance(model, _bundle.EnsembleModel)
    with torch.no_grad():
        assert torch.equal(model(_x()), models[3](_x()))
    assert json.loads((run_dir / "results.json").read_text())["rows"][0]["ensemble_test"] is None


def test_a_bundle_records_how_its_head_started_and_trained(base, tmp_path) -> None:
    params = {"head.init": "random", "optim.head_lr_scale": 0.5, "head.refit": "none"}
    run_dir, _ = make_launch(base, tmp_path, seeds=(0,), params=params)
    meta = json.loads((export_bundles(run_dir)[TASK] / "bundle.json").read_text())
    assert meta["head"] == {"norm": "none", "init": "random", "lr_scale": 0.5, "refit": "none"}
    assert meta["hyperparameters"]["head.init"] == "random"


def test_head_norm_statistics_travel_and_missing_ones_are_named(base, tmp_path, capsys) -> None:
    run_dir, models = make_launch(base, tmp_path, seeds=(0,), head_norm="batchnorm")
    d = export_bundles(run_dir)[TASK]
    meta = json.loads((d / "bundle.json").read_text())
    defaults = {"norm": "batchnorm", "init": "probe", "lr_scale": 0.1, "refit": "probe"}
    assert meta["head"] == defaults
    assert meta["method_options"]["head_norm"] == "batchnorm"
    w = load_file(str(d / "prompts.safetensors"))
    assert {"head_norm.running_mean", "head_norm.running_var", "head_norm.num_batches_tracked"} <= set(w)
    assert not torch.equal(w["head_norm.running_mean"], torch.zeros(32))  # real statistics
    model, _ = _bundle.load_bundle(d)
    with torch.no_grad():
        assert torch.equal(model(_x()), models[0](_x()))

    rewrite_member(d, "prompts.safetensors", {k: v for k, v in w.items() if not k.startswith("head_norm.")})
    img = save_png(tmp_path / "a.png")
    assert main(["predict", "--bundle", str(d), str(img)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(d / "prompts.safetensors") in err
    assert "head_norm.running_mean" in err and "head_norm.running_var" in err and "'batchnorm'" in err


def test_each_launch_keeps_its_own_bundles_and_latest_points_at_the_newest(base, tmp_path, capsys) -> None:
    first, _ = make_launch(base, tmp_path, seeds=(0,), stamp="20261202-081500")
    second, _ = make_launch(base, tmp_path, seeds=(1,), stamp="20261202-081500-1")
    exports = tmp_path / "exports"
    a, b = export_bundles(first)[TASK], export_bundles(second)[TASK]
    assert a == exports / "20261202-081500" / "mini__digits" and b.parent.name == "20261202-081500-1"
    assert json.loads((a / "bundle.json").read_text())["exported_seed"] == 0  # not overwritten
    assert (exports / "LATEST").read_text().strip() == "20261202-081500-1"
    assert (exports / "latest").resolve() == b.parent.resolve()
    assert main(["export", "--run-dir", str(first)]) == 0  # re-exporting the older one: latest stays
    out = capsys.readouterr().out
    assert str(a) in out and str(exports / "latest") in out
    assert (exports / "LATEST").read_text().strip() == "20261202-081500-1"
    assert json.loads((first / "results.json").read_text())["bundles_dir"] == str(a.parent)

    img = save_png(tmp_path / "a.png")
    assert main(["predict", "--bundle", str(exports / "latest" / "mini__digits"), str(img)]) == 0
    via_link = capsys.readouterr().out
    (exports / "latest").unlink()  # e.g. a copy without symlinks: LATEST alone resolves it
    assert main(["predict", "--bundle", str(exports / "latest" / "mini__digits"), str(img)]) == 0
    assert capsys.readouterr().out == via_link


def test_backbone_record_names_the_weights_file_like_backbones_info(two_seeds, tiny_backbone_file) -> None:
    from vptsearch.models import load_backbone
    from vptsearch.models._cli import _summary
    from vptsearch.models.backbones import file_sha256

    _, _, d, _ = two_seeds
    b = json.loads((d / "bundle.json").read_text())["backbone"]
    info = _summary(load_backbone(b["name"], architecture=b["architecture"], model_kwargs=b["model_kwargs"]))
    for key in ("name", "architecture", "model_kwargs", "source", "sha256"):
        assert b[key] == info[key], key
    assert b["weights"]["file"] == "tiny.safetensors" and b["weights"]["from"] == "path"
    assert b["weights"]["sha256"] == file_sha256(tiny_backbone_file) == b["sha256"]
    assert b["weights"]["location"] == str(tiny_backbone_file.resolve())

    shipped = load_backbone("vptsearch-tiny-sup")
    rec = _bundle.backbone_record(shipped, "vptsearch-tiny-sup", None)
    assert rec["weights"]["from"] == "shipped" and rec["weights"]["file"] == "vptsearch-tiny-sup.safetensors"
    assert rec["weights"]["location"] == "vptsearch/assets/vptsearch-tiny-sup.safetensors"
    assert rec["architecture"] == _summary(shipped)["architecture"] and rec["sha256"] == shipped.sha256
    assert _bundle_load._load_args({"format_version": 2, "backbone": rec})["weights"] is None


def test_format_1_bundles_still_load(two_seeds, tmp_path) -> None:
    _, models, d, _ = two_seeds
    meta = json.loads((d / "bundle.json").read_text())
    b = meta["backbone"]
    old = {k: v for k, v in meta.items() if k not in ("members", "ensemble", "head", "run_dir")}
    old.update(format_version=1, backbone={
        "name": b["name"], "weights": None, "architecture": b["architecture"],
        "model_kwargs": b["model_kwargs"], "timm_kwargs": b["model_kwargs"], "sha256": b["sha256"],
        "source": "local"})  # fmt: skip
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "bundle.json").write_text(json.dumps(old))
    shutil.copy(d / "prompts.safetensors", v1 / "prompts.safetensors")
    model, got = _bundle.load_bundle(v1)
    assert [m["seed"] for m in got["members"]] == [0]
    with torch.no_grad():
        assert torch.equal(model(_x()), models[0](_x()))


def test_bundle_files_follow_the_umask(two_seeds) -> None:
    _, _, d, _ = two_seeds
    umask = os.umask(0)
    os.umask(umask)
    for name in ("bundle.json", "prompts.safetensors", "prompts-seed1.safetensors"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o666 & ~umask, name


def test_predict_prints_top_k_and_every_good_image_despite_bad_ones(two_seeds, tmp_path, capsys) -> None:
    _, _, d, _ = two_seeds
    good = [save_png(tmp_path / "a.png", 0), save_png(tmp_path / "b.png", 1)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)
    args = ["predict", "--bundle", str(d), str(good[0]), str(bad), str(bomb), str(good[1])]
    assert main([*args, "--top-k", "3"]) == 2
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 6 and [ln.split("\t")[0] for ln in lines] == [str(good[0])] * 3 + [str(good[1])] * 3
    probs = [float(ln.split("\t")[2]) for ln in lines[:3]]
    assert probs == sorted(probs, reverse=True)
    errs = captured.err.strip().splitlines()
    assert len(errs) == 2 and str(bad) in errs[0] and str(bomb) in errs[1] and "MAX_IMAGE_PIXELS" in errs[1]

    assert main(["predict", "--bundle", str(d), "--json", "--top-k", "2", str(good[0])]) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row) == {"image", "label", "class_name", "prob", "top"} and len(row["top"]) == 2
    assert row["top"][0] == [row["class_name"], row["prob"]]


def test_export_refuses_a_file_or_unwritable_out(two_seeds, tmp_path, capsys) -> None:
    run_dir, _, _, _ = two_seeds
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, why in ((blocker, "is a file"), (blocker / "sub", "cannot create it")):
        assert main(["export", "--run-dir", str(run_dir), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(out) in err and why in err and "accepted:" in err
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert main(["export", "--run-dir", str(run_dir), "--out", str(ro)]) == 2
            assert "not writable" in capsys.readouterr().err
        finally:
            ro.chmod(0o700)


def test_reexport_reuses_the_stored_ensemble_accuracy(two_seeds, tmp_path, monkeypatch) -> None:
    run_dir, _, _, _ = two_seeds
    stored = json.loads((run_dir / "results.json").read_text())["tasks"][TASK]["ensemble_test_acc"]

    def no_eval(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(_bundle, "evaluate_bundle", no_eval)
    again = export_bundles(run_dir, tmp_path / "re")[TASK]
    assert json.loads((again / "bundle.json").read_text())["ensemble"]["test_accuracy"] == stored
    assert Path(again).parent.parent == (tmp_path / "re").resolve()


def test_bundle_json_records_the_sha256_of_each_member_file(two_seeds) -> None:
    _, _, d, _ = two_seeds
    meta = json.loads((d / "bundle.json").read_text())
    for m in meta["members"]:
        assert m["sha256"] == hashlib.sha256((d / m["file"]).read_bytes()).hexdigest(), m["file"]


def _refused_predict(bundle, img, capsys) -> str:
    """``predict --json`` on a bad bundle: exit 2, nothing on stdout, one stderr line (returned)."""
    assert main(["predict", "--bundle", str(bundle), "--json", str(img)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and err.startswith("vptsearch: error: ") and "\n" not in err
    return err


@pytest.mark.parametrize("file", ["prompts.safetensors", "prompts-seed1.safetensors"])
def test_one_changed_byte_of_head_bias_is_refused(file, two_seeds, tmp_path, capsys) -> None:
    _, _, good, _ = two_seeds
    d = tmp_path / "b"
    shutil.copytree(good, d)
    flip_byte(d / file, "head.bias")
    before = _listing(d)
    img = save_png(tmp_path / "a.png")
    err = _refused_predict(d, img, capsys)
    assert str(d / file) in err and "modified or corrupted" in err and "re-export" in err
    assert _listing(d) == before  # nothing rewritten, nothing added
    with pytest.raises(ConfigError, match="modified or corrupted"):
        _bundle.read_bundle(d) if file == "prompts.safetensors" else _bundle.load_bundle(d, seed=1)


def test_bundles_written_before_the_checksum_still_load(two_seeds, tmp_path, capsys) -> None:
    _, models, good, _ = two_seeds
    d = tmp_path / "old"
    shutil.copytree(good, d)
    meta = json.loads((d / "bundle.json").read_text())
    for m in meta["members"]:
        del m["sha256"]
    (d / "bundle.json").write_text(json.dumps(meta))
    model, _ = _bundle.load_bundle(d, seed=1)
    with torch.no_grad():
        assert torch.equal(model(_x()), models[1](_x()))
    assert main(["predict", "--bundle", str(d), str(save_png(tmp_path / "a.png"))]) == 0
    capsys.readouterr()

    meta["members"][0]["sha256"] = "not-a-digest"
    (d / "bundle.json").write_text(json.dumps(meta))
    assert main(["predict", "--bundle", str(d), str(save_png(tmp_path / "a.png"))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(d / "bundle.json") in err and "sha256: 64 hex digits" in err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_bundle_tensors_are_refused_at_load(value, two_seeds, tmp_path, capsys) -> None:
    _, _, good, _ = two_seeds
    d = tmp_path / "b"
    shutil.copytree(good, d)
    w = load_file(str(d / "prompts.safetensors"))
    w["head.bias"][1] = value
    rewrite_member(d, "prompts.safetensors", w)  # recorded digest matches: the values themselves are refused
    before = _listing(d)
    img = save_png(tmp_path / "a.png")
    err = _refused_predict(d, img, capsys)
    assert str(d / "prompts.safetensors") in err and "head.bias" in err and "non-finite" in err
    assert "accepted: finite values only" in err
    assert _listing(d) == before


def test_non_finite_outputs_are_refused_at_predict(two_seeds, tmp_path, capsys) -> None:
    _, _, good, _ = two_seeds
    d = tmp_path / "b"
    shutil.copytree(good, d)
    for file in ("prompts.safetensors", "prompts-seed1.safetensors"):
        w = load_file(str(d / file))
        w["head.weight"] = torch.full_like(w["head.weight"], 3e38)  # finite, but the logits overflow
        rewrite_member(d, file, w)
    img = save_png(tmp_path / "a.png")
    err = _refused_predict(d, img, capsys)
    assert str(d) in err and str(img) in err and "non-finite outputs" in err and "accepted:" in err
