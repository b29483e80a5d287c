"""--precision f32|bf16|int8 (featcache/precision.py): each its own cache key, never mixed, int8 calibrated
deterministically, and a one-line refusal where the CPU or the install cannot run it.

Real OpenVINO and NNCF on TINY's MobileNetV2 (random weights, 32 px) over real PNG files; the capability check
is made to say no by replacing the function that asks OpenVINO, as on a CPU without AVX512-BF16.
"""

import hashlib
import os
import re

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache import precision
from featcache.errors import FeatcacheError, FeatcacheWarning, KeyMismatchError
from featcache.files import sha256_path
from featcache.runtimes import openvino_installed
from featcache.sources import open_source

from conftest import TINY, TINY_ARGS, run_here

needs_openvino = pytest.mark.skipif(not openvino_installed() and not os.environ.get("CI"),
                                    reason="the openvino extra is not installed (make installs it)")
needs_bf16 = pytest.mark.skipif(precision.unsupported("bf16") is not None,
                                reason=f"this CPU does not run bf16: {precision.unsupported('bf16')}")
needs_int8 = pytest.mark.skipif(precision.unsupported("int8") is not None and not os.environ.get("CI"),
                                reason=f"int8 cannot run here: {precision.unsupported('int8')}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """48 PNG images of smooth seeded blobs in two classes: real files, pixels with structure to quantize."""
    root = tmp_path_factory.mktemp("prec") / "images"
    rng = np.random.default_rng(33)
    yy, xx = np.mgrid[:40, :40] / 40.0
    for c, label in enumerate(("a", "b")):
        (root / label).mkdir(parents=True)
        for i in range(24):
            f = rng.uniform(1, 4, 3)
            img = 127 + 120 * np.sin(f[None, None, :] * (xx[..., None] * (c + 1) + yy[..., None]) * 3 + rng.uniform(0, 6))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("prec_home")


def _extract(folder, out, home, **kw):
    from unittest import mock

    with mock.patch.dict(os.environ, {"FEATCACHE_HOME": str(home)}):
        return featcache.extract(folder, out=out, shard_size=16, dtype="float32", progress=False, **TINY, **kw)


def _cosines(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def f32(folder, tmp_path_factory, home):
    return _extract(folder, tmp_path_factory.mktemp("f32") / "c", home, runtime="openvino")


@needs_openvino
@needs_bf16
def test_bf16_makes_a_complete_cache_of_its_own_key_close_to_f32(folder, f32, tmp_path, home):
    bf16 = _extract(folder, tmp_path / "bf16", home, precision="bf16")
    assert bf16.complete and len(bf16) == len(f32) == 48 and bf16.verify() == []
    assert bf16.key != f32.key and bf16.params["precision"] == "bf16" and "precision" not in f32.params
    assert bf16.timings["runtime"] == "openvino"
    cos = _cosines(bf16.features(), f32.features())
    assert cos.min() >= 0.99 and not np.array_equal(bf16.features(), f32.features()), cos.min()


@needs_openvino
@needs_int8
@pytest.mark.slow
def test_int8_makes_a_complete_cache_whose_key_records_its_calibration(folder, f32, tmp_path, home):
    int8 = _extract(folder, tmp_path / "int8", home, precision="int8")
    assert int8.complete and len(int8) == 48 and int8.verify() == []
    cal = int8.params["calibration"]
    assert int8.params["precision"] == "int8" and cal["images"] == 48 and cal["seed"] == precision.CALIBRATION_SEED
    assert int8.key != f32.key
    cos = _cosines(int8.features(), f32.features())
    # 0.9 held on the AVX512-VNNI EPYC; 0.87 measured on an AVX2-only one, whose int8 kernels lack VNNI
    assert cos.min() >= 0.8 and not np.array_equal(int8.features(), f32.features()), cos.min()
    (ir,) = [p for p in (home / "openvino").iterdir() if "int8" in (p / "identity.json").read_text()]
    assert (ir / "record.json").is_file()  # a derived cache entry, sealed like the f32 IR
    model = featcache.train(int8, "logreg", out=tmp_path / "m").model_dir
    with pytest.warns(FeatcacheWarning, match="learnt on int8 features and predict computes f32 ones"):
        featcache.predict(model, folder / "a" / "0.png", cache_dir=tmp_path / "p")
    import warnings

    with warnings.catch_warnings():  # the head's own features: no drift to tell
        warnings.simplefilter("error", FeatcacheWarning)
        assert len(featcache.predict(model, int8.path)) == 48


@needs_openvino
@needs_int8
@pytest.mark.slow
def test_int8_calibration_is_deterministic_same_sample_same_graph(folder, tmp_path, capsys):
    digests = []
    for run in ("a", "b"):
        cache = _extract(folder, tmp_path / run, tmp_path / f"home_{run}", precision="int8")
        (ir,) = (tmp_path / f"home_{run}" / "openvino").glob("mobilenet_v2-*")
        # OpenVINO numbers the nodes it makes with a per-process counter: the names differ, not the graph
        topology = re.sub(r'_[0-9]+(["/])', r"\1", (ir / "model.xml").read_text())
        digests.append((cache.key, sha256_path(ir / "model.bin"), hashlib.sha256(topology.encode()).hexdigest()))
    assert digests[0] == digests[1]
    assert "Statistics collection" not in capsys.readouterr().out  # NNCF's progress bars stay off our stdout
    items = open_source(folder).items
    assert precision.calibration_record(items, size=10) == precision.calibration_record(items, size=10)
    assert precision.calibration_record(items, size=10, seed=1) != precision.calibration_record(items, size=10)


@needs_openvino
@needs_bf16
def test_precisions_never_mix_in_one_directory(folder, f32, tmp_path, home):
    out = tmp_path / "c"
    _extract(folder, out, home, runtime="openvino")
    with pytest.raises(KeyMismatchError, match="precision"):
        _extract(folder, out, home, precision="bf16")
    proc = run_here("extract", folder, *TINY_ARGS, "--shard-size", "16", "--dtype", "float32", "--quiet",
                    "--precision", "bf16", "--out", out, check=False, env={"FEATCACHE_HOME": str(home)})
    assert proc.returncode == 2 and "precision: cache has the default, this run asks for 'bf16'" in proc.stderr
    assert featcache.open_cache(out).verify() == [] and "precision" not in featcache.open_cache(out).params


def test_a_cpu_without_bf16_or_int8_gets_one_line_before_any_work(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: frozenset({"FP32", "WINOGRAD"}))
    for p, needs in (("bf16", "AVX512-BF16 or AMX"), ("int8", "int8 support")):
        proc = run_here("extract", folder, *TINY_ARGS, "--precision", p, "--out", tmp_path / p, check=False)
        assert proc.returncode == 2 and needs in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / p).exists()
    shown = run_here("backbones").stdout
    assert "--precision on this CPU: f32\n" in shown and "AVX512-BF16" in shown


def test_no_openvino_no_nncf_and_keras_runtime_are_refused_in_one_line(folder, tmp_path, monkeypatch):
    with pytest.raises(FeatcacheError, match="--runtime keras computes in f32"):
        featcache.extract(folder, out=tmp_path / "k", precision="bf16", runtime="keras", **TINY)
    with pytest.raises(FeatcacheError, match="two reduced precisions"):
        featcache.extract(folder, out=tmp_path / "k", precision="bf16", compute_dtype="bfloat16", **TINY)
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    monkeypatch.setattr(precision, "nncf_installed", lambda: False)
    with pytest.raises(FeatcacheError, match=r"featcache\[int8\]"):
        featcache.extract(folder, out=tmp_path / "n", precision="int8", **TINY)
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: frozenset())
    with pytest.raises(FeatcacheError, match=r"featcache\[openvino\]"):
        featcache.extract(folder, out=tmp_path / "o", precision="bf16", **TINY)
    assert not any((tmp_path / d).exists() for d in ("k", "n", "o"))


@needs_openvino
def test_info_and_extract_say_the_precision_and_runtime(folder, f32, tmp_path, home):
    info = run_here("info", f32.path).stdout
    assert "precision" in info and "f32" in info
    proc = run_here("extract", folder, *TINY_ARGS, "--shard-size", "16", "--dtype", "float32", "--runtime", "openvino",
                    "--out", tmp_path / "c", env={"FEATCACHE_HOME": str(home)})
    assert "precision f32" in proc.stdout + proc.stderr and "openvino · precision f32" in proc.stdout


@needs_openvino
@needs_int8
@pytest.mark.slow
def test_a_grown_int8_cache_keeps_the_graph_it_was_calibrated_on(folder, tmp_path):
    import shutil

    src = tmp_path / "images"
    shutil.copytree(folder, src)
    first = {h: _extract(src, tmp_path / h / "c", tmp_path / h, precision="int8") for h in ("kept", "lost")}
    assert len(first["kept"].calibration_ids) == 48 and first["kept"].key == first["lost"].key
    before = dict(zip(first["kept"].ids(), first["kept"].features()))  # the grow replaces these shards
    for i in range(6):  # new images: a fresh sample of all 54 would be another graph, and another key
        Image.open(folder / "a" / f"{i}.png").transpose(Image.Transpose.ROTATE_90).save(src / "a" / f"new{i}.png")
    shutil.rmtree(tmp_path / "lost" / "openvino")  # this one's graph is rebuilt from its calibration images, by id
    grown = {h: _extract(src, tmp_path / h / "c", tmp_path / h, precision="int8") for h in ("kept", "lost")}
    for cache in grown.values():
        assert len(cache) == 54 and cache.verify() == [] and cache.generation == 1
        assert cache.params["calibration"] == first["kept"].params["calibration"]
        assert cache.calibration_ids == first["kept"].calibration_ids
        rows = dict(zip(cache.ids(), cache.features()))
        assert all(np.array_equal(rows[i], f) for i, f in before.items())  # reused, bit for bit
    assert grown["kept"].key == grown["lost"].key
    assert np.array_equal(grown["kept"].features(), grown["lost"].features())  # the same graph both ways
    again = run_here("extract", src, *TINY_ARGS, "--shard-size", "16", "--dtype", "float32", "--precision", "int8",
                     "--out", tmp_path / "kept" / "c", env={"FEATCACHE_HOME": str(tmp_path / "kept")})
    assert "nothing to do" in again.stdout  # a rerun, where a fresh sample of 54 images would be another key
    (src / first["kept"].calibration_ids[3]).unlink()
    proc = run_here("extract", src, *TINY_ARGS, "--shard-size", "16", "--dtype", "float32", "--quiet",
                    "--precision", "int8", "--out", tmp_path / "kept" / "c", check=False,
                    env={"FEATCACHE_HOME": str(tmp_path / "kept")})
    error = proc.stderr.strip().splitlines()[-1]  # after the run's header
    assert proc.returncode == 2 and error.startswith("error: ") and "calibrated on 48 images, 1 of which" in error
    after = featcache.open_cache(tmp_path / "kept" / "c")
    assert after.verify() == [] and len(after) == 54 and after.key == grown["kept"].key
