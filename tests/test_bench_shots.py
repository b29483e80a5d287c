"""bench --shots: k train images a class drawn exactly, validation apart, the whole test split every draw."""

import json

import numpy as np
import pytest

import featcache
from featcache.bench.shots import VAL_SHOTS, draw_shots
from featcache.errors import FeatcacheError
from featcache.store import split_masks


def _splits(cache):
    masks, y = split_masks(cache), cache.labels()
    return y, *(np.flatnonzero(masks[s] & (y >= 0)) for s in ("train", "val", "test"))


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_k_per_class_exactly_and_val_apart(small_cache, k):
    y, tr, va, te = _splits(small_cache)
    for d in range(3):
        t, v = draw_shots(y, tr, va, k, seed=0, draw=d)
        assert np.bincount(y[t]).tolist() == [k, k, k]  # exactly k of every class
        assert np.bincount(y[v]).tolist() == [min(k, VAL_SHOTS, n) for n in np.bincount(y[va])]  # fewer: all val has
        assert set(t) <= set(tr) and set(v) <= set(va)  # validation from val only, never a train image
    assert not np.array_equal(draw_shots(y, tr, va, k, 0, 0)[0], draw_shots(y, tr, va, k, 0, 1)[0])
    assert np.array_equal(draw_shots(y, tr, va, k, 0, 1)[0], draw_shots(y, tr, va, k, 0, 1)[0])


def test_few_shot_rows_and_files(small_cache, tmp_path):
    y, tr, va, te = _splits(small_cache)
    rows = featcache.bench(small_cache, ["logreg", "knn_cosine"], shots=[1, 4], shot_draws=3, out=tmp_path / "r")
    assert [(r["head"], r["shots"]) for r in rows] == [("logreg", 1), ("logreg", 4), ("knn_cosine", 1),
                                                       ("knn_cosine", 4)]
    for r in rows:
        assert r["n_test"] == len(te) and r["n_train"] == 3 * r["shots"] and len(r["accuracies"]) == 3
        assert r["accuracy"] == pytest.approx(np.mean(r["accuracies"]))
        assert r["accuracy_sd"] == pytest.approx(np.std(r["accuracies"], ddof=1))
    again = featcache.bench(small_cache, ["logreg", "knn_cosine"], shots=[1, 4], shot_draws=3, out=tmp_path / "s")
    assert [r["accuracies"] for r in again] == [r["accuracies"] for r in rows]  # the same seed, the same rows
    assert json.loads((tmp_path / "r" / "shots.json").read_text())[0]["shots"] == 1
    assert "| logreg |" in (tmp_path / "r" / "shots.md").read_text()
    page = (tmp_path / "r" / "report.html").read_text()  # the plot embedded, the table beside it
    assert "data:image/png;base64," in page and "<td>knn_cosine</td>" in page and "<th>4-shot</th>" in page


def test_too_many_shots_and_keras_heads_are_refused(small_cache, tmp_path):
    with pytest.raises(FeatcacheError, match="--shots 500: class .* has only"):
        featcache.bench(small_cache, ["logreg"], shots=[1, 500], out=tmp_path / "a")
    with pytest.raises(FeatcacheError, match="keras_mlp is a Keras head"):
        featcache.bench(small_cache, ["keras_mlp"], shots=[1], out=tmp_path / "b")


def test_every_cache_is_a_backbone_with_its_line_in_the_plot(small_cache, tmp_path):
    rng = np.random.default_rng(0)  # small_cache's images, through another backbone
    images = rng.integers(0, 256, (150, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(150) % 3
    images[labels == 1] //= 2
    images[labels == 2] //= 4
    other = featcache.extract(images, labels=labels, out=tmp_path / "v3", backbone="mobilenet_v3_small",
                              weights="none", image_size=32, batch_size=32)
    rows = featcache.bench([small_cache, other], ["logreg"], shots=[1, 2], shot_draws=2, out=tmp_path / "r")
    assert [(r["backbone"], r["shots"]) for r in rows] == [("mobilenet_v2", 1), ("mobilenet_v2", 2),
                                                           ("mobilenet_v3_small", 1), ("mobilenet_v3_small", 2)]
    png = (tmp_path / "r" / "shots.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
    md = (tmp_path / "r" / "shots.md").read_text()
    assert "(shots.png)" in md and "| mobilenet_v3_small 32px" in md and "| mobilenet_v2 32px" in md
