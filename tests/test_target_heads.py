"""Heads for regression and multi-label targets, against a by-hand scikit-learn fit on a real cache."""

import shutil

import numpy as np
import pytest

import featcache
from featcache.errors import FeatcacheError
from featcache.heads import make_head
from featcache.heads.kinds import heads_for


@pytest.fixture(scope="module")
def own_cache(small_cache, tmp_path_factory):
    """A copy of the shared cache for the tests that attach targets: the shared one must stay as other files expect."""
    dst = tmp_path_factory.mktemp("target_heads") / "cache"
    shutil.copytree(small_cache.path, dst)
    return featcache.open_cache(dst)


def _xy(small_cache):
    cache = small_cache
    X = cache.features().astype(np.float64)
    labels = cache.labels()
    return X, labels


def test_ridge_regression_matches_ridgecv(small_cache):
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, labels = _xy(small_cache)
    y = np.stack([labels * 1.5 + 0.1, X[:, 0]], axis=1)  # multi-output regression
    ours = make_head("ridge", target_kind="regression").fit(X, y)
    hand = make_pipeline(StandardScaler(), RidgeCV(alphas=(1e-1, 1.0, 10.0, 100.0, 1000.0))).fit(X, y)
    np.testing.assert_allclose(ours.predict(X), hand.predict(X), rtol=1e-6, atol=1e-8)


def test_knn_regression_and_param(small_cache):
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, labels = _xy(small_cache)
    y = labels.astype(float)
    ours = make_head("knn", target_kind="regression", n_neighbors=3).fit(X, y)
    hand = make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=3, weights="distance")).fit(X, y)
    np.testing.assert_allclose(ours.predict(X), hand.predict(X))


def test_multilabel_logreg_is_one_vs_rest(small_cache):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, labels = _xy(small_cache)
    Y = np.stack([labels % 2, (labels >= 2)], axis=1).astype(np.uint8)
    ours = make_head("logreg", target_kind="multilabel", C=0.5).fit(X, Y)
    hand = make_pipeline(StandardScaler(), OneVsRestClassifier(
        LogisticRegression(C=0.5, max_iter=2000, tol=1e-3))).fit(X, Y)
    np.testing.assert_allclose(ours.predict_proba(X), hand.predict_proba(X), rtol=1e-6, atol=1e-8)


def test_linear_svm_regression_is_linear_svr_with_c_on_val_as_by_hand(own_cache):
    """linear_svm on a regression target: standard scaling, scikit-learn's LinearSVR, C the best val R²."""
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVR

    from featcache.heads.kinds import GRIDS
    from featcache.splits import TEST_FRACTION, VAL_FRACTION
    from featcache.train_targets import target_masks

    X = own_cache.features().astype(np.float32)
    featcache.attach_targets(own_cache, {"id": own_cache.ids(), "bright": [float(v) for v in X.mean(1)]})
    res = featcache.train(own_cache, head="linear_svm", target="bright")
    m = target_masks(own_cache, own_cache.target("bright"), VAL_FRACTION, TEST_FRACTION)
    y = own_cache.target("bright").values
    fits = {C: make_pipeline(StandardScaler(), LinearSVR(C=C, epsilon=0.0, loss="squared_epsilon_insensitive",
                                                         dual=False, max_iter=2000, tol=1e-4)).fit(
        X[m["train"]], y[m["train"]]) for C in GRIDS["linear_svm"]["regression"]["C"]}
    best = max(fits, key=lambda c: (r2_score(y[m["val"]], fits[c].predict(X[m["val"]])), -c))
    assert res.card["head_params"] == {"C": best} and isinstance(res.estimator.steps[-1][1], LinearSVR)
    np.testing.assert_allclose(res.estimator.predict(X), fits[best].predict(X), rtol=1e-5, atol=1e-6)


def test_wrong_kind_names_heads_that_fit():
    with pytest.raises(FeatcacheError) as err:
        make_head("lda", target_kind="regression")
    msg = str(err.value)
    assert "\n" not in msg and "does not serve regression" in msg
    assert "ridge" in msg and "knn" in msg
    assert "logreg" in heads_for("multilabel") and "lda" not in heads_for("multilabel")


