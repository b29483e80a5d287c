"""Metrics per target kind (featcache/bench/metrics.py): tiny cases by hand, and scikit-learn's and SciPy's numbers."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import (average_precision_score, f1_score, mean_absolute_error, mean_squared_error, r2_score)

from featcache.bench import metrics as M


def test_regression_metrics_by_hand():
    m = M.regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0])
    # errors 0, 0, 0, 1: MAE 1/4, MSE 1/4, RMSE 1/2; variance of the truth 5/4: R² = 1 - (1/4)/(5/4)
    assert m["mae"] == pytest.approx(0.25) and m["rmse"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(0.8) and m["spearman"] == pytest.approx(1.0)
    assert set(m) == {*M.REGRESSION_METRICS, *(f"{k}_ci" for k in M.REGRESSION_METRICS)}


def test_regression_metrics_equal_scikit_learn_and_scipy_with_ties_and_several_outputs():
    rng = np.random.default_rng(0)
    t = np.round(rng.normal(size=(120, 2)) + 1000, 1)  # ties, and a large offset
    p = t + rng.normal(size=t.shape) * 0.7
    p[:10] = p[0]
    m = M.regression_metrics(t, p, n_boot=50)
    assert m["r2"] == pytest.approx(r2_score(t, p))
    assert m["mae"] == pytest.approx(mean_absolute_error(t, p))
    assert m["rmse"] == pytest.approx(np.mean([np.sqrt(mean_squared_error(t[:, j], p[:, j])) for j in range(2)]))
    assert m["spearman"] == pytest.approx(np.mean([spearmanr(t[:, j], p[:, j]).statistic for j in range(2)]))


def test_a_resample_is_the_rows_drawn_again_so_weighted_metrics_equal_the_duplicated_rows():
    rng = np.random.default_rng(1)
    t, p = rng.normal(size=40), rng.normal(size=40)
    w = next(M.bootstrap_weights(40, n_boot=1, seed=5))
    rows = np.repeat(np.arange(40), w[0].astype(int))
    got = M._weighted_regression(t[:, None], p[:, None], w)
    assert got["r2"][0] == pytest.approx(r2_score(t[rows], p[rows]))
    assert got["spearman"][0] == pytest.approx(spearmanr(t[rows], p[rows]).statistic)


def test_intervals_are_seeded_and_hold_the_estimate():
    rng = np.random.default_rng(2)
    t = rng.normal(size=200)
    p = t + rng.normal(size=200) * 0.5
    a, b = M.regression_metrics(t, p, seed=3), M.regression_metrics(t, p, seed=3)
    assert a == b and a != M.regression_metrics(t, p, seed=4)
    for k in M.REGRESSION_METRICS:
        low, high = a[f"{k}_ci"]
        assert low <= a[k] <= high and low < high
    perfect = M.regression_metrics(t, t, n_boot=100)
    assert perfect["r2_ci"] == [1.0, 1.0] and perfect["mae_ci"] == [0.0, 0.0]


def test_the_mean_baseline_predicts_the_train_mean_and_scores_r2_zero_on_its_own_rows():
    y = np.array([[1.0, 10.0], [3.0, 30.0]])
    np.testing.assert_array_equal(M.mean_baseline(y, 3), [[2.0, 20.0]] * 3)
    assert M.regression_metrics(y, M.mean_baseline(y, 2), n_boot=10)["r2"] == pytest.approx(0.0)


Y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
S = np.array([[0.9, 0.2, 0.1], [0.4, 0.8, 0.3], [0.7, 0.3, 0.2], [0.6, 0.1, 0.9]])


def test_multilabel_metrics_by_hand():
    m = M.multilabel_metrics(Y, S, 0.5, n_boot=50)
    # predicted at 0.5: [1,0,0] [0,1,0] [1,0,0] [1,0,1]; TP 3 (label 0: 2, label 1: 1), FP 2, FN 1
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    f1 = [2 * 2 / (4 + 1 + 0), 2 * 1 / (2 + 0 + 1), 0.0]  # label 2: one false positive, present in predictions
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["subset_accuracy"] == pytest.approx(2 / 4)
    # AP: label 0 ranks 0.9 (+), 0.7 (+): 1.0; label 1 ranks 0.8 (+), 0.3 (+), 0.2, 0.1 -> 1.0; label 2 has no positive
    assert m["map"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx(f1_score(Y, (S >= 0.5).astype(int), average="macro", labels=[0, 1, 2],
                                                   zero_division=0))


def test_weighted_average_precision_equals_scikit_learns_with_sample_weights_and_ties():
    rng = np.random.default_rng(4)
    y = (rng.random(300) < 0.3).astype(int)
    s = np.round(y * 0.3 + rng.random(300), 1)
    w = rng.integers(0, 3, 300).astype(float)
    assert M._weighted_ap(y, s, w[None])[0] == pytest.approx(average_precision_score(y, s, sample_weight=w))
    ys = (rng.random((200, 4)) < 0.4).astype(int)
    ss = rng.random((200, 4))
    m = M.multilabel_metrics(ys, ss, n_boot=20)
    assert m["map"] == pytest.approx(np.mean([average_precision_score(ys[:, j], ss[:, j]) for j in range(4)]))
    assert m["micro_f1"] == pytest.approx(f1_score(ys, (ss >= 0.5).astype(int), average="micro"))
    low, high = m["map_ci"]
    assert low <= m["map"] <= high


def test_thresholds_maximise_each_labels_f1_on_validation():
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    s = np.array([[0.9, 0.5], [0.8, 0.4], [0.3, 0.3], [0.1, 0.2]])
    th = M.choose_thresholds(y, s, default=0.5)
    assert th[0] == pytest.approx(0.55)  # between 0.8 (the last positive) and 0.3
    assert th[1] == 0.5  # no positive: the default
    rng = np.random.default_rng(5)
    yv = (rng.random((80, 3)) < 0.3).astype(int)
    sv = yv * 0.4 + rng.random((80, 3))
    th = M.choose_thresholds(yv, sv)
    for j in range(3):
        best = max(f1_score(yv[:, j], sv[:, j] >= c) for c in np.unique(sv[:, j]))
        assert f1_score(yv[:, j], sv[:, j] >= th[j]) == pytest.approx(best)


def test_the_frequency_baseline_scores_each_label_by_its_train_frequency():
    scores = M.frequency_baseline(Y, 2)
    np.testing.assert_allclose(scores, [[0.5, 0.5, 0.0]] * 2)
    m = M.multilabel_metrics(Y, M.frequency_baseline(Y, 4), n_boot=10)
    assert m["map"] == pytest.approx(0.5)  # a constant score ranks nothing: AP is each label's prevalence
