"""predict with regression and multi-label heads: from raw images, against the cached route (the head on the
cache's own features), as rows, a frame with a column per output, arrays, and a CSV with named columns."""

import csv
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_mnist_available):
    """120 zoomed garments as PNGs, a cache of them with zoom (regression) and tags (multi-label) targets, and a
    ridge head for zoom and a logreg head for tags, saved as model directories."""
    from PIL import Image

    from featcache.datasets import load_fashion_mnist

    images, labels, _ = load_fashion_mnist("test", fashion_mnist_available)
    canvases, zoom = zoom_task(images[:120], canvas=32)
    _, present = mosaic_task(images[:240], labels[:240], 120, tile=8)  # the first four classes: four labels
    root = tmp_path_factory.mktemp("pred")
    (root / "png").mkdir()
    for i, img in enumerate(canvases):
        Image.fromarray(img).save(root / "png" / f"{i:04d}.png")
    cache = featcache.extract(str(root / "png"), out=root / "cache", **TINY)
    row = [int(Path(i).stem) for i in cache.ids()]
    attach_targets(cache, {"id": list(cache.ids()), "zoom": list(zoom[row])}, kind="regression")
    attach_targets(cache, {"id": list(cache.ids()), **{f"k{k}": list(present[row, k]) for k in range(4)}},
                   name="tags", kind="multilabel")
    reg = featcache.train(cache, head="ridge", target="zoom", out=root / "m_zoom")
    ml = featcache.train(cache, head="logreg", target="tags", out=root / "m_tags")
    return root, cache, reg, ml


def _cached(res, cache):
    from featcache.train_targets import _scores

    X = cache.features().reshape(len(cache), -1).astype(np.float32)
    return _scores(res.estimator, X, res.card["target"]["kind"])


def test_regression_predicts_values_as_the_cached_route(trained, tmp_path):
    root, cache, reg, _ = trained
    rows = featcache.predict(root / "m_zoom", root / "png", cache_dir=tmp_path / "pc")
    by = {r["id"]: r for r in rows}
    want = dict(zip(cache.ids(), _cached(reg, cache)))
    assert set(by) == set(want)
    for i, v in want.items():
        assert by[i]["value"] == pytest.approx(float(v), rel=1e-5, abs=1e-6)
        assert by[i]["values"] == {"zoom": by[i]["value"]}
    frame = featcache.predict(root / "m_zoom", root / "png", cache_dir=tmp_path / "pc", return_as="frame")
    assert list(frame.columns) == ["id", "predicted_zoom", "error"]
    values = featcache.predict(root / "m_zoom", root / "png", cache_dir=tmp_path / "pc", return_as="labels")
    assert values.shape == (len(cache),) and values.dtype == np.float64
    with pytest.raises(FeatcacheError, match="predicts values, not probabilities"):
        featcache.predict(root / "m_zoom", root / "png", cache_dir=tmp_path / "pc", return_as="proba")


def test_multilabel_predicts_label_sets_with_probabilities(trained, tmp_path):
    root, cache, _, ml = trained
    rows = featcache.predict(root / "m_tags", cache.path)
    th = ml.card["target"]["thresholds"]
    proba = np.asarray(_cached(ml, cache))
    for r, p in zip(rows, proba):
        assert [r["probabilities"][f"k{k}"] for k in range(4)] == pytest.approx(list(p), abs=1e-6)
        assert r["labels"] == [f"k{k}" for k in range(4) if p[k] >= th[k]] and r["class"] == "|".join(r["labels"])
    frame = featcache.predict(root / "m_tags", cache.path, return_as="frame")
    assert list(frame.columns) == ["id", "predicted_labels", "p_k0", "p_k1", "p_k2", "p_k3", "error"]
    assert featcache.predict(root / "m_tags", cache.path, return_as="proba").shape == (len(cache), 4)
    labels = featcache.predict(root / "m_tags", cache.path, return_as="labels")
    assert list(labels[0]) == rows[0]["labels"]


def test_cli_writes_named_columns(trained, tmp_path):
    from featcache.cli import main

    root, cache, _, _ = trained
    for model, header in (("m_zoom", ["id", "predicted_zoom", "error"]),
                          ("m_tags", ["id", "predicted_labels", "p_k0", "p_k1", "p_k2", "p_k3", "error"])):
        out = tmp_path / f"{model}.csv"
        assert main(["predict", str(root / model), str(cache.path), "--out", str(out)]) == 0
        with open(out) as f:
            table = list(csv.reader(f))
        assert table[0] == header and len(table) == len(cache) + 1
        assert main(["predict", str(root / model), str(cache.path), "--out", str(out)]) == 0  # ours: replaced
    assert main(["predict", str(root / "m_zoom"), str(cache.path)]) == 0  # the table on the terminal


def test_several_heads_predict_in_one_frame_with_a_column_per_output(trained, tmp_path):
    """A regression head and a multi-label head of one cache: one backbone run, one frame, the single-head
    predictions side by side (value; labels and each label's probability)."""
    root, cache, _, _ = trained
    both = featcache.predict([root / "m_zoom", root / "m_tags"], cache.path, return_as="frame")
    assert list(both.columns) == ["id", "zoom:predicted_zoom", "tags:predicted_labels",
                                  *[f"tags:p_k{k}" for k in range(4)], "error"]
    alone = {m: featcache.predict(root / m, cache.path, return_as="frame").set_index("id") for m in ("m_zoom", "m_tags")}
    b = both.set_index("id")
    assert np.allclose(b["zoom:predicted_zoom"], alone["m_zoom"].loc[b.index, "predicted_zoom"])
    assert list(b["tags:predicted_labels"]) == list(alone["m_tags"].loc[b.index, "predicted_labels"])
    assert np.allclose(b["tags:p_k2"], alone["m_tags"].loc[b.index, "p_k2"])
    rows = featcache.predict(f"{root / 'm_zoom'},{root / 'm_tags'}", cache.path, out=tmp_path / "p.csv")
    assert set(rows[0]) == {"id", "zoom", "tags"} and "value" in rows[0]["zoom"] and "labels" in rows[0]["tags"]
    with open(tmp_path / "p.csv") as f:
        assert next(csv.reader(f)) == list(both.columns)
    with pytest.raises(FeatcacheError, match="return_as='rows' or 'frame'"):
        featcache.predict([root / "m_zoom", root / "m_tags"], cache.path, return_as="labels")
