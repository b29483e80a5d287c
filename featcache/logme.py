"""LogME (You et al., ICML 2021): how well a backbone's features suit a labelling, from features and labels alone.

For each class, the one-vs-rest indicator ``y`` is modelled as Bayesian
linear regression on the features, ``y = F w + noise``, with a Gaussian
prior ``w ~ N(0, 1/alpha)`` and noise precision ``beta``; alpha and beta
are chosen by MacKay's fixed-point iteration to maximise the evidence
``log p(y | F, alpha, beta)``, and the score is that log evidence per row,
averaged over the classes. No head is fitted and nothing is tuned, so it
takes one SVD of the feature matrix: seconds, where a bench takes minutes.
Higher is better; the scale is comparable between backbones on the same rows.
Written here (about 60 lines of NumPy) because no maintained PyPI package
provides it (``logme`` on PyPI is a logging library).
"""

from __future__ import annotations

import numpy as np

#: MacKay's iteration stops when alpha/beta moves by less than this share (the paper's 1%)
_TOLERANCE = 0.01
#: at most this many fixed-point steps (the paper's 11; it converges in two or three)
_STEPS = 11


def _posterior(z, s2, alpha: float, beta: float):
    """q with the posterior mean ``m = V diag(s) q`` (so ``F m = U diag(s^2) q``), for ``F = U diag(s) V^T``."""
    return beta * z / (alpha + beta * s2)


def class_evidence(z, s2, yy: float, n: int, d: int, *, steps: int = _STEPS):
    """One class's ``(log evidence, alpha, beta)``, from its label vector's coordinates ``z = U^T y`` in the
    left singular basis of the features, their squared singular values ``s2``, ``yy = y.y``, the rows and width."""
    alpha, beta = 1.0, 1.0
    for _ in range(steps):
        q = _posterior(z, s2, alpha, beta)
        m2 = float(np.sum(s2 * q * q))  # |m|^2: m = V diag(s) q
        res = yy - float(z @ z) + float(np.sum((z - s2 * q) ** 2))  # |y - F m|^2
        gamma = float(np.sum(beta * s2 / (alpha + beta * s2)))
        new_alpha, new_beta = gamma / (m2 + 1e-12), (n - gamma) / (res + 1e-12)
        moved = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if moved < _TOLERANCE:
            break
    q = _posterior(z, s2, alpha, beta)  # the evidence at the final (alpha, beta), with its own posterior mean
    m2 = float(np.sum(s2 * q * q))
    res = yy - float(z @ z) + float(np.sum((z - s2 * q) ** 2))
    log_det = float(np.sum(np.log(alpha + beta * s2))) + (d - len(s2)) * np.log(alpha)
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2 - beta / 2 * res - alpha / 2 * m2
                - n / 2 * np.log(2 * np.pi))
    return float(evidence), alpha, beta


def logme(features, labels) -> float:
    """The LogME score of ``features`` (n x d) for class ``labels`` (n): the mean over classes of the log
    evidence per row. Higher means the features suit the labels better.

    Args:
        features: one row per image (any float dtype; computed in float64).
        labels: class labels, one per row (two or more classes).

    Returns:
        The score (a float, typically between about -1 and 3).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> y = np.arange(200) % 2
        >>> good = rng.normal(size=(200, 8)) + 3 * y[:, None]
        >>> bool(logme(good, y) > logme(good, rng.permutation(y)))
        True
    """
    F = np.asarray(features, np.float64).reshape(len(features), -1)
    y = np.asarray(labels)
    if len(F) != len(y):
        raise ValueError(f"{len(F)} feature rows for {len(y)} labels")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("LogME needs labels of two or more classes")
    n, d = F.shape
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    s2 = s * s
    scores = []
    for c in classes:
        t = (y == c).astype(np.float64)
        evidence, _a, _b = class_evidence(U.T @ t, s2, float(t @ t), n, d)
        scores.append(evidence / n)
    return float(np.mean(scores))
