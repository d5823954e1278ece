"""Importers on small fixture trees: VTAB-1k folders, FGVC json, image folders, TFDS hint."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vptsearch._errors import ConfigError, DataError
from vptsearch.data import (
    get_task,
    import_fgvc,
    import_folder,
    import_vtab,
    import_vtab_tfds,
    load_split,
    read_manifest,
)

from ._folders import class_tree


def _png(path, i, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(img).save(path)
    return img


def _vtab_tree(root, folder="dtd", k=47):
    base = root / folder
    pixels, lists = {}, {}
    # train800 holds every class once: a registered task's import needs each of its labels used
    for split, n, offset in (("train800", k, 0), ("val200", 2, 200), ("test", 5, 300)):
        lines = []
        for i in range(offset, offset + n):
            rel = f"images/{split}/{i}.png"
            pixels[rel] = _png(base / rel, i)
            lines.append(f"{rel} {i % k}")
        lists[split] = lines
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return base, pixels, lists


def test_vtab_folder_round_trip(tmp_path):
    _, pixels, lists = _vtab_tree(tmp_path / "src")
    _vtab_tree(tmp_path / "src", folder="cifar", k=100)  # the common folder name of cifar100
    assert import_vtab(tmp_path / "src", root=tmp_path / "out") == ["vtab1k/cifar100", "vtab1k/dtd"]
    for split, lines in lists.items():
        x, y = load_split("vtab1k/dtd", split, tmp_path / "out")
        want = np.stack([pixels[line.split()[0]] for line in lines])
        assert torch.equal(x, torch.from_numpy(want).permute(0, 3, 1, 2))
        assert y.tolist() == [int(line.split()[1]) for line in lines]
    assert read_manifest("vtab1k/dtd", tmp_path / "out").counts == {
        "train800": 47, "val200": 2, "train800val200": 49, "test": 5}  # fmt: skip


def test_vtab_folder_errors(tmp_path):
    base, _, _ = _vtab_tree(tmp_path / "src")
    (base / "val200.txt").unlink()
    with pytest.raises(DataError, match=r"missing split list .*val200\.txt"):
        import_vtab(base, root=tmp_path / "out")
    _vtab_tree(tmp_path / "src")
    (base / "test.txt").write_text("images/test/300.png 3\nimages/test/999.png 1\n")
    with pytest.raises(DataError, match=r"cannot read image .*999\.png"):
        import_vtab(base, root=tmp_path / "out")
    (base / "test.txt").write_text("images/test/300.png 47\n")
    with pytest.raises(DataError, match=r"label 47 .*300\.png is out of range .*0\.\.46"):
        import_vtab(base, root=tmp_path / "out")
    (base / "test.txt").write_text("images/test/300.png 3\nimages/test/300.png 3\n")
    with pytest.raises(DataError, match=r"image 'images/test/300\.png' is listed twice in test"):
        import_vtab(base, root=tmp_path / "out")
    assert not (tmp_path / "out" / "vtab1k" / "dtd").exists()
    vtab = tmp_path / "out" / "vtab1k"  # refused before writing: not even the suite folder is made
    assert not vtab.exists() or not list(vtab.iterdir())  # no temp folders left behind


def _fgvc_tree(root, n_train=30, n_test=6, with_val=True):
    train, val, test = {}, {}, {}
    for i in range(n_train + n_test):
        label = i % 4
        rel = f"{label:03d}.Bird_{label}/img_{i}.jpg"
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 10, 3), i * 5, dtype=np.uint8)).save(path, quality=95)
        (test if i >= n_train else val if with_val and i % 10 == 0 else train)[rel] = label
    for name, d in (("train", train), ("val", val), ("test", test)):
        if name != "val" or with_val:
            (root / f"{name}.json").write_text(json.dumps(d))
    return train, val, test


def test_fgvc_json_with_val(tmp_path):
    train, val, test = _fgvc_tree(tmp_path / "cub")
    assert import_fgvc(tmp_path / "cub", "cub", root=tmp_path / "out") == "fgvc/cub"
    m = read_manifest("fgvc/cub", tmp_path / "out")
    assert m.counts == {
        "train": len(train),
        "val": len(val),
        "trainval": len(train) + len(val),
        "test": len(test),
    }
    assert m.class_names[:4] == (
        "000.Bird_0",
        "001.Bird_1",
        "002.Bird_2",
        "003.Bird_3",
    )  # from the folder names
    assert m.image_size is None  # 12 x 10 images: stored as they are
    x, y = load_split("fgvc/cub", "test", tmp_path / "out", size=16)
    assert x.shape == (6, 3, 16, 16) and sorted(y.tolist()) == sorted(test.values())


def test_fgvc_json_without_val_splits_train_90_10(tmp_path):
    train, _, _ = _fgvc_tree(tmp_path / "cub", n_train=40, with_val=False)
    import_fgvc(tmp_path / "cub", "fgvc/cub", root=tmp_path / "a", seed=3)
    import_fgvc(tmp_path / "cub", "fgvc/cub", root=tmp_path / "b", seed=3)
    m = read_manifest("fgvc/cub", tmp_path / "a")
    assert m.counts["val"] == 4 and m.counts["train"] == 36 and m.counts["trainval"] == 40
    assert [s.sha256 for s in m.shards] == [
        s.sha256 for s in read_manifest("fgvc/cub", tmp_path / "b").shards
    ]
    _, ytr = load_split("fgvc/cub", "train", tmp_path / "a")
    _, yva = load_split("fgvc/cub", "val", tmp_path / "a")
    assert sorted(ytr.tolist() + yva.tolist()) == sorted(train.values())


def test_fgvc_bad_input(tmp_path):
    _fgvc_tree(tmp_path / "cub")
    with pytest.raises(Exception, match=r"unknown FGVC task 'cubb'.*did you mean 'cub'"):
        import_fgvc(tmp_path / "cub", "cubb", root=tmp_path / "out")
    first = next(iter(json.loads((tmp_path / "cub" / "test.json").read_text())))
    (tmp_path / "cub" / "images" / first).write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(DataError, match=r"image .*img_30\.jpg does not decode"):
        import_fgvc(tmp_path / "cub", "cub", root=tmp_path / "out")
    assert not (tmp_path / "out" / "fgvc" / "cub").exists()


def test_image_folder_import(tmp_path):
    for ci, c in enumerate(("cat", "dog", "owl")):
        for i in range(12):
            _png(tmp_path / "src" / c / f"{i}.png", 100 * ci + i)
    assert import_folder(tmp_path / "src", "pets", root=tmp_path / "out", n_train=8, n_val=2) == "custom/pets"
    info = get_task("custom/pets", tmp_path / "out")
    assert info.num_classes == 3 and info.group == "custom" and "import-folder" in info.build_hint
    m = read_manifest("custom/pets", tmp_path / "out")
    assert m.class_names == ("cat", "dog", "owl")
    assert m.counts == {"train800": 8, "val200": 2, "train800val200": 10, "test": 26}
    x_tv, _ = load_split("custom/pets", "train800val200", tmp_path / "out")
    x_te, _ = load_split("custom/pets", "test", tmp_path / "out")
    tv = {t.numpy().tobytes() for t in x_tv}
    assert not any(t.numpy().tobytes() in tv for t in x_te)


def test_tfds_importer_gives_install_hint():
    with pytest.raises(DataError, match=r"pip install tensorflow tensorflow-datasets"):
        import_vtab_tfds(["dtd"])


def test_fgvc_loader_augments_train_and_center_crops_eval(tmp_path):
    from vptsearch.data import make_loader

    _fgvc_tree(tmp_path / "cub")
    import_fgvc(tmp_path / "cub", "cub", root=tmp_path / "out")
    kw = dict(root=tmp_path / "out", batch_size=8, image_size=14, mean=(0.5,) * 3, std=(0.5,) * 3)
    train = make_loader("fgvc/cub", "train", train=True, **kw)
    assert train.augment and train.images.shape[-1] == 16  # resized once to 14 * 256/224, cropped per batch
    x1, x2 = torch.cat([x for x, _ in train]), torch.cat([x for x, _ in train])
    assert x1.shape[1:] == (3, 14, 14) and not torch.equal(x1, x2)  # fresh crops every epoch
    evaluation = make_loader("fgvc/cub", "test", train=False, **kw)
    e1, e2 = torch.cat([x for x, _ in evaluation]), torch.cat([x for x, _ in evaluation])
    assert e1.shape == (6, 3, 14, 14) and torch.equal(e1, e2)  # deterministic centre crop
    streamed = make_loader("fgvc/cub", "test", train=False, in_memory=False, **kw)
    assert torch.allclose(torch.cat([x for x, _ in streamed]), e1, atol=0.02)  # same transform, same order


def test_image_folder_numbered_classes_sort_numerically(tmp_path):
    # text order would be 1, 10, 2, 3: labels must follow the numbers (2 before 10)
    value_to_class = class_tree(tmp_path / "src", ["10", "2", "1", "3"])
    import_folder(tmp_path / "src", "nums", root=tmp_path / "out", n_train=6, n_val=2)
    m = read_manifest("custom/nums", tmp_path / "out")
    assert m.class_names == ("1", "2", "3", "10")
    seen = 0
    for split in ("train800", "val200", "test"):
        x, y = load_split("custom/nums", split, tmp_path / "out")
        for img, label in zip(x, y.tolist(), strict=True):
            assert m.class_names[label] == value_to_class[int(img[0, 0, 0])]
            seen += 1
    assert seen == 16


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["01", "1", "2"], r"class folders '01' and '1' in .* are the same number"),
        (["1", "2", "cat"], r"mix numbers \('1'\) and names \('cat'\)"),
        (["class2", "class10", "class1"], r"'class10' and 'class2' .* sort differently as text and by"),
    ],
)
def test_image_folder_ambiguous_class_names_are_refused(tmp_path, capsys, names, message):
    from vptsearch.cli import main

    class_tree(tmp_path / "src", names)
    argv = ["data", "import-folder", str(tmp_path / "src"), "--task", "amb", "--root", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "custom" / "amb").exists()


def test_image_folder_zero_padded_and_word_names_keep_text_order(tmp_path):
    class_tree(tmp_path / "a", ["class02", "class10", "class01"])
    import_folder(tmp_path / "a", "padded", root=tmp_path / "out", n_train=6, n_val=2)
    assert read_manifest("custom/padded", tmp_path / "out").class_names == ("class01", "class02", "class10")
    with pytest.raises(ConfigError, match=r"'mini/digits' is built by `vptsearch data build-mini`"):
        import_folder(tmp_path / "a", "mini/digits", root=tmp_path / "out")
