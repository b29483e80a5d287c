"""simplejpeg's decode of plain RGB JPEGs (the featcache[jpeg] extra) gives Pillow's pixels, features and cache key."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache import decode
from featcache.decode import decode_image, fast_jpeg_available
from featcache.errors import DecodeError

from conftest import TINY

pytestmark = pytest.mark.skipif(not fast_jpeg_available(), reason="simplejpeg (featcache[jpeg]) is not installed")


def _jpegs(photos, n=12, seed=0):
    """Real photo crops of varied size (none twice the target: no draft), JPEG quality 90, some greyscale."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        photo = photos[i % 2]
        h, w = int(rng.integers(70, 300)), int(rng.integers(70, 400))
        y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
        im = Image.fromarray(np.ascontiguousarray(photo[y:y + h, x:x + w]))
        buf = io.BytesIO()
        (im.convert("L") if i % 5 == 4 else im).save(buf, "JPEG", quality=90, subsampling=i % 3)
        out.append(buf.getvalue())
    return out


def test_same_pixels_as_pillow(photos):
    for data in _jpegs(photos):
        for size in ((64, 64), (224, 224), (50, 80)):
            fast = decode_image("x.jpg", size, data=data)
            slow = decode_image("x.jpg", size, data=data, fast_jpeg=False)
            assert np.array_equal(fast, slow)


def test_turned_and_damaged_jpegs_decode_as_pillow_does(photos):
    im = Image.fromarray(photos[0][:120, :200])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: Pillow turns it, simplejpeg would not
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, exif=exif)
    turned = decode_image("x.jpg", (60, 40), data=buf.getvalue())
    assert np.array_equal(turned, decode_image("x.jpg", (60, 40), data=buf.getvalue(), fast_jpeg=False))
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]
    messages = []
    for fast in (True, False):
        with pytest.raises(DecodeError) as err:
            decode_image("x.jpg", (60, 40), data=truncated, fast_jpeg=fast)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "truncated" in messages[0]


def test_features_and_key_equal_to_pillow_only(tmp_path, photos, monkeypatch):
    folder = tmp_path / "jpegs"
    for i, data in enumerate(_jpegs(photos, n=16, seed=1)):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{i % 2}" / f"{i:02d}.jpg").write_bytes(data)
    kw = {**TINY, "image_size": 64, "dtype": "float32"}
    fast = featcache.extract(folder, out=tmp_path / "fast", **kw)
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # the extra not installed: Pillow decodes every file
    decode._simplejpeg.cache_clear()
    try:
        assert not decode.fast_jpeg_available()
        slow = featcache.extract(folder, out=tmp_path / "pillow", **kw)
    finally:
        decode._simplejpeg.cache_clear()
    assert fast.key == slow.key
    a, b = fast.features().astype(np.float64), slow.features().astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.9999
