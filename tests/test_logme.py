"""LogME (featcache/logme.py): it ranks a labelling the features carry above one they do not, and its evidence is
the Bayesian linear model's log marginal likelihood, computed directly."""

import numpy as np
import pytest

from featcache.logme import class_evidence, logme


def test_separable_labels_score_above_shuffled_ones_and_a_cleaner_feature_above_a_noisier():
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    centres = rng.normal(size=(3, 16))
    clean = centres[y] + 0.3 * rng.normal(size=(300, 16))
    noisy = centres[y] + 1.5 * rng.normal(size=(300, 16))
    shuffled = rng.permutation(y)
    assert logme(clean, y) > logme(noisy, y) > logme(clean, shuffled)
    assert logme(noisy, y) > logme(noisy, shuffled)


@pytest.mark.parametrize("n, d", [(12, 5), (6, 9)])  # more rows than features, and fewer
def test_the_evidence_is_the_direct_log_marginal_likelihood(n, d):
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(1)
    F = rng.normal(size=(n, d))
    y = (rng.random(n) < 0.5).astype(float)
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    evidence, alpha, beta = class_evidence(U.T @ y, s * s, float(y @ y), n, d)
    # y ~ N(0, I / beta + F F^T / alpha): w ~ N(0, I / alpha) integrated out
    direct = multivariate_normal(np.zeros(n), np.eye(n) / beta + F @ F.T / alpha).logpdf(y)
    assert evidence == pytest.approx(direct, rel=1e-9, abs=1e-9)
    assert alpha > 0 and beta > 0


def test_the_fixed_point_maximises_the_evidence_over_alpha_and_beta():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(2)
    F = rng.normal(size=(40, 6))
    y = (F[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(float)
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    evidence, alpha, beta = class_evidence(U.T @ y, s * s, float(y @ y), 40, 6, steps=200)

    def direct(a, b):
        return multivariate_normal(np.zeros(40), np.eye(40) / b + F @ F.T / a).logpdf(y)

    for fa, fb in [(2, 1), (0.5, 1), (1, 2), (1, 0.5)]:  # any nearby (alpha, beta) has less evidence
        assert direct(alpha * fa, beta * fb) < evidence


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="two or more classes"):
        logme(np.zeros((4, 2)), [1, 1, 1, 1])
