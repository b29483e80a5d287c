"""Stage two end to end: train on real caches, persist, predict on raw images, export."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import featcache
import featcache.heads
from featcache.sources import load_dataset
from featcache.errors import CacheError, FeatcacheError
from featcache.model_dir import load_model_dir
from featcache.train import split_masks, train

from conftest import TINY, run_here


@pytest.fixture(scope="module")
def photo_cache(tmp_path_factory, photo_folder):
    return featcache.extract(photo_folder, out=tmp_path_factory.mktemp("pc") / "cache")


def _pixel_baseline(cache, head):
    """The same head, same split, on the raw 28x28 pixels of the same images."""
    src = load_dataset("fashion_mnist:test")
    index = {it.id: it.index for it in src.items}
    rows = np.array([index[i] for i in cache.ids()])
    X = src.images[rows].reshape(len(rows), -1).astype(np.float32)
    y = cache.labels()
    masks = split_masks(cache)
    est = featcache.heads.make_head(head)
    est.fit(X[masks["train"]], y[masks["train"]])
    return est.score(X[masks["test"]], y[masks["test"]])


@pytest.mark.slow
@pytest.mark.parametrize("head", ["logreg", "keras_mlp"])
def test_cli_train_beats_raw_pixels(fm_lite, tmp_path, head):
    proc = run_here("train", fm_lite.path, "--head", head, "--out", tmp_path / "m")
    assert "test" in proc.stdout and "macro-F1" in proc.stdout
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    test_acc = card["metrics"]["test"]["accuracy"]
    assert card["fit_seconds"] < 60  # seconds, not hours (generous for a loaded 2-core CI box)
    baseline = _pixel_baseline(fm_lite, head)
    assert test_acc > baseline + 0.02, (test_acc, baseline)
    assert card["features"]["cache_key"] == fm_lite.key
    assert card["class_names"][9] == "Ankle boot"


def test_streaming_from_a_cache_too_big_to_load_matches_in_memory(fm_lite):
    small = featcache.open_cache(fm_lite.path, max_load_bytes=100_000)
    with pytest.raises(CacheError, match="over this cache's limit"):
        small.features()
    params = {"epochs": 8, "hidden": (64,)}
    streamed = train(small, "keras_mlp", params=params, stream=True)
    in_memory = train(fm_lite, "keras_mlp", params=params)
    assert streamed.card["streamed"] and not in_memory.card["streamed"]
    for split in ("train", "val", "test"):
        assert streamed.metrics[split]["accuracy"] == pytest.approx(in_memory.metrics[split]["accuracy"], abs=0.003)
    w_stream = streamed.estimator.steps[-1][1].model_.get_weights()
    w_mem = in_memory.estimator.steps[-1][1].model_.get_weights()
    for a, b in zip(w_stream, w_mem):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)  # float32 vs float64 statistics
    # a partial_fit head streams too
    assert train(small, "sgd", stream=True).metrics["test"]["accuracy"] > 0.6
    with pytest.raises(FeatcacheError, match="cannot stream"):
        train(small, "random_forest", stream=True)


def test_model_dir_roundtrip_and_tamper_refusal(photo_cache, tmp_path):
    res = train(photo_cache, "logreg", out=tmp_path / "m")
    pipe, card = load_model_dir(tmp_path / "m")
    X = photo_cache.features().astype(np.float32)
    np.testing.assert_array_equal(pipe.predict_proba(X), res.estimator.predict_proba(X))
    assert card["features"]["params"]["backbone"] == "efficientnet_lite0"
    assert card["metrics"]["test"]["n"] == 8  # the folder's own test/ split
    # swap the head file for a pickle that runs code: refused before unpickling
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "m" / "head.joblib").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(FeatcacheError, match="does not match its card"):
        load_model_dir(tmp_path / "m")
    assert not marker.exists()


def test_predict_on_raw_images_matches_the_cached_features(photo_cache, photo_folder, tmp_path):
    res = train(photo_cache, "keras_mlp", out=tmp_path / "m")
    files = sorted((photo_folder / "test").rglob("*.*"))
    out_csv = tmp_path / "preds.csv"
    proc = run_here("predict", tmp_path / "m", *files, "--out", out_csv, "--cache-dir", tmp_path / "pc", "--quiet")
    assert f"{len(files)} predictions" in proc.stdout
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("id,predicted_label,predicted_class,probability,error,true_label,true_class,p_china,")
    got = {row.split(",")[0]: row.split(",")[2] for row in lines[1:]}
    ids = photo_cache.ids()
    feats = photo_cache.features().astype(np.float32)
    for f in files:
        rel = f.relative_to(photo_folder).as_posix()
        expected = res.estimator.predict(feats[[ids.index(rel)]])[0]
        assert got[str(f)] == photo_cache.class_names[expected]
    # predicting the same images again reuses their feature cache
    caches = list((tmp_path / "pc").iterdir())
    rows = featcache.predict(tmp_path / "m", files, cache_dir=tmp_path / "pc")
    assert list((tmp_path / "pc").iterdir()) == caches and len(rows) == len(files)
    # JSON output, and a cache with other features is refused
    featcache.predict(tmp_path / "m", files[:2], cache_dir=tmp_path / "pc", out=tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())[0]["class"] in ("china", "flower")
    other = featcache.extract(photo_folder, out=tmp_path / "other", backbone="mobilenet_v2", weights="none",
                              image_size=32)
    with pytest.raises(FeatcacheError, match="backbone: head expects 'efficientnet_lite0', got 'mobilenet_v2'"):
        featcache.predict(tmp_path / "m", other.path)


_LOAD_PLAIN = """
import sys, numpy as np, keras
model = keras.models.load_model(sys.argv[1])
assert "featcache" not in sys.modules
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
"""


@pytest.mark.slow
def test_export_gives_the_same_probabilities_in_a_fresh_process(photo_cache, photo_folder, tmp_path):
    from featcache.decode import decode_image

    train(photo_cache, "keras_mlp", out=tmp_path / "m")
    run_here("export", tmp_path / "m", tmp_path / "model.keras")
    files = sorted((photo_folder / "test").rglob("*.*"))
    images = np.stack([decode_image(f, (224, 224)) for f in files])
    np.save(tmp_path / "x.npy", images)
    proc = subprocess.run([sys.executable, "-c", _LOAD_PLAIN, tmp_path / "model.keras", tmp_path / "x.npy",
                           tmp_path / "p.npy"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    exported = np.load(tmp_path / "p.npy")
    rows = featcache.predict(tmp_path / "m", files, cache_dir=tmp_path / "pc")
    expected = np.array([[r["probabilities"][n] for n in ("china", "flower")] for r in rows])
    np.testing.assert_allclose(exported, expected, atol=1e-5)
    with pytest.raises(FeatcacheError, match="cannot become Keras layers.*nearest head that exports is logreg"):
        train(photo_cache, "random_forest", out=tmp_path / "sk")
        featcache.export(tmp_path / "sk", tmp_path / "sk.keras")


def test_a_one_class_cache_is_refused_by_train_and_bench_before_any_work(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    cache = featcache.extract(images, labels=np.zeros(12, int), out=tmp_path / "c", **TINY)
    for call in (lambda: train(cache, "logreg", out=tmp_path / "m"),
                 lambda: featcache.bench(cache.path, ["logreg"], out=tmp_path / "r")):
        with pytest.raises(FeatcacheError, match="the train split holds one class .* needs at least two"):
            call()
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()  # nothing half-written
