"""The runtimes of stage one (featcache/runtimes.py): the same cache whatever runs the CNN.

Real photos (scikit-learn's two sample photos and crops of them, as JPEG
files), real backbones, real OpenVINO: features from ``--runtime openvino``
agree with ``--runtime keras`` at cosine >= 0.9999 per row, the key is the
same, a resume may mix the two, and a missing OpenVINO means one note and
Keras, never a stopped run.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.runtimes import RUNTIMES, choose, keras_has_accelerator, openvino_installed

from conftest import TINY, TINY_ARGS, run_featcache, run_here

needs_openvino = pytest.mark.skipif(not openvino_installed() and not os.environ.get("CI"),
                                    reason="the openvino extra is not installed (make installs it)")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of 10 real JPEG photos: the two sample photos and four crops of each."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    for name, img in zip(("china", "flower"), load_sample_images().images):
        folder = root / name
        folder.mkdir()
        h, w = img.shape[:2]
        crops = [img, img[: h // 2, : w // 2], img[h // 2:, w // 2:], img[h // 4: 3 * h // 4, w // 4: 3 * w // 4],
                 img[:, w // 3:]]
        for i, crop in enumerate(crops):
            Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{i}.jpg", quality=92)
    return root


def _cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@needs_openvino
@pytest.mark.slow
@pytest.mark.parametrize("backbone,weights,size", [
    ("efficientnet_lite0", "imagenet", 224),
    ("mobilenet_v2_torchvision", "imagenet", 224),
    ("mobilenet_v2", "none", 96),  # a keras.applications graph, seeded random weights
])
def test_openvino_agrees_with_keras_on_real_photos(photos, tmp_path, monkeypatch, backbone, weights, size):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    caches = {}
    for runtime in ("keras", "openvino"):
        caches[runtime], summary = featcache.extract(
            photos, backbone, out=tmp_path / runtime, weights=weights, image_size=size, dtype="float32",
            batch_size=4, runtime=runtime, progress=False, return_summary=True)
        assert summary.notes == []  # the runtime asked for is the one that ran
        assert caches[runtime].timings["runtime"] == runtime  # recorded in the manifest
    keras_rows, ov_rows = caches["keras"].features(), caches["openvino"].features()
    assert keras_rows.shape == ov_rows.shape == (10, keras_rows.shape[1])
    cos = _cosines(keras_rows, ov_rows)
    assert cos.min() >= 0.9999, cos.round(6).tolist()
    assert caches["keras"].key == caches["openvino"].key  # the runtime is not part of the key
    assert caches["keras"].ids() == caches["openvino"].ids()
    # the IR is cached under $FEATCACHE_HOME, keyed by the graph
    irs = list((tmp_path / "home" / "openvino").glob(f"{backbone}-*/model.xml"))
    assert len(irs) == 1 and irs[0].with_suffix(".bin").is_file()


@needs_openvino
@pytest.mark.slow
def test_a_second_run_reuses_the_cached_ir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    x = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    featcache.extract(x, labels=np.arange(20) % 2, out=tmp_path / "a", runtime="openvino", progress=False, **TINY)
    (ir,) = (tmp_path / "home" / "openvino").glob("mobilenet_v2-*/model.xml")
    stamp = ir.stat().st_mtime_ns
    second = featcache.extract(x, labels=np.arange(20) % 2, out=tmp_path / "b", runtime="openvino",
                               progress=False, **TINY)
    assert ir.stat().st_mtime_ns == stamp  # read, not written again
    assert len(list((tmp_path / "home" / "openvino").glob("mobilenet_v2-*"))) == 1
    assert second.timings["runtime"] == "openvino"
    first = featcache.open_cache(tmp_path / "a")
    np.testing.assert_array_equal(first.features(), second.features())


@needs_openvino
@pytest.mark.slow
def test_a_resume_may_mix_runtimes(tmp_path, monkeypatch):
    """A cache half made by Keras is finished by OpenVINO: one key, one valid cache, rows that agree."""
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    x = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    common = dict(labels=y, shard_size=10, dtype="float32", progress=False, **TINY)
    reference = featcache.extract(x, out=tmp_path / "ref", runtime="keras", **common)
    mixed = featcache.extract(x, out=tmp_path / "mixed", runtime="keras", **common)
    shard = mixed.path / "shards" / "00002.h5"
    shard.write_bytes(b"damaged")  # featcache's own shard, damaged: --repair recomputes it
    repaired, summary = featcache.extract(x, out=tmp_path / "mixed", runtime="openvino", repair=True,
                                          return_summary=True, **common)
    assert summary.computed_shards == 1 and summary.reused_shards == 3
    assert repaired.key == reference.key and repaired.verify() == []
    assert repaired.timings["runtime"] == "openvino"
    assert _cosines(repaired.features(), reference.features()).min() >= 0.9999


@pytest.mark.slow
def test_a_missing_openvino_is_one_note_and_keras_runs(tmp_path):
    """``--runtime openvino`` without the package: the run finishes with Keras and says so in one line."""
    shadow = tmp_path / "shadow" / "openvino"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('openvino is shadowed by this test')\n")
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": os.pathsep.join([str(shadow.parent), str(repo)]), "FEATCACHE_HOME": str(tmp_path / "h")}
    rng = np.random.default_rng(2)
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    proc = run_featcache("extract", tmp_path / "images", *TINY_ARGS, "--runtime", "openvino", "--out", tmp_path / "c",
                         env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "runtime openvino is not installed" in line]
    assert len(notes) == 1 and "extracting with keras" in notes[0]
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["timings"]["runtime"] == "keras"


def test_auto_and_the_choices():
    assert RUNTIMES[0] == "auto"
    assert choose("keras") == "keras" and choose("openvino") == "openvino"
    assert choose("auto") == ("openvino" if openvino_installed() and not keras_has_accelerator() else "keras")


def test_a_bad_runtime_is_refused_in_one_line(tmp_path):
    proc = run_here("extract", tmp_path, "--runtime", "tensorrt", "--out", tmp_path / "c", check=False)
    assert proc.returncode == 2
    assert "tensorrt" in proc.stderr and "keras" in proc.stderr


@needs_openvino
@pytest.mark.slow
def test_export_format_openvino_writes_an_ir_that_gives_the_keras_probabilities(tmp_path):
    import keras
    import openvino as ov

    x = np.random.default_rng(3).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    cache = featcache.extract(x, labels=np.arange(24) % 2, out=tmp_path / "c", progress=False, **TINY)
    featcache.train(cache, "keras_linear", out=tmp_path / "m")
    (tmp_path / "foreign.xml").write_text("<net name='someone else'/>")
    refused = run_here("export", tmp_path / "m", tmp_path / "foreign.keras", "--format", "openvino", check=False)
    assert refused.returncode == 2 and "foreign.xml exists and is not an IR featcache exported" in refused.stderr
    assert (tmp_path / "foreign.xml").read_text() == "<net name='someone else'/>"  # left alone
    run_here("export", tmp_path / "m", tmp_path / "model.keras", "--format", "openvino")
    assert (tmp_path / "model.xml").is_file() and (tmp_path / "model.bin").is_file()
    expected = keras.models.load_model(tmp_path / "model.keras").predict(x, verbose=0)
    # float32, as the docs say to: on a CPU with AMX or AVX512-BF16, OpenVINO's default is bfloat16
    compiled = ov.Core().compile_model(str(tmp_path / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(x)[compiled.output(0)]
    # the graph rounds features to float16 as the cache stored them, which amplifies last-bit differences
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert (got.argmax(1) == expected.argmax(1)).all()
    run_here("export", tmp_path / "m", tmp_path / "model.keras", "--format", "openvino")  # its own IR: replaced
