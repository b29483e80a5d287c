"""Transparent images are composited on a background, as people see them (issue 29): files, arrays, the key, info."""

import json

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache import store
from featcache.decode import decode_image
from featcache.plan import ExtractOptions, make_plan
from featcache.sources import ArraySource

from conftest import TINY, TINY_ARGS, run_here

INK = (10, 20, 30)


def _icon() -> np.ndarray:
    """A dark icon on transparency: the left half fully transparent (stored black), the right half opaque ink."""
    a = np.zeros((32, 32, 4), np.uint8)
    a[:, 16:] = INK + (255,)
    return a


def _icons_folder(root, n_alpha=2, n_opaque_rgba=1, n_rgb=2):
    """Class folders with ``n_alpha`` transparent icons, RGBA files with every pixel opaque, and plain RGB files."""
    for i in range(n_alpha):
        a = _icon()
        a[i, 0] = (0, 0, 0, 0)  # every icon differs a little
        (root / "icons").mkdir(parents=True, exist_ok=True)
        Image.fromarray(a, "RGBA").save(root / "icons" / f"t{i}.png")
    for i in range(n_opaque_rgba):
        a = _icon()
        a[..., 3] = 255
        Image.fromarray(a, "RGBA").save(root / "icons" / f"o{i}.png")
    (root / "photos").mkdir(parents=True, exist_ok=True)
    for i in range(n_rgb):
        Image.fromarray(np.full((32, 32, 3), 90 + i, np.uint8)).save(root / "photos" / f"p{i}.png")
    return root


def test_rgba_png_is_composited_on_the_documented_white_and_black_gives_the_old_result(tmp_path):
    path = tmp_path / "icon.png"
    Image.fromarray(_icon(), "RGBA").save(path)
    white = decode_image(path, (32, 32))
    assert (white[:, :16] == 255).all() and (white[:, 16:] == INK).all()
    black = decode_image(path, (32, 32), background=(0, 0, 0))
    with Image.open(path) as im:
        old = np.asarray(im.convert("RGB"))  # what featcache did before: alpha dropped
    assert np.array_equal(black, old)
    report = []
    decode_image(path, (32, 32), report=report)
    assert report == [True]


def test_semi_transparent_pixels_blend_with_the_background(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[...] = (0, 0, 0, 128)
    path = tmp_path / "half.png"
    Image.fromarray(a, "RGBA").save(path)
    assert int(decode_image(path, (8, 8))[0, 0, 0]) == 127  # half black over white


@pytest.mark.parametrize("mode", ["P", "LA", "L-key", "RGB-key"])
def test_palette_grey_and_colour_key_transparency_are_composited(tmp_path, mode):
    path = tmp_path / "t.png"
    if mode == "P":
        im = Image.new("P", (16, 16), 1)
        im.putpalette([0, 0, 0, *INK] + [0] * (256 * 3 - 6))
        im.paste(0, (0, 0, 8, 16))
        im.save(path, transparency=0)  # palette entry 0 is transparent
    elif mode == "LA":
        a = np.zeros((16, 16, 2), np.uint8)
        a[:, 8:] = (10, 255)
        Image.fromarray(a, "LA").save(path)
    elif mode == "L-key":
        a = np.full((16, 16), 10, np.uint8)
        a[:, :8] = 0
        Image.fromarray(a, "L").save(path, transparency=0)
    else:
        a = np.zeros((16, 16, 3), np.uint8)
        a[:, 8:] = INK
        Image.fromarray(a, "RGB").save(path, transparency=(0, 0, 0))
    with Image.open(path) as im:
        assert im.mode == mode.split("-")[0] and (im.mode in ("LA",) or "transparency" in im.info)
    arr = decode_image(path, (16, 16))
    assert (arr[:, :8] == 255).all()  # the transparent half is white
    assert (arr[:, 8:] < 40).all()  # the ink stays dark


def test_bad_background_exits_2_with_one_line(tmp_path):
    folder = _icons_folder(tmp_path / "imgs", 1, 0, 1)
    for bad in ("notacolour", "#12345", "#ff000080"):
        proc = run_here("extract", folder, *TINY_ARGS, "--background", bad, "--out", tmp_path / "c",
                             check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "background" in lines[0] and bad in lines[0], proc.stderr
    assert not (tmp_path / "c").exists()


def test_the_background_is_in_the_key_and_the_default_keeps_old_keys():
    src = ArraySource(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0, 1])

    def plan(**kw):
        return make_plan(src, TINY["backbone"], None, ExtractOptions(image_size=32, **kw), weights="none")

    default, white, black = plan(), plan(background="#FFFFFF"), plan(background="black")
    assert default.key == white.key and "background" not in default.params
    assert black.key != default.key and black.params["background"] == "#000000"
    assert plan(background="#000000").key == black.key
    # the default's key is the one caches made before backgrounds existed have
    assert default.key == store.cache_key(default.params, default.fingerprint)


@pytest.mark.slow
def test_folder_of_icons_counts_alpha_in_manifest_and_info_and_black_equals_the_old_decode(tmp_path):
    folder = _icons_folder(tmp_path / "imgs")
    run_here("extract", folder, *TINY_ARGS, "--quiet", "--out", tmp_path / "white")
    manifest = json.loads((tmp_path / "white" / "manifest.json").read_text())
    assert manifest["counts"]["alpha"] == 2  # the opaque RGBA file changes nothing and is not counted
    assert all("alpha" in s for s in manifest["shards"])
    info = run_here("info", tmp_path / "white").stdout
    assert "with alpha" in info and "2 (on white)" in info

    # the old decode, alpha dropped, as RGB files of the same names
    old = tmp_path / "old"
    for p in folder.rglob("*.png"):
        (old / p.parent.name).mkdir(parents=True, exist_ok=True)
        with Image.open(p) as im:
            im.convert("RGB").save(old / p.parent.name / p.name)
    run_here("extract", old, *TINY_ARGS, "--quiet", "--out", tmp_path / "old-cache")
    run_here("extract", folder, *TINY_ARGS, "--quiet", "--background", "black", "--out", tmp_path / "black")
    w, b, o = (featcache.open_cache(tmp_path / n) for n in ("white", "black", "old-cache"))
    assert w.ids() == b.ids() == o.ids()
    assert np.array_equal(b.features(), o.features())
    assert not np.array_equal(w.features(), o.features())
    assert b.key != w.key
    assert "1 computed" in run_here("extract", folder, *TINY_ARGS, "--background", "black", "--out",
                                         tmp_path / "white", "--overwrite").stdout


def test_rgba_arrays_are_composited_like_files(tmp_path):
    rgba = np.stack([_icon(), _icon(), np.dstack([np.full((32, 32, 3), 7, np.uint8), np.full((32, 32), 255,
                                                                                                np.uint8)])])
    composited = rgba[..., :3].copy()
    composited[:2, :, :16] = 255
    a = featcache.extract(rgba, labels=[0, 1, 0], out=tmp_path / "a", **TINY)
    b = featcache.extract(composited, labels=[0, 1, 0], out=tmp_path / "b", **TINY)
    assert np.array_equal(a.features(), b.features())
    assert a.manifest["counts"]["alpha"] == 2 and b.manifest["counts"]["alpha"] == 0
