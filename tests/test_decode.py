"""The decoder: real formats decode correctly, hostile files are refused with a reason."""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from featcache.decode import decode_image
from featcache.errors import DecodeError


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


def test_jpeg_png_decode_to_size(tmp_path, photos):
    for ext in ("jpg", "png", "webp", "bmp"):
        p = _save(tmp_path / f"a.{ext}", Image.fromarray(photos[0]))
        arr = decode_image(p, (64, 80))
        assert arr.shape == (64, 80, 3) and arr.dtype == np.uint8
        # content survives: mean colour close to the photo's
        assert abs(float(arr.mean()) - float(photos[0].mean())) < 6


def test_draft_mode_jpeg_matches_full_decode_closely(tmp_path, photos):
    p = _save(tmp_path / "big.jpg", Image.fromarray(photos[1]), quality=95)
    fast = decode_image(p, (64, 64)).astype(np.float32)
    with Image.open(p) as im:
        full = np.asarray(im.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR, reducing_gap=3.0),
                          dtype=np.float32)
    assert np.abs(fast - full).mean() < 4.0


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(os.urandom(2048)), "not an image"),
    (lambda p: p.write_text("<html>not a picture</html>"), "not an image"),
])
def test_garbage_is_refused_with_a_reason(tmp_path, make, reason):
    p = tmp_path / "bad.jpg"
    make(p)
    with pytest.raises(DecodeError, match=reason):
        decode_image(p, (32, 32))


def test_truncated_jpeg_is_refused(tmp_path, photos):
    buf = io.BytesIO()
    Image.fromarray(photos[0]).save(buf, format="JPEG")
    p = tmp_path / "trunc.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_image(p, (32, 32))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("L", (12_000, 12_000)).save(p, optimize=True)  # 144 MP, a few hundred KB on disk
    assert p.stat().st_size < 2_000_000
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(p, (32, 32))


def test_modes_become_rgb(tmp_path):
    grey16 = np.full((20, 20), 65535, np.uint16)
    p16 = _save(tmp_path / "g16.png", Image.fromarray(grey16))
    assert decode_image(p16, (20, 20)).min() == 255  # scaled by bit depth, not clipped garbage
    cmyk = _save(tmp_path / "c.jpg", Image.new("CMYK", (20, 20), (0, 255, 255, 0)))
    px = decode_image(cmyk, (20, 20))[10, 10]
    assert px[0] > 200 and px[1] < 60  # red
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 0
    assert decode_image(_save(tmp_path / "p.png", pal, transparency=0), (20, 20))[5, 5, 1] == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), "blue")
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif.tobytes(), quality=95)
    arr = decode_image(p, (40, 20))  # displayed image is 20 wide, 40 tall
    assert arr[5, 10, 0] > 200 and arr[35, 10, 2] > 200  # red on top after rotation


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ("green", "red")]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    px = decode_image(p, (16, 16))[8, 8]
    assert px[1] > 100 and px[0] < 50


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=4096), prefix=st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a"]))
def test_random_bytes_never_crash_the_decoder(tmp_path, data, prefix):
    p = tmp_path / "fuzz.jpg"
    p.write_bytes(prefix + data)
    try:
        arr = decode_image(p, (8, 8))
    except DecodeError as exc:
        assert str(exc)
    else:
        assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8
