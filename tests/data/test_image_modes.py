"""Every common Pillow mode becomes the 8-bit RGB of the same picture (issue 31, W1), in the three
places images are decoded: an import (stored, then read back from the shards), ``--resize``, and
``predict``'s image loading. The rules are in :mod:`vptsearch.data._codec`.

Each case saves a few pictures in one mode (the file format that keeps the mode) next to their 8-bit
twin, the RGB the rules promise; decoded pixels must match the twin within one level.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vptsearch.cli import main
from vptsearch.data import clear_cache, load_split
from vptsearch.data._codec import decode_image, resized_jpeg, to_rgb
from vptsearch.search._bundle_predict import _read_image

H, W = 6, 8
COLOURS = 16  # a small palette, so that P images hold the colour picture exactly


def _grey(rng) -> np.ndarray:
    g = rng.integers(0, 256, (H, W), dtype=np.uint8)
    g.flat[:2] = (0, 255)  # both ends present: a stretched range is the identity
    return g


def _rgb(rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A picture of ``COLOURS`` colours: (its RGB, palette indices, the palette)."""
    palette = rng.integers(0, 256, (COLOURS, 3), dtype=np.uint8)
    idx = rng.integers(0, COLOURS, (H, W), dtype=np.uint8)
    return palette[idx], idx, palette


