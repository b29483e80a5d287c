"""The Keras and cosine k-NN heads for regression and multi-label targets, and your own scikit-learn regressor or
multi-label classifier as a head: each against a by-hand fit, trained, saved, predicted, refused for the wrong kind."""

import shutil

import numpy as np
import pytest

import featcache
from featcache.errors import FeatcacheError
from featcache.heads import make_head
from featcache.heads.kinds import heads_for


@pytest.fixture(scope="module")
def cache(small_cache, tmp_path_factory):
    """A copy of the shared cache with a regression target (brightness class plus noise) and a multi-label one."""
    dst = tmp_path_factory.mktemp("own_heads") / "cache"
    shutil.copytree(small_cache.path, dst)
    c = featcache.open_cache(dst)
    labels = c.labels()
    noise = np.random.default_rng(1).normal(0, 0.1, len(labels))
    featcache.attach_targets(c, {"id": c.ids(), "shade": [float(v) for v in labels * 10.0 + 3.0 + noise]})
    tags = ["|".join(t for t, on in (("odd", v % 2), ("dark", v >= 1)) if on) or "|" for v in labels]
    featcache.attach_targets(c, {"id": c.ids(), "tags": tags})
    return c


def test_new_heads_serve_their_kinds():
    for kind in ("regression", "multilabel"):
        assert {"knn_cosine", "keras_linear", "keras_mlp"} <= set(heads_for(kind))


def test_knn_cosine_regression_and_multilabel_match_by_hand(small_cache):
    X = small_cache.features().astype(np.float64)
    labels = small_cache.labels()
    y = labels * 2.0 + 1.0
    Y = np.stack([labels % 2, labels >= 1], axis=1).astype(np.uint8)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    sim = Xn[:7] @ Xn[20:].T
    top = np.argsort(-sim, axis=1)[:, :5]
    w = np.exp(np.take_along_axis(sim, top, 1) / 0.07)
    w /= w.sum(1, keepdims=True)
    reg = make_head("knn_cosine", target_kind="regression", n_neighbors=5).fit(X[20:], y[20:])
    np.testing.assert_allclose(reg.predict(X[:7]), (w * y[20:][top]).sum(1), rtol=1e-6)
    ml = make_head("knn_cosine", target_kind="multilabel", n_neighbors=5).fit(X[20:], Y[20:])
    np.testing.assert_allclose(ml.predict_proba(X[:7]), np.einsum("qk,qkj->qj", w, Y[20:][top]), rtol=1e-6)


def test_keras_regression_unstandardises_and_huber_is_a_param(small_cache):
    """Linear outputs learnt on standardised targets, predicted in the targets' units; loss='huber' checked."""
    X = small_cache.features().astype(np.float32)
    y = np.stack([1000.0 + 50.0 * small_cache.labels(), -2.0 * small_cache.labels()], axis=1)
    head = make_head("keras_linear", target_kind="regression", epochs=40).fit(X, y)
    clf = head.steps[-1][1]
    np.testing.assert_allclose(clf.y_mean_, y.mean(0))
    np.testing.assert_allclose(clf.y_scale_, y.std(0))
    pred = head.predict(X)
    assert clf.model_.layers[-1].name == "unstandardize" and pred.shape == y.shape
    import keras

    z = keras.Model(clf.model_.inputs, clf.model_.layers[-2].output).predict_on_batch(X)  # the standardised outputs
    np.testing.assert_allclose(pred, z * y.std(0) + y.mean(0), rtol=1e-4)
    assert make_head("keras_linear", target_kind="regression", loss="huber").steps[-1][1].loss == "huber"
    with pytest.raises(FeatcacheError, match="loss"):
        featcache.heads.validate_head("keras_linear", params={"loss": "hinge"}, target_kind="regression")


def test_keras_multilabel_is_sigmoid_bce_as_a_by_hand_keras_model(small_cache):
    """keras_linear on an indicator matrix: one sigmoid per label, its early-stopped val loss a plain BCE."""
    X = small_cache.features().astype(np.float32)
    labels = small_cache.labels()
    Y = np.stack([labels % 2, labels >= 1], axis=1).astype(np.uint8)
    head = make_head("keras_linear", target_kind="multilabel", epochs=30).fit(
        X[:100], Y[:100], clf__validation_data=(X[100:], Y[100:]))
    clf = head.steps[-1][1]
    p = head.predict_proba(X[100:])
    assert p.shape == (50, 2) and clf.model_.layers[-1].activation.__name__ == "sigmoid"
    bce = -(Y[100:] * np.log(np.clip(p, 1e-7, 1)) + (1 - Y[100:]) * np.log(np.clip(1 - p, 1e-7, 1))).mean()
    assert abs(min(clf.history_["val_loss"]) - bce) < 1e-4  # best weights restored: the lowest val loss's
    assert 1 <= clf.n_iter_ <= 30


