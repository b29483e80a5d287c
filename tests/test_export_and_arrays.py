"""A scikit-learn user's hands: predict on arrays, any estimator as a head, and a complete exported model.

Each test uses featcache as a notebook would: arrays in, arrays out, a
plain ``keras.models.load_model`` in a process that never imports featcache.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.decode import decode_image
from featcache.errors import FeatcacheError

from conftest import TINY, run_here


def _array_cache(tmp_path, n=60):
    """Three classes a linear head separates: brightness bands of seeded noise."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    imgs = rng.integers(0, 80, (n, 16, 16, 3)).astype(np.uint8) + (labels * 80)[:, None, None, None].astype(np.uint8)
    return featcache.extract(imgs, labels=labels, out=tmp_path / "cache", **TINY), imgs, labels


def test_any_scikit_learn_classifier_trains_saves_and_predicts(tmp_path):
    from sklearn.neighbors import NearestCentroid
    from sklearn.svm import SVC

    cache, imgs, labels = _array_cache(tmp_path)
    user = SVC(C=2.0)
    result = featcache.train(cache, head=user, out=tmp_path / "svc")
    assert not hasattr(user, "support_"), "the user's own object must not be fitted in place"
    card = json.loads((tmp_path / "svc" / "card.json").read_text())
    assert card["head"] == "custom:SVC" and card["estimator"] == "SVC(C=2.0)"
    assert card["probabilities"].startswith("one-hot")  # SVC has no predict_proba by default
    assert "log_loss" not in result.metrics["test"]
    assert result.metrics["test"]["accuracy"] > 0.8
    # the saved directory is an ordinary model directory: predict reads it, on arrays too
    pred = featcache.predict(tmp_path / "svc", imgs[:9], cache_dir=tmp_path / "pc", return_as="labels")
    assert pred.tolist() == [str(v) for v in labels[:9]]
    # parameters are checked before any work, with the estimator's own constraints
    with pytest.raises(FeatcacheError, match="invalid parameter for head custom:NearestCentroid"):
        featcache.train(cache, head=NearestCentroid(), params={"metric": "nope"})
    with pytest.raises(FeatcacheError, match="not the class SVC; write SVC()"):
        featcache.train(cache, head=SVC)
    with pytest.raises(FeatcacheError, match="is a regressor, but target .label. is classification"):
        from sklearn.linear_model import LinearRegression
        featcache.train(cache, head=LinearRegression())


def test_predict_on_arrays_returns_rows_labels_or_probabilities_in_input_order(tmp_path):
    cache, imgs, labels = _array_cache(tmp_path)
    featcache.train(cache, head="logreg", out=tmp_path / "m")
    order = np.array([5, 0, 7, 1, 2])  # not sorted: the output must follow the input
    proba = featcache.predict(tmp_path / "m", imgs[order], cache_dir=tmp_path / "pc", return_as="proba")
    assert proba.shape == (5, 3) and np.allclose(proba.sum(1), 1)
    rows = featcache.predict(tmp_path / "m", imgs[order], cache_dir=tmp_path / "pc")
    assert [r["class"] for r in rows] == featcache.predict(tmp_path / "m", imgs[order], cache_dir=tmp_path / "pc",
                                                           return_as="labels").tolist()
    np.testing.assert_allclose(proba, [[r["probabilities"][n] for n in ("0", "1", "2")] for r in rows])
    # grey arrays work like their RGB copies; the feature cache of the same images is reused
    grey = imgs[order, :, :, :1]
    g = featcache.predict(tmp_path / "m", grey, cache_dir=tmp_path / "pc2", return_as="proba")
    np.testing.assert_allclose(g, featcache.predict(tmp_path / "m", np.repeat(grey, 3, -1), cache_dir=tmp_path / "pc2",
                                                    return_as="proba"), atol=1e-6)
    frame = featcache.predict(tmp_path / "m", imgs[order], cache_dir=tmp_path / "pc", return_as="frame")
    assert list(frame["class"]) == [r["class"] for r in rows]
    np.testing.assert_allclose(frame[["p_0", "p_1", "p_2"]].to_numpy(), proba)
    with pytest.raises(FeatcacheError, match="return_as must be one of rows, labels, proba, frame"):
        featcache.predict(tmp_path / "m", imgs[:2], return_as="df")


