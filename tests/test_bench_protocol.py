"""The benchmark's protocol per kind of head: labels from the head's own predict, the forest's out-of-bag
fit, the best model saved as its row fitted it, and a timed-out row saying how far it got."""

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression

import featcache
from featcache.bench import FITTED, Task, evaluate
from featcache.errors import FeatcacheWarning
from featcache.model_dir import load_model_dir
from featcache.store import split_masks


QUICK = dict(baseline_heads=(), learning_curve=(), leakage=False)


class TiedProba(ClassifierMixin, BaseEstimator):
    """Logistic regression whose probabilities all tie, as a one-vs-rest head's float32 sigmoids do when they
    saturate at 1.0 (the sgd head on 1,280 standardised features): only its predict knows the class."""

    def fit(self, X, y):
        self.lr_ = LogisticRegression(max_iter=500).fit(X, y)
        self.classes_ = self.lr_.classes_
        return self

    def predict(self, X):
        return self.lr_.predict(X)

    def predict_proba(self, X):
        return np.full((len(X), len(self.classes_)), 1.0 / len(self.classes_))


def test_labels_are_the_heads_predict_not_the_argmax_of_tied_probabilities(small_cache, tmp_path):
    expected = featcache.train(small_cache, LogisticRegression(max_iter=500)).metrics["test"]["accuracy"]
    assert expected > 0.6  # the argmax of tied probabilities is the first class: a third of the rows
    trained = featcache.train(small_cache, TiedProba(), out=tmp_path / "model")
    assert trained.metrics["test"]["accuracy"] == expected
    row = evaluate(Task(str(small_cache.path), small_cache.key, "custom:TiedProba", {}, None, False,
                        estimator=TiedProba()))  # what the head's process of bench runs
    assert row["accuracy"] == expected
    X = small_cache.features().reshape(len(small_cache), -1)
    by_hand = [small_cache.class_name(c) for c in trained.estimator.predict(X)]
    assert list(featcache.predict(tmp_path / "model", small_cache.path, return_as="labels")) == by_hand


def test_the_sgd_heads_saturated_sigmoids_tie_and_its_predict_decides():
    """The fault itself: one-vs-rest sigmoids of float32 features saturate at 1.0 for two close classes."""
    from featcache.heads import make_head, proba_and_labels

    rng = np.random.default_rng(0)
    y = np.arange(600) % 3
    means = rng.normal(size=(3, 1280))
    means[1] = means[0] + 0.3 * rng.normal(size=1280)  # two close classes, as shirts and T-shirts
    X = (rng.normal(size=(600, 1280)) + 0.5 * means[y]).astype(np.float32)
    sgd = make_head("sgd").fit(X[:300], y[:300])
    proba = sgd.predict_proba(X[300:])
    top = np.sort(proba, axis=1)[:, -2:]
    assert (top[:, 0] == top[:, 1]).sum() >= 5  # tied rows: their argmax is the lower class, right or not
    assert (sgd.classes_[proba.argmax(1)] != sgd.predict(X[300:])).any()
    _, labels = proba_and_labels(sgd, X[300:])
    assert labels.tolist() == sgd.predict(X[300:]).tolist()


def test_logreg_walks_clips_wide_c_grid_as_a_path_that_stops_past_its_peak():
    from featcache.bench import GRIDS, _path

    rng = np.random.default_rng(0)
    y = np.arange(400) % 4
    X = (rng.normal(size=(400, 32)) + 0.7 * np.eye(4)[y] @ rng.normal(size=(4, 32))).astype(np.float32)
    cands = [{"C": c} for c in GRIDS["logreg"]["C"]]
    assert cands[0]["C"] == 1e-6 and cands[-1]["C"] == 1e6
    tr, va = np.arange(300), np.arange(300, 400)
    best, score, state, fitted = _path("logreg", cands, X, y, tr, va)
    assert fitted < len(cands) + 2  # it stopped before the weakly regularised, slow end
    by_hand = {}  # every decade the path passed and the two half decades beside the best, fitted cold
    for c in [d["C"] for d in cands[:fitted - 2]] + [best["C"] / 10 ** 0.5, best["C"] * 10 ** 0.5]:
        m = LogisticRegression(C=c, max_iter=2000).fit((X[tr] - X[tr].mean(0)) / X[tr].std(0), y[tr])
        by_hand[c] = m.score((X[va] - X[tr].mean(0)) / X[tr].std(0), y[va])
    assert score >= max(by_hand.values()) - 0.02  # warm starts at tol 1e-3 land within a row or two
    assert state["coef_"].shape == (4, 32)