def test_train_regression_target_skips_rows_without_value(own_cache):
    ids = own_cache.ids()
    labels = own_cache.labels()
    keep = np.arange(len(ids)) % 5 != 0  # a fifth of the rows have no value
    featcache.attach_targets(own_cache, {"id": [i for i, k in zip(ids, keep) if k],
                                           "bright": [float(v) for v, k in zip(labels, keep) if k]})
    res = featcache.train(own_cache, head="ridge", target="bright")
    assert res.card["target"]["kind"] == "regression" and res.card["target"]["name"] == "bright"
    assert sum(res.card["target"]["rows"].values()) == int(keep.sum())
    assert {"r2", "mae", "rmse", "spearman"} <= set(res.metrics["test"])
    with pytest.raises(FeatcacheError, match="heads that do: .*ridge"):
        featcache.train(own_cache, head="lda", target="bright")


def test_cli_train_target_writes_card_and_refuses_wrong_kind(own_cache, tmp_path):
    import json

    from conftest import run_here

    featcache.attach_targets(own_cache, {"id": own_cache.ids(), "shade": [float(v) for v in own_cache.labels()]})
    out = tmp_path / "model"
    run_here("train", str(own_cache.path), "--head", "ridge", "--target", "shade", "--out", str(out))
    card = json.loads((out / "card.json").read_text())
    assert card["target"]["name"] == "shade" and card["target"]["kind"] == "regression"
    assert set(card["metrics"]) == {"train", "val", "test"} and "r2" in card["metrics"]["test"]
    bad = run_here("train", str(own_cache.path), "--head", "lda", "--target", "shade", "--out",
                        str(tmp_path / "bad"), check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "ridge" in bad.stderr


@pytest.mark.parametrize("head", ["logreg", "knn"])
def test_train_multilabel_target_chooses_thresholds_on_val(own_cache, head):
    labels = own_cache.labels()
    tags = ["|".join(t for t, on in (("odd", v % 2), ("dark", v >= 1)) if on) or "|" for v in labels]
    featcache.attach_targets(own_cache, {"id": own_cache.ids(), "tags": tags})
    res = featcache.train(own_cache, head=head, target="tags")
    t = res.card["target"]
    assert t["kind"] == "multilabel" and t["names"] == ["dark", "odd"] and len(t["thresholds"]) == 2
    assert {"map", "micro_f1", "macro_f1", "subset_accuracy"} <= set(res.metrics["test"])
    assert res.metrics["train"]["map"] > 0.5


def test_multilabel_logreg_chooses_c_on_val_as_by_hand(own_cache):
    """logreg's C for a multi-label target is the grid point with the best val mAP, the rest as a plain fit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    from featcache.heads.kinds import GRIDS
    from featcache.splits import TEST_FRACTION, VAL_FRACTION
    from featcache.train_targets import target_masks

    labels = own_cache.labels()
    featcache.attach_targets(own_cache, {"id": own_cache.ids(), "two": [["a", "b"][v % 2] + ("|c" if v else "")
                                                                         for v in labels]})
    res = featcache.train(own_cache, head="logreg", target="two")
    m = target_masks(own_cache, own_cache.target("two"), VAL_FRACTION, TEST_FRACTION)
    X, y = own_cache.features().astype(np.float32), own_cache.target("two").values
    scores = {}
    for C in GRIDS["logreg"]["multilabel"]["C"]:
        scale = StandardScaler().fit(X[m["train"]])
        ovr = OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000, tol=1e-3)).fit(
            scale.transform(X[m["train"]]), y[m["train"]])
        s = ovr.predict_proba(scale.transform(X[m["val"]]))
        scores[C] = np.mean([average_precision_score(y[m["val"]][:, j], s[:, j]) for j in range(y.shape[1])
                             if y[m["val"]][:, j].any()])
    best = max(scores, key=lambda c: (scores[c], -c))
    assert res.card["head_params"] == {"C": best}
    fixed = featcache.train(own_cache, head="logreg", target="two", params={"C": 1.0})  # a fixed C: no grid
    assert fixed.card["head_params"] == {"C": 1.0}