_PLAIN = """
import json, sys, numpy as np, keras
model = keras.models.load_model(sys.argv[1])
assert "featcache" not in sys.modules
out = {}
for name in sys.argv[3:]:
    out[name] = model.predict(np.load(sys.argv[2] + "/" + name + ".npy"), verbose=0).tolist()
print(json.dumps(out))
"""


def _plain_predict(model_path, arrays: dict, tmp_path):
    d = tmp_path / "arrays"
    d.mkdir(exist_ok=True)
    for k, v in arrays.items():
        np.save(d / f"{k}.npy", v)
    proc = subprocess.run([sys.executable, "-c", _PLAIN, model_path, d, *arrays], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    return {k: np.asarray(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.slow
def test_the_exported_model_takes_any_size_grey_and_float_images_and_names_its_classes(photos, tmp_path):
    """Trained at 96 px; the export predicts on 64, 96 and 224 px photos, grey and float, as the cached route."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    for cls, photo in zip(("china", "flower"), photos):
        (folder / cls).mkdir(parents=True)
        for i in range(10):
            y, x = rng.integers(0, photo.shape[0] - 200), rng.integers(0, photo.shape[1] - 200)
            Image.fromarray(photo[y:y + 200, x:x + 200]).save(folder / cls / f"{i}.png")
    cache = featcache.extract(folder, out=tmp_path / "cache", **{**TINY, "image_size": 96})
    featcache.train(cache, "keras_linear", out=tmp_path / "m")
    run_here("export", tmp_path / "m", tmp_path / "any.keras")
    info = featcache.export_info(tmp_path / "any.keras")
    assert info["class_names"] == ["china", "flower"] and info["input_size"] is None
    files = sorted(folder.rglob("*.png"))[::3]
    arrays, expected = {}, {}
    for side in (64, 96, 224):
        arrays[f"rgb{side}"] = np.stack([decode_image(f, (side, side)) for f in files])
        # the cached route on the same pixels: featcache.predict on these arrays
        expected[f"rgb{side}"] = featcache.predict(tmp_path / "m", arrays[f"rgb{side}"], cache_dir=tmp_path / "pc",
                                                   return_as="proba")
    grey = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in arrays["rgb96"]])[..., None]
    arrays["grey96"] = grey
    arrays["float96"] = (arrays["rgb96"] / 255.0).astype(np.float32)
    got = _plain_predict(tmp_path / "any.keras", arrays, tmp_path)
    # at the size the head was trained on, the cached route: its features come from OpenVINO, the export's from
    # TensorFlow, and their last-bit differences can round a stored float16 feature the other way (1.1e-5 seen)
    np.testing.assert_allclose(got["rgb96"], expected["rgb96"], atol=1e-4)
    # other sizes: the same resize, in the model rather than before it (bilinear, antialiased); 1.2e-4 seen
    for side in (64, 224):
        np.testing.assert_allclose(got[f"rgb{side}"], expected[f"rgb{side}"], atol=5e-4)
    # float 0-1 is read as such (not cast to 0 and 1), grey as its RGB copy
    np.testing.assert_allclose(got["float96"], got["rgb96"], atol=1e-5)
    grey_rgb = featcache.predict(tmp_path / "m", np.repeat(grey, 3, -1), cache_dir=tmp_path / "pc", return_as="proba")
    np.testing.assert_allclose(got["grey96"], grey_rgb, atol=1e-4)  # TensorFlow against OpenVINO, as above
    # a fixed input size on request
    featcache.export(tmp_path / "m", tmp_path / "fixed.keras", input_size=(96, 96))
    assert featcache.export_info(tmp_path / "fixed.keras")["input_size"] == [96, 96]
    with pytest.raises(FeatcacheError, match="input_size must be"):
        featcache.export(tmp_path / "m", tmp_path / "bad.keras", input_size=(0, 96))
    with pytest.raises(FeatcacheError, match="not a model featcache exported"):
        featcache.export_info(tmp_path / "cache" / "manifest.json")
