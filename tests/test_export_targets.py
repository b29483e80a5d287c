"""export of regression and multi-label heads: one end-to-end Keras model per head, and one model with several
named outputs from heads trained on one cache; loaded with Keras alone (no featcache) and checked against the
cached route (each head on the cache's own features)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.errors import FeatcacheError
from featcache.store import attach_targets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.target_tasks import mosaic_task, zoom_task  # noqa: E402
from tests.conftest import TINY  # noqa: E402

#: run in a fresh interpreter with featcache not importable: load every model, predict the images
LOAD = """
import json, sys, numpy as np, keras
images = np.load(sys.argv[1])
out = {}
for path in sys.argv[2:]:
    y = keras.models.load_model(path).predict(images, verbose=0)
    out[path] = {k: np.asarray(v).tolist() for k, v in y.items()} if isinstance(y, dict) else np.asarray(y).tolist()
assert "featcache" not in sys.modules  # Keras alone loaded and ran every model
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def heads(tmp_path_factory, fashion_mnist_available):
    from featcache.datasets import load_fashion_mnist

    images, labels, _ = load_fashion_mnist("test", fashion_mnist_available)
    canvases, zoom = zoom_task(images[:100], canvas=32)
    _, present = mosaic_task(images[:200], labels[:200], 100, tile=8)
    root = tmp_path_factory.mktemp("exp")
    cache = featcache.extract(canvases, labels=labels[:100], out=root / "cache", **TINY)
    attach_targets(cache, {"id": list(cache.ids()), "zoom": list(zoom)}, kind="regression")
    attach_targets(cache, {"id": list(cache.ids()), **{f"k{k}": list(present[:, k]) for k in range(4)}},
                   name="tags", kind="multilabel")
    res = {t: featcache.train(cache, head=h, target=t, out=root / f"m_{t}")
           for t, h in (("zoom", "ridge"), ("tags", "logreg"))}
    res["label"] = featcache.train(cache, head="logreg", out=root / "m_label")
    return root, cache, canvases, res


def _cached(res, cache):
    from featcache.train_targets import _scores

    X = cache.features().reshape(len(cache), -1).astype(np.float32)
    kind = (res.card.get("target") or {}).get("kind")
    return res.estimator.predict_proba(X) if kind is None else _scores(res.estimator, X, kind).reshape(len(X), -1)


def test_one_model_per_head_and_one_with_named_outputs_load_with_keras_alone(heads, tmp_path):
    root, cache, canvases, res = heads
    paths = {t: featcache.export(root / f"m_{t}", tmp_path / f"{t}.keras") for t in ("zoom", "tags")}
    multi = featcache.export([root / "m_zoom", root / "m_tags", root / "m_label"], tmp_path / "multi.keras")
    info = featcache.export_info(multi)
    assert [(o["name"], o["kind"]) for o in info["outputs"]] == [
        ("zoom", "regression"), ("tags", "multilabel"), ("label", "classification")]
    assert info["outputs"][1]["names"] == ["k0", "k1", "k2", "k3"] and len(info["outputs"][1]["thresholds"]) == 4
    assert featcache.export_info(paths["zoom"])["outputs"][0]["names"] == ["zoom"]
    np.save(tmp_path / "images.npy", canvases)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "images.npy"), str(paths["zoom"]),
                           str(paths["tags"]), str(multi)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = {t: _cached(res[t], cache) for t in ("zoom", "tags", "label")}
    np.testing.assert_allclose(np.reshape(got[str(paths["zoom"])], (-1, 1)), want["zoom"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got[str(paths["tags"])], want["tags"], atol=1e-3)  # float16 features: 1 ulp
    for t in ("zoom", "tags", "label"):
        np.testing.assert_allclose(np.reshape(got[str(multi)][t], want[t].shape), want[t], rtol=1e-3, atol=1e-3)


def test_export_refusals(heads, tmp_path):
    root, cache, _, _ = heads
    knn = featcache.train(cache, head="knn", target="zoom", out=tmp_path / "m_knn")
    assert knn.card["target"]["kind"] == "regression"
    with pytest.raises(FeatcacheError, match="knn head of a regression target cannot become Keras layers.*ridge"):
        featcache.export(tmp_path / "m_knn", tmp_path / "knn.keras")
    with pytest.raises(FeatcacheError, match="same head of the same target"):
        featcache.export([root / "m_zoom", root / "m_zoom"], tmp_path / "two.keras")
    other = featcache.extract(np.zeros((20, 32, 32, 3), np.uint8) + 9, labels=[0, 1] * 10, out=tmp_path / "c2",
                              **TINY)
    featcache.train(other, head="logreg", out=tmp_path / "m_other")
    with pytest.raises(FeatcacheError, match="trained on the same cache"):
        featcache.export([root / "m_zoom", tmp_path / "m_other"], tmp_path / "mixed.keras")
    assert not list(tmp_path.glob("*.keras"))
    from featcache.cli import main

    assert main(["export", f"{root / 'm_zoom'},{root / 'm_tags'}", str(tmp_path / "cli.keras")]) == 0
    assert [o["name"] for o in featcache.export_info(tmp_path / "cli.keras")["outputs"]] == ["zoom", "tags"]


def test_keras_target_heads_export_and_load_with_keras_alone(heads, tmp_path):
    """keras_linear for regression (its un-standardising inside) and multi-label, alone and as one model."""
    root, cache, canvases, _ = heads
    res = {t: featcache.train(cache, head="keras_linear", target=t, out=tmp_path / f"k_{t}") for t in ("zoom", "tags")}
    one = featcache.export(tmp_path / "k_zoom", tmp_path / "zoom.keras")
    multi = featcache.export([tmp_path / "k_zoom", tmp_path / "k_tags"], tmp_path / "multi.keras")
    info = featcache.export_info(multi)
    assert [(o["name"], o["kind"]) for o in info["outputs"]] == [("zoom", "regression"), ("tags", "multilabel")]
    np.save(tmp_path / "images.npy", canvases)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "images.npy"), str(one), str(multi)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = {t: _cached(res[t], cache) for t in ("zoom", "tags")}
    np.testing.assert_allclose(np.reshape(got[str(one)], (-1, 1)), want["zoom"], rtol=1e-3, atol=1e-3)
    for t in ("zoom", "tags"):
        np.testing.assert_allclose(np.reshape(got[str(multi)][t], want[t].shape), want[t], rtol=1e-3, atol=1e-3)