def _alpha(rng) -> np.ndarray:
    return rng.choice(np.array([0, 77, 128, 255], dtype=np.uint8), (H, W))


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The picture flattened onto white: what a viewer shows and what the rules promise."""
    a = alpha.astype(np.float64)[..., None] / 255
    return np.round(rgb * a + 255 * (1 - a)).astype(np.uint8)


def _grey3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=2)


def _palette_image(idx, palette) -> Image.Image:
    img = Image.fromarray(idx).convert("P")  # L -> P keeps the values as indices
    img.putpalette(palette.ravel().tolist())
    return img


def _p_keyed(rng):
    rgb, idx, palette = _rgb(rng)
    img = _palette_image(idx, palette)
    img.info["transparency"] = 0  # index 0 is fully transparent
    return img, "png", np.where((idx == 0)[..., None], np.uint8(255), rgb)


def _p_alpha(rng):
    rgb, idx, palette = _rgb(rng)
    img = _palette_image(idx, palette)
    per_index = np.array([0, 77, 128, 255] * (COLOURS // 4), dtype=np.uint8)
    img.info["transparency"] = per_index.tobytes()  # a tRNS chunk: one alpha per palette entry
    return img, "png", _on_white(rgb, per_index[idx])


def _rgb_keyed(rng):
    rgb, idx, palette = _rgb(rng)
    key = tuple(int(v) for v in palette[idx.flat[0]])
    keyed = np.all(rgb == np.array(key, dtype=np.uint8), axis=-1)
    img = Image.fromarray(rgb)
    img.info["transparency"] = key  # one colour is transparent (tRNS of an RGB PNG)
    return img, "png", np.where(keyed[..., None], np.uint8(255), rgb)


def _gray16(g: np.ndarray, noise) -> np.ndarray:
    """16-bit values whose 8-bit rounding is ``g``: ``g * 257`` plus a low byte of noise."""
    return np.clip(g.astype(np.int64) * 257 + noise, 0, 65535)


def _grey_case(make, fmt: str):
    """A grey picture ``g`` in the mode ``make(g)`` gives; its twin is ``g`` itself."""

    def case(rng):
        g = _grey(rng)
        return make(g), fmt, _grey3(g)

    return case


def _colour_case(make, fmt: str):
    def case(rng):
        rgb = _rgb(rng)[0]
        return make(rgb), fmt, rgb

    return case


def _one_bit(rng):
    g = _grey(rng)
    return Image.fromarray(g > 127), "png", _grey3(np.where(g > 127, 255, 0).astype(np.uint8))


def _i16_noisy(rng):
    g = _grey(rng)
    return Image.fromarray(_gray16(g, rng.integers(-128, 129, (H, W))).astype(np.uint16)), "png", _grey3(g)


def _i16_mid_grey(rng):  # 32768 / 257 = 127.5: mid grey, where Pillow's convert gives white
    return Image.fromarray(np.full((H, W), 32768, np.uint16)), "png", np.full((H, W, 3), 128, np.uint8)


def _palette(rng):
    rgb, idx, palette = _rgb(rng)
    return _palette_image(idx, palette), "png", rgb


def _la(rng):
    g, a = _grey(rng), _alpha(rng)
    return Image.fromarray(np.dstack([g, a])), "png", _on_white(_grey3(g), a)


def _rgba(rng):
    rgb, a = _rgb(rng)[0], _alpha(rng)
    return Image.fromarray(np.dstack([rgb, a])), "png", _on_white(rgb, a)


def _opaque(g: np.ndarray) -> np.ndarray:
    return np.full(g.shape[:2], 255, np.uint8)


# id -> rng -> (image in that mode, file format, its 8-bit twin [H, W, 3])
MODES = {
    "RGB": _colour_case(Image.fromarray, "png"),
    "L": _grey_case(Image.fromarray, "png"),
    "1": _one_bit,
    "I;16 png": _grey_case(lambda g: Image.fromarray(g.astype(np.uint16) * 257), "png"),
    "I;16 png, low byte noise": _i16_noisy,
    "I;16 mid grey is not white": _i16_mid_grey,
    "I;16B tiff": _grey_case(
        lambda g: Image.frombytes("I;16B", (W, H), (g.astype(">u2") * 257).tobytes()), "tiff"
    ),
    "I 16-bit pgm": _grey_case(lambda g: Image.fromarray(g.astype(np.uint16) * 257), "ppm"),
    "I 32-bit tiff, 16-bit values": _grey_case(lambda g: Image.fromarray(g.astype(np.int32) * 257), "tiff"),
    "I 32-bit tiff, wide range": _grey_case(
        lambda g: Image.fromarray(g.astype(np.int32) * 1000 - 70000), "tiff"
    ),
    "F in [0, 1]": _grey_case(lambda g: Image.fromarray(g.astype(np.float32) / 255), "tiff"),
    "F in [0, 255]": _grey_case(lambda g: Image.fromarray(g.astype(np.float32)), "tiff"),
    "F in [0, 65535]": _grey_case(lambda g: Image.fromarray(g.astype(np.float32) * 257), "tiff"),
    "F in [-1, 1]": _grey_case(lambda g: Image.fromarray(g.astype(np.float32) / 127.5 - 1), "tiff"),
    "P": _palette,
    "P, transparent index": _p_keyed,
    "P, alpha per entry": _p_alpha,
    "CMYK tiff": _colour_case(lambda c: Image.fromarray(c).convert("CMYK"), "tiff"),
    "LA opaque": _grey_case(lambda g: Image.fromarray(np.dstack([g, _opaque(g)])), "png"),
    "LA": _la,
    "RGBA opaque": _colour_case(lambda c: Image.fromarray(np.dstack([c, _opaque(c)])), "png"),
    "RGBA": _rgba,
    "RGB, transparent colour": _rgb_keyed,
}
SUFFIX = {"png": ".png", "tiff": ".tif", "ppm": ".pgm"}


def _save(img: Image.Image, fmt: str, path) -> None:
    kwargs = {"transparency": img.info["transparency"]} if "transparency" in img.info else {}
    img.save(path, format=fmt.upper(), **kwargs)


def _pictures(case: str, folder, n: int) -> dict[str, np.ndarray]:
    """``n`` pictures of mode ``case`` saved under ``folder``: relative path -> 8-bit twin."""
    twins = {}
    for i in range(n):
        img, fmt, twin = MODES[case](np.random.default_rng(i))
        rel = f"images/{i}{SUFFIX[fmt]}"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        _save(img, fmt, folder / rel)
        twins[rel] = twin
    return twins


def _assert_twin(got: np.ndarray, twin: np.ndarray, where: str) -> None:
    assert got.shape == twin.shape and got.dtype == np.uint8, where
    diff = np.abs(got.astype(int) - twin.astype(int))
    assert diff.max() <= 1, f"{where}: off by up to {diff.max()} levels"


@pytest.mark.parametrize("case", list(MODES))
def test_the_file_keeps_its_mode(tmp_path, case):
    # guards the corpus itself: a format that silently changed the mode would test nothing
    rel = next(iter(_pictures(case, tmp_path, 1)))
    with Image.open(tmp_path / rel) as img:
        want = MODES[case](np.random.default_rng(0))[0].mode
        assert img.mode == ("I" if want == "I;16" and rel.endswith(".pgm") else want)


@pytest.mark.parametrize("case", list(MODES))
def test_import_stores_the_8bit_twin(tmp_path, monkeypatch, capsys, case):
    src, out = tmp_path / "src", tmp_path / "out"
    monkeypatch.setenv("VPTSEARCH_DATA", str(out))
    twins = _pictures(case, src, 8)
    rels = list(twins)
    lists = {"train800": rels[:4], "val200": rels[4:6], "test": rels[6:]}
    for split, entries in lists.items():
        (src / f"{split}.txt").write_text("".join(f"{rel} {i % 2}\n" for i, rel in enumerate(entries)))
    clear_cache()
    assert main(["data", "import-vtab", str(src), "--task", "modes"]) == 0, capsys.readouterr().err
    for split, entries in lists.items():
        x, _ = load_split("custom/modes", split, out)
        for rel, got in zip(entries, x.permute(0, 2, 3, 1).numpy(), strict=True):
            _assert_twin(got, twins[rel], f"{case}: {rel} imported")
    clear_cache()


@pytest.mark.parametrize("case", list(MODES))
def test_predict_loads_the_8bit_twin(tmp_path, case):
    for rel, twin in _pictures(case, tmp_path, 3).items():
        got = _read_image(tmp_path / rel)
        _assert_twin(got, twin, f"{case}: {rel} in predict")
        assert got.flags.writeable  # torch.from_numpy needs it


@pytest.mark.parametrize("case", list(MODES))
def test_resize_starts_from_the_8bit_twin(tmp_path, case):
    rel, twin = next(iter(_pictures(case, tmp_path, 1).items()))
    buf = io.BytesIO()
    Image.fromarray(twin).save(buf, format="PNG")
    got = decode_image(resized_jpeg((tmp_path / rel).read_bytes(), 16))
    want = decode_image(resized_jpeg(buf.getvalue(), 16))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2, case  # same pixels in, same JPEG out


def test_import_folder_reads_16bit_png_and_pgm(tmp_path):
    from vptsearch.data import import_folder

    for c, fmt in (("a", "png"), ("b", "ppm")):
        for i in range(6):
            g = np.full((H, W), 40 * (i + 1) + (c == "b"), np.uint8)
            (tmp_path / "src" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "src" / c / f"{i}{SUFFIX[fmt]}")
    import_folder(tmp_path / "src", "sixteen", root=tmp_path / "out", n_train=4, n_val=2)
    values = set()
    for split in ("train800", "val200", "test"):
        x, _ = load_split("custom/sixteen", split, tmp_path / "out")
        values |= {int(v) for v in x.flatten().unique()}
    assert values == {40 * (i + 1) + b for i in range(6) for b in (0, 1)}  # every image, none white


def test_float_rules_edge_cases():
    nan = Image.fromarray(np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32))
    assert to_rgb(nan)[0, :, 0].tolist() == [0, 0, 0, 128]  # non-finite counts as 0, then [0, 1]
    flat = Image.fromarray(np.full((2, 2), -3.0, np.float32))
    assert to_rgb(flat).max() == 0  # no range to stretch: black
    assert to_rgb(Image.fromarray(np.array([[300.0, 65535.0]], np.float32)))[0, :, 0].tolist() == [1, 255]