@pytest.mark.parametrize("target", ["shade", "tags"])
def test_keras_head_trains_saves_and_predicts_a_target(cache, tmp_path, target):
    res = featcache.train(cache, head="keras_linear", target=target, out=tmp_path / "m")
    from featcache.model_dir import read_card

    assert read_card(tmp_path / "m")["kind"] == "keras" and res.card["target"]["name"] == target
    again = featcache.predict(tmp_path / "m", cache, return_as="frame")
    X = cache.features().astype(np.float32)
    if target == "shade":
        assert np.isfinite(res.metrics["test"]["r2"])  # 1,280 features on ~100 rows: no quality bar here
        np.testing.assert_allclose(again["predicted_shade"], res.estimator.predict(X), rtol=1e-5, atol=1e-4)
    else:
        assert len(res.card["target"]["thresholds"]) == 2 and res.metrics["test"]["map"] > 0.5


def test_your_own_regressor_trains_saves_and_predicts(cache, tmp_path):
    from sklearn.linear_model import RidgeCV

    res = featcache.train(cache, head=RidgeCV(), target="shade", out=tmp_path / "m")
    assert res.head == "custom:RidgeCV" and res.card["head"] == "custom:RidgeCV"
    assert res.card["preprocess"] == "none" and "RidgeCV" in res.card["estimator"]
    X = cache.features().astype(np.float32)
    hand = RidgeCV().fit(X[_train_rows(cache, "shade")], cache.target("shade").values[_train_rows(cache, "shade")])
    np.testing.assert_allclose(res.estimator.predict(X), hand.predict(X), rtol=1e-5, atol=1e-5)
    values = featcache.predict(tmp_path / "m", cache, return_as="labels")
    np.testing.assert_allclose(values, hand.predict(X), rtol=1e-5, atol=1e-5)


def _train_rows(cache, target):
    from featcache.splits import TEST_FRACTION, VAL_FRACTION
    from featcache.train_targets import target_masks

    return target_masks(cache, cache.target(target), VAL_FRACTION, TEST_FRACTION)["train"]


@pytest.mark.parametrize("make", ["ovr", "knn"])
def test_your_own_multilabel_classifier_gets_thresholds_on_val(cache, tmp_path, make):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neighbors import KNeighborsClassifier

    est = OneVsRestClassifier(LogisticRegression(max_iter=500)) if make == "ovr" else KNeighborsClassifier(5)
    res = featcache.train(cache, head=est, target="tags", out=tmp_path / "m")
    assert len(res.card["target"]["thresholds"]) == 2 and res.metrics["test"]["map"] > 0.5
    frame = featcache.predict(tmp_path / "m", cache, return_as="frame")
    assert len(frame) == len(cache)


def test_a_head_of_the_wrong_kind_is_one_line(cache):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.svm import SVC

    cases = [(Ridge(), None, "is a regressor, but target 'label' is classification: it needs a classifier"),
             (SVC(), "shade", "is a classifier, but target 'shade' is regression: it needs a regressor"),
             (Ridge(), "tags", "is a regressor, but target 'tags' is multilabel: it needs a classifier that fits")]
    for est, target, says in cases:
        with pytest.raises(FeatcacheError) as err:
            featcache.train(cache, head=est, target=target)
        assert says in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FeatcacheError, match="cannot be trained on this target: ") as err:  # no indicator matrix
        featcache.train(cache, head=LogisticRegression(), target="tags")
    assert "\n" not in str(err.value)


def test_bench_takes_your_own_regressor_and_multilabel_classifier(cache, tmp_path):
    """bench --target in Python runs your estimators on the targets they suit, as train fits them."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.multiclass import OneVsRestClassifier

    ovr = OneVsRestClassifier(LogisticRegression(max_iter=500))
    rows = featcache.bench(cache, ["ridge", RidgeCV(), RidgeCV(alphas=(1.0, 10.0)), ovr], target=["shade", "tags"],
                           baseline_heads=(), learning_curve=(0.5,), leakage=False, out=tmp_path / "r")
    heads = {t: [r["head"] for r in rows if r["target"] == t] for t in ("shade", "tags")}
    assert heads == {"shade": ["ridge", "custom:RidgeCV", "custom:RidgeCV#2", "train_mean"],
                     "tags": ["custom:OneVsRestClassifier", "label_frequency"]}
    own = next(r for r in rows if r["head"] == "custom:RidgeCV")
    assert own["status"] == "ok" and own["r2"] == pytest.approx(
        featcache.train(cache, head=RidgeCV(), target="shade").metrics["test"]["r2"])
    best = next(r for r in rows if r["target"] == "tags" and r.get("best"))
    assert best["head"] == "custom:OneVsRestClassifier" and len(best["curve"]) == 2  # refit at 50%, then 100%
    assert "custom:RidgeCV#2" in (tmp_path / "r" / "target_results.csv").read_text()


def test_bench_refuses_your_estimator_of_the_wrong_kind_naming_the_kind(cache, tmp_path):
    from sklearn.linear_model import Ridge
    from sklearn.svm import SVR

    cases = [([SVR()], ["tags"], "head SVR is a regressor, but target 'tags' is multilabel: it needs a classifier"),
             ([Ridge()], ["shade", "label"], "none of the heads ['Ridge'] serve classification target 'label'")]
    for heads, target, says in cases:
        with pytest.raises(FeatcacheError) as err:
            featcache.bench(cache, heads, target=target, baseline_heads=(), out=tmp_path / "r")
        assert says in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "r").exists()  # refused before any work