def test_random_forest_fits_once_on_train_and_val_and_reports_its_out_of_bag_accuracy(small_cache):
    row = evaluate(Task(str(small_cache.path), small_cache.key, "random_forest", {"n_estimators": 40}, None, False,
                        cores=1))
    masks = split_masks(small_cache)
    fit = np.concatenate([np.flatnonzero(masks["train"]), np.flatnonzero(masks["val"])])
    assert row["fit_splits"] == ["train", "val"] and row["n_train"] == len(fit) and row["select_seconds"] == 0
    assert "out-of-bag" in row["note"]
    X, y = small_cache.features().reshape(len(small_cache), -1).astype(np.float32), small_cache.labels()
    forest = RandomForestClassifier(n_estimators=40, random_state=0, oob_score=True, n_jobs=1).fit(X[fit], y[fit])
    assert row["val_accuracy"] == forest.oob_score_
    assert row["test_predictions"] == forest.predict(X[masks["test"]]).tolist()


def test_a_forest_without_bootstrap_has_no_out_of_bag_score_and_fits_on_train(small_cache):
    row = evaluate(Task(str(small_cache.path), small_cache.key, "random_forest",
                        {"n_estimators": 10, "bootstrap": False}, None, False, cores=1))
    assert row["fit_splits"] == ["train"] and "out-of-bag" not in row["note"]


def test_best_model_of_tied_rows_is_the_first_asked_and_still_its_own_fit(small_cache, tmp_path):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    same = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")  # the lda head itself: a tie on val
    rows = featcache.bench(small_cache, ["lda", same], out=tmp_path / "r", **QUICK)
    assert rows[0]["val_accuracy"] == rows[1]["val_accuracy"]
    _, card = load_model_dir(tmp_path / "r" / "best_model")
    # the first asked wins the tie; its file was kept though the other (started first) finished first
    assert card["head"] == "lda" and card["fit_seconds"] == round(rows[0]["fit_seconds"], 4)


def test_a_run_killed_before_its_first_row_leaves_a_folder_the_next_run_accepts(small_cache, tmp_path):
    out = tmp_path / "r"
    (out / FITTED).mkdir(parents=True)
    (out / FITTED / "0123456789abcdef.joblib.part").write_bytes(b"half a pickle")
    rows = featcache.bench(small_cache, ["gaussian_nb"], out=out, **QUICK)
    assert rows[0]["status"] == "ok" and not (out / FITTED).exists()


def test_best_model_is_the_rows_own_fit_and_each_heads_file_is_removed(small_cache, tmp_path):
    out = tmp_path / "report"
    row = featcache.bench(small_cache, ["ridge"], out=out, **QUICK)[0]
    pipe, card = load_model_dir(out / "best_model")
    calibrated = pipe.steps[-1][1]
    # calibrated on val as its row was, not refitted with 3-fold calibration
    assert isinstance(calibrated, CalibratedClassifierCV)
    assert isinstance(calibrated.calibrated_classifiers_[0].estimator, FrozenEstimator)
    X = small_cache.features().reshape(len(small_cache), -1).astype(np.float32)
    test = split_masks(small_cache)["test"]
    assert pipe.predict(X[test]).tolist() == row["test_predictions"]
    assert card["metrics"]["test"]["accuracy"] == row["accuracy"] and card["fit_splits"] == ["train"]
    assert not (out / FITTED).exists()


