"""Every linear scikit-learn head exports as Dense layers: against predict_proba on features, and end to end."""

import os
import subprocess
import sys

import numpy as np
import pytest

import featcache
from featcache.errors import FeatcacheError
from featcache.heads import make_head
from featcache.linear_export import EXPORTABLE, probabilities, refusal

from conftest import class_sorted_images

LINEAR = ["logreg", "ridge", "lda", "linear_svm", "sgd", "knn_cosine"]


def _features(n_classes, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(150) % n_classes
    X = np.abs(rng.normal(size=(150, 12))).astype(np.float32) * rng.uniform(0.5, 3, 12).astype(np.float32)  # ReLU-like
    X[:, :n_classes] += 3.0 * np.eye(n_classes, dtype=np.float32)[y]  # learnable, not separable
    return X, y


def _as_keras(pipe, width):
    import keras

    x = keras.Input((width,), dtype="float32")
    return keras.Model(x, probabilities(pipe, x))


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("head", LINEAR)
@pytest.mark.parametrize("preprocess", [None, "standard+pca:6"])
def test_each_linear_head_as_layers_gives_scikit_learns_probabilities(head, n_classes, preprocess):
    X, y = _features(n_classes)
    pipe = make_head(head, preprocess).fit(X[:100], y[:100])
    got = _as_keras(pipe, X.shape[1]).predict(X[100:], verbose=0)
    np.testing.assert_allclose(got, pipe.predict_proba(X[100:]), atol=1e-5)


def test_a_head_that_is_no_matrix_product_is_refused_naming_the_nearest_that_exports(tmp_path, sorted_cache):
    assert refusal("random_forest").startswith("the random_forest head cannot become Keras layers")
    assert "nearest head that exports is knn_cosine" in refusal("knn")
    assert all(refusal(h) is None for h in EXPORTABLE)
    featcache.train(sorted_cache, "hist_gb", out=tmp_path / "gb")
    with pytest.raises(FeatcacheError, match="hist_gb head cannot become Keras layers.*is logreg") as exc:
        featcache.export(tmp_path / "gb", tmp_path / "gb.keras")
    assert "\n" not in str(exc.value)


_PLAIN = """
import sys, numpy as np, keras
images = np.load(sys.argv[1])
for path in sys.argv[2:]:
    np.save(path + ".npy", keras.models.load_model(path).predict(images, verbose=0))
assert "featcache" not in sys.modules
"""


@pytest.mark.slow
def test_every_linear_head_exports_end_to_end_and_matches_the_cached_route(sorted_cache, tmp_path):
    images, _labels = class_sorted_images(n_per_class=6, seed=1)  # new images of the same three classes
    np.save(tmp_path / "x.npy", images)
    expected, paths = {}, []
    for head in LINEAR:
        featcache.train(sorted_cache, head, out=tmp_path / head)
        paths.append(featcache.export(tmp_path / head, tmp_path / f"{head}.keras"))
        expected[head] = featcache.predict(tmp_path / head, images, cache_dir=tmp_path / "pc", return_as="proba")
    proc = subprocess.run([sys.executable, "-c", _PLAIN, tmp_path / "x.npy", *paths], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    for head, path in zip(LINEAR, paths):
        # 1e-4, not 1e-5: the graph's backbone and the cached route differ by float32 rounding before the head
        np.testing.assert_allclose(np.load(f"{path}.npy"), expected[head], atol=1e-4, err_msg=head)
        assert (np.load(f"{path}.npy").argmax(1) == expected[head].argmax(1)).all(), head
        assert featcache.export_info(path)["head"] == head


@pytest.mark.slow
def test_the_refusal_gives_the_nearest_heads_score_from_the_same_bench(sorted_cache, tmp_path):
    rows = featcache.bench(sorted_cache, ["random_forest", "logreg"], out=tmp_path / "report", baseline_heads=(),
                           save_best=False)
    logreg = next(r for r in rows if r["head"] == "logreg")
    featcache.train(sorted_cache, "random_forest", out=tmp_path / "report" / "best_model")
    with pytest.raises(FeatcacheError, match="nearest head that exports is logreg") as exc:
        featcache.export(tmp_path / "report" / "best_model", tmp_path / "rf.keras")
    assert f"test accuracy {logreg['accuracy']:.1%}, validation {logreg['val_accuracy']:.1%}" in str(exc.value)
