"""Derived caches under $FEATCACHE_HOME (featcache/derived.py): damaged entries are rebuilt, never used.

Real files damaged the way a bad disk or a stray write does it (same-size
byte damage, a forged file at the cache's own name), real OpenVINO, the real
CLI: features stay the Keras runtime's (cosine >= 0.9999), one line says what
was rebuilt, and ``--repair`` never writes a row through a damaged graph.
"""

import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.errors import FeatcacheWarning
from featcache.files import sha256_path
from featcache.runtimes import openvino_installed

from conftest import TINY, TINY_ARGS, run_here

needs_openvino = pytest.mark.skipif(not openvino_installed() and not os.environ.get("CI"),
                                    reason="the openvino extra is not installed (make installs it)")


def _damage(path, start=0.25, stop=0.75):
    """Same-size damage: four bytes in every sixteen of the middle of the file inverted (whole float32s)."""
    data = bytearray(path.read_bytes())
    for i in range(int(len(data) * start) // 16 * 16, int(len(data) * stop), 16):
        data[i:i + 4] = bytes(b ^ 0xFF for b in data[i:i + 4])
    path.write_bytes(bytes(data))


def _cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _rebuilt_lines(stderr):
    return [line for line in stderr.splitlines() if "is damaged" in line]


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(27)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "images" / label / f"{i}.png")
    return tmp_path / "images"


ARGS = [*TINY_ARGS, "--shard-size", "4", "--dtype", "float32", "--quiet"]


@needs_openvino
@pytest.mark.slow
def test_a_damaged_cached_ir_is_rebuilt_and_repair_writes_only_right_rows(images, tmp_path):
    env = {"FEATCACHE_HOME": str(tmp_path / "home")}
    run_here("extract", images, *ARGS, "--runtime", "keras", "--out", tmp_path / "ref", env=env)
    run_here("extract", images, *ARGS, "--runtime", "openvino", "--out", tmp_path / "ov", env=env)
    (binary,) = (tmp_path / "home" / "openvino").glob("mobilenet_v2-*/model.bin")
    _damage(binary)
    (tmp_path / "ov" / "shards" / "00001.h5").write_bytes(b"damaged")  # --repair recomputes it
    proc = run_here("extract", images, *ARGS, "--runtime", "openvino", "--repair", "--out", tmp_path / "ov",
                         env=env)
    ref, repaired = featcache.open_cache(tmp_path / "ref"), featcache.open_cache(tmp_path / "ov")
    assert _cosines(repaired.features(), ref.features()).min() >= 0.9999
    assert repaired.verify() == [] and repaired.timings["runtime"] == "openvino"
    lines = _rebuilt_lines(proc.stderr)
    assert len(lines) == 1 and "OpenVINO IR" in lines[0] and "model.bin" in lines[0], proc.stderr
    fresh = run_here("extract", images, *ARGS, "--runtime", "openvino", "--out", tmp_path / "again", env=env)
    assert _rebuilt_lines(fresh.stderr) == []  # the rebuilt entry is whole
    assert _cosines(featcache.open_cache(tmp_path / "again").features(), ref.features()).min() >= 0.9999


def _extract(x, out, runtime, **kw):
    return featcache.extract(x, labels=np.arange(len(x)) % 2, out=out, runtime=runtime, shard_size=4,
                             dtype="float32", progress=False, **TINY, **kw)


@needs_openvino
@pytest.mark.slow
def test_a_damaged_compiled_blob_never_reaches_the_features(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    x = np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    ref = _extract(x, tmp_path / "ref", "keras")
    _extract(x, tmp_path / "ov", "openvino")
    for blob in (tmp_path / "home").rglob("*.blob"):  # OpenVINO's compiled-model cache, where one is kept
        _damage(blob, 0.1, 0.9)
    (tmp_path / "ov" / "shards" / "00002.h5").write_bytes(b"damaged")
    repaired = _extract(x, tmp_path / "ov", "openvino", repair=True)
    assert repaired.verify() == []
    assert _cosines(repaired.features(), ref.features()).min() >= 0.9999


@needs_openvino
@pytest.mark.slow
def test_an_ir_damaged_with_its_record_forged_is_caught_by_the_probe(tmp_path, monkeypatch):
    """The sha256 record rewritten to match the damage: the probe batch still refuses the graph."""
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    x = np.random.default_rng(4).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    ref = _extract(x, tmp_path / "ref", "keras")
    _extract(x, tmp_path / "ov", "openvino")
    (binary,) = (tmp_path / "home" / "openvino").glob("mobilenet_v2-*/model.bin")
    _damage(binary)
    record_file = binary.with_name("record.json")
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        record["files"]["model.bin"] = sha256_path(binary)
        record_file.write_text(json.dumps(record))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again, summary = _extract(x, tmp_path / "again", "openvino", return_summary=True)
    assert _cosines(again.features(), ref.features()).min() >= 0.9999
    lines = [str(w.message) for w in caught if issubclass(w.category, FeatcacheWarning)]
    assert len(lines) == 1 and "probe batch" in lines[0], lines
    assert again.timings["runtime"] == "openvino" and summary.notes == []


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["damaged", "forged"])
def test_damaged_or_forged_converted_weights_are_rebuilt(tmp_path, monkeypatch, fault):
    """$FEATCACHE_HOME/weights: the Keras file converted from the shipped .pth, damaged or replaced."""
    from featcache.backbones import efficientnet_lite
    from featcache.backbones.resolve import resolve

    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path))
    pixels = np.random.default_rng(5).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)

    def features():
        return np.asarray(resolve("efficientnet_lite0").build((64, 64))(pixels))

    first = features()  # converts the .pth and caches it
    (cached,) = (tmp_path / "weights").glob("efficientnet_lite0-*.weights.h5")
    if fault == "damaged":
        _damage(cached, 0.5, 0.9)
    else:  # a valid Keras weights file of the same model, other weights
        efficientnet_lite.full_model((64, 64, 3)).save_weights(cached)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = features()
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-5)
    lines = [str(w.message) for w in caught if issubclass(w.category, FeatcacheWarning)]
    assert len(lines) == 1 and "converted weights" in lines[0] and "efficientnet_lite0" in lines[0], lines
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_allclose(features(), first, rtol=1e-5, atol=1e-5)
    assert not [w for w in caught if issubclass(w.category, FeatcacheWarning)]  # rebuilt whole: used as is