def test_a_foreign_file_where_the_fits_go_is_left_alone(small_cache, tmp_path):
    out = tmp_path / "report"
    featcache.bench(small_cache, ["gaussian_nb"], out=out, **QUICK)
    (out / FITTED).mkdir()
    (out / FITTED / "notes.txt").write_text("mine")
    (out / FITTED / "0123456789abcdef.joblib.old").write_text("mine too")
    featcache.bench(small_cache, ["gaussian_nb", "lda"], out=out, **QUICK)
    assert sorted(p.name for p in (out / FITTED).iterdir()) == ["0123456789abcdef.joblib.old", "notes.txt"]
    assert (out / FITTED / "notes.txt").read_text() == "mine"
    other = tmp_path / "report2"
    featcache.bench(small_cache, ["gaussian_nb"], out=other, **QUICK)
    (other / FITTED).write_text("a file, not our folder")
    rows = featcache.bench(small_cache, ["gaussian_nb", "lda"], out=other, **QUICK)
    assert (other / FITTED).read_text() == "a file, not our folder"
    assert all(r["status"] == "ok" for r in rows) and (other / "best_model" / "card.json").is_file()


def test_a_cache_of_arrays_gets_no_pixel_baseline_and_is_told_why(small_cache, tmp_path):
    with pytest.warns(FeatcacheWarning, match="no raw-pixel baseline: .* in-memory arrays"):
        rows = featcache.bench(small_cache, ["gaussian_nb"], out=tmp_path / "r", learning_curve=(), leakage=False)
    assert [(r["head"], r["baseline"], r["status"]) for r in rows] == [("gaussian_nb", False, "ok")]


def test_a_timed_out_row_says_how_far_it_got(small_cache, tmp_path):
    endless = {"hidden_layer_sizes": (512, 512), "max_iter": 10 ** 6, "early_stopping": False, "tol": 0.0,
               "n_iter_no_change": 10 ** 6}
    row = featcache.bench(small_cache, ["mlp"], params={"mlp": endless}, timeout=20, out=tmp_path / "r",
                          save_best=False, **QUICK)[0]
    assert row["status"] == "timed out"
    assert row["progress"].startswith("features loaded (")
    assert "20 s budget; it had got as far as: features loaded" in row["error"]


@pytest.mark.slow
def test_a_timed_out_keras_head_counts_its_epochs(small_cache, tmp_path):
    endless = {"epochs": 10 ** 6, "patience": 10 ** 6, "batch_size": 8}
    row = featcache.bench(small_cache, ["keras_linear"], params={"keras_linear": endless}, timeout=20,
                          out=tmp_path / "r", save_best=False, **QUICK)[0]
    assert row["status"] == "timed out"
    assert "epochs done" in row["progress"] and "train rows" in row["progress"], row["progress"]


def test_the_command_line_takes_your_own_classifier_as_module_and_class(small_cache, tmp_path):
    import json

    from conftest import run_here

    run_here("bench", small_cache.path, "--heads", "gaussian_nb,sklearn.svm:SVC", "--param",
                  "sklearn.svm:SVC:C=2", "--out", tmp_path / "r", "--quiet")
    rows = {r["head"]: r for r in json.loads((tmp_path / "r" / "results.json").read_text())}
    assert rows["custom:SVC"]["status"] == "ok" and "C=2" in rows["custom:SVC"]["estimator"]
    run_here("train", small_cache.path, "--head", "sklearn.svm:SVC", "--param", "C=3", "--out",
                  tmp_path / "m", "--quiet")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["head"] == "custom:SVC" and "C=3" in card["estimator"]
    bad = run_here("bench", small_cache.path, "--heads", "sklearn.nowhere:SVC", "--out", tmp_path / "r2",
                        check=False)
    assert bad.returncode == 2 and "cannot import the head 'sklearn.nowhere:SVC'" in bad.stderr
    assert not (tmp_path / "r2").exists()
