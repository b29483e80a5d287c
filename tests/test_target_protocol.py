"""Views, the learning curve and the leakage check for regression and multi-label targets: a view learns its
image's target values, the curve runs the best head on shares of the rows, the check finds copied images."""

import numpy as np
import pytest

import featcache
from featcache.bench.targets import bench_targets
from featcache.splits import TEST_FRACTION, VAL_FRACTION
from featcache.train_targets import target_masks, train_target

from conftest import TINY


@pytest.fixture(scope="module")
def viewed(tmp_path_factory):
    """60 images in 20 triples of the same picture (copies across splits), two augmented views per train image,
    with a brightness target (regression) and a two-label target; extracted once."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    images = np.concatenate([base, base, base])
    bright = images.mean(axis=(1, 2, 3)) / 255
    tags = [["dark"] if b < 0.5 else ["light", "odd"] if i % 2 else ["light"] for i, b in enumerate(bright)]
    return featcache.extract(images, labels=np.arange(60) % 2, out=tmp_path_factory.mktemp("viewed") / "c", views=2,
                             targets={"bright": bright, "tags": tags}, **TINY)


@pytest.mark.parametrize("target", ["bright", "tags"])
def test_views_join_the_train_rows_with_their_images_targets(viewed, target):
    t = viewed.target(target)
    res = train_target(viewed, "knn" if target == "tags" else "ridge", target, val_fraction=0.2, test_fraction=0.2,
                       views="rows")
    m = target_masks(viewed, t, 0.2, 0.2)
    train = np.flatnonzero(m["train"])
    assert res["views"] == (2, "rows") and res["n_train"] == 3 * len(train)
    # by hand: the plain train rows, then each view's, every one with its own image's values
    X = viewed.features().reshape(len(viewed), -1).astype(np.float32)
    V = viewed.views_of(train).reshape(2, len(train), -1).astype(np.float32)
    fit_x, fit_y = np.concatenate([X[train], *V]), np.concatenate([t.values[train]] * 3)
    by_hand = featcache.make_head("knn" if target == "tags" else "ridge", target_kind=t.kind).fit(fit_x, fit_y)
    test = np.flatnonzero(m["test"])
    ours = res["pipe"].predict_proba(X[test]) if target == "tags" else res["pipe"].predict(X[test])
    want = by_hand.predict_proba(X[test]) if target == "tags" else by_hand.predict(X[test])
    assert np.allclose(np.asarray(ours, float).reshape(len(test), -1), np.asarray(want, float).reshape(len(test), -1))
    plain = train_target(viewed, "ridge", "bright", val_fraction=0.2, test_fraction=0.2, views="none")
    assert plain["views"] == (0, "none") and plain["n_train"] == len(train)


def test_bench_best_head_has_a_learning_curve_and_the_leakage_check(viewed, tmp_path):
    rows = bench_targets(viewed, "bright", heads=["ridge", "knn"], baseline_heads=(), out=tmp_path,
                         options={"learning_curve": (0.25, 0.5), "views": "rows"})
    best = next(r for r in rows if r.get("best"))
    assert best["features"] == "cache + 2 views as rows"
    curve = best["curve"]
    assert [p["train_fraction"] for p in curve] == [0.25, 0.5, 1.0]
    assert curve[0]["n_train"] < curve[1]["n_train"] < curve[2]["n_train"]
    assert all(p["r2"] is not None for p in curve)
    # every picture is there three times: a test row whose copy is in train or val is found as a near-duplicate
    t = viewed.target("bright")
    m = target_masks(viewed, t, VAL_FRACTION, TEST_FRACTION)  # the bench's own fractions
    test, fit = np.flatnonzero(m["test"]), set(np.flatnonzero(m["train"] | m["val"]) % 20)
    leak = best["leakage"]
    assert leak["n_test"] == len(test) and leak["n_leaked"] == sum(int(i % 20 in fit) for i in test) > 0
    md = (tmp_path / "targets.md").read_text()
    assert "Learning curve of" in md and "Leakage check:" in md
    none = bench_targets(viewed, "bright", heads=["ridge"], baseline_heads=(), options={"learning_curve": None,
                                                                                         "leakage": False})
    assert not next(r for r in none if r.get("best"))["curve"] and "leakage" not in none[0]
