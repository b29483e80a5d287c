"""Bootstrap intervals of a row's test accuracy and macro-F1."""

from __future__ import annotations

import numpy as np

#: resampled rows drawn at a time by bootstrap_intervals: bounds its memory on any test split
_BOOTSTRAP_CELLS = 8 * 1024 * 1024


def bootstrap_intervals(y_true, y_pred, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap intervals of test accuracy and macro-F1, resampling the test rows.

    Args:
        y_true: the test labels.
        y_pred: the head's predictions for them, in the same order.
        n_boot: bootstrap resamples.
        level: the interval's coverage (0.95: the 2.5th to the 97.5th percentile).
        seed: the resampling seed, so a row's interval is reproducible.

    Returns:
        ``{"accuracy_ci": [low, high], "macro_f1_ci": [low, high]}`` (fractions, like the metrics);
        macro-F1 is scikit-learn's (``average="macro"``, ``zero_division=0``) over the
        classes that occur in each resample's labels or predictions.

    Examples:
        >>> ci = bootstrap_intervals([0, 1, 1, 0], [0, 1, 0, 0])
        >>> 0 <= ci["accuracy_ci"][0] <= 0.75 <= ci["accuracy_ci"][1] <= 1
        True
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    n = len(t)
    if n == 0:
        return {"accuracy_ci": None, "macro_f1_ci": None}
    classes, codes = np.unique(np.concatenate([t, p]), return_inverse=True)
    k = len(classes)
    tc, pc = codes[:n], codes[n:]
    rng = np.random.default_rng(seed)
    acc, macro = np.empty(n_boot), np.empty(n_boot)
    step = max(1, _BOOTSTRAP_CELLS // n)  # resamples at a time: memory bounded on any test split
    for a in range(0, n_boot, step):
        b = min(n_boot, a + step)
        idx = rng.integers(0, n, (b - a, n))  # the same stream as one (n_boot, n) draw
        tt, pp = tc[idx], pc[idx]
        hit = tt == pp
        acc[a:b] = hit.mean(1)
        rows = np.arange(b - a)[:, None] * k
        size = (b - a) * k
        tp = np.bincount((rows + tt)[hit], minlength=size).reshape(b - a, k)
        n_true = np.bincount((rows + tt).ravel(), minlength=size).reshape(b - a, k)
        n_pred = np.bincount((rows + pp).ravel(), minlength=size).reshape(b - a, k)
        denom = n_true + n_pred
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        present = denom > 0
        macro[a:b] = (f1 * present).sum(1) / present.sum(1)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {"accuracy_ci": [float(v) for v in np.percentile(acc, q)],
            "macro_f1_ci": [float(v) for v in np.percentile(macro, q)]}


def corrected_ttest(a, b, test_train_ratio: float) -> float:
    """Two-sided p-value of Nadeau and Bengio's corrected resampled t-test between paired draw scores.

    ``a[j]`` and ``b[j]`` are two heads' validation scores on the same draw j.
    The draws share most of their training rows, so the plain paired t-test's
    variance ``s^2 / J`` is far too small; Nadeau and Bengio (2003) widen it
    to ``(1/J + n_val/n_train) s^2`` (for J = R x K folds: ``n_val/n_train =
    1/(K-1)``), with J - 1 degrees of freedom.

    Args:
        a, b: paired scores, one per draw (two or more).
        test_train_ratio: held-out rows over training rows of one draw.

    Returns:
        The p-value (1.0 when every difference is zero, 0.0 when they are equal and not zero).

    Examples:
        >>> round(corrected_ttest([.80, .82, .84], [.78, .81, .80], 0.25), 4)  # t = 2.0 on 2 degrees of freedom
        0.1835
    """
    from scipy import stats  # scipy is slow to import: only when a tie is tested

    d = np.asarray(a, float) - np.asarray(b, float)
    m, s2 = float(d.mean()), float(d.var(ddof=1))
    if s2 <= 1e-24:  # constant differences: no spread to test against
        return 1.0 if abs(m) <= 1e-12 else 0.0
    t = m / np.sqrt((1 / len(d) + test_train_ratio) * s2)
    return float(2 * stats.t.sf(abs(t), len(d) - 1))
