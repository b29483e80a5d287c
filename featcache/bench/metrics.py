"""Metrics per target kind, each with a seeded 95% bootstrap interval, and the trivial baselines.

Regression: ``r2``, ``mae``, ``rmse``, ``spearman`` (several outputs: the mean
over outputs). Multi-label: ``map`` (macro average precision over the labels
with positives, as scikit-learn computes it), ``micro_f1`` and ``macro_f1`` at
per-label thresholds chosen on validation, ``subset_accuracy``. The interval
resamples the test rows: a resample is the same rows with integer weights,
so every metric is computed from weighted sums in one vectorised pass, and
the point estimate is the same function with every weight 1.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

REGRESSION_METRICS = ("r2", "mae", "rmse", "spearman")
MULTILABEL_METRICS = ("map", "micro_f1", "macro_f1", "subset_accuracy")
#: resampled cells (resamples x rows) held at a time: bounds memory on any test split (as stats.py)
_CELLS = 2 * 1024 * 1024


def bootstrap_weights(n: int, n_boot: int = 1000, seed: int = 0):
    """Resample weights in chunks of ``(b, n)``: how often each row is drawn, for ``n_boot`` resamples.

    The draws are those of :func:`featcache.bench.stats.bootstrap_intervals`
    (``rng.integers(0, n, (b, n))``), so the same seed resamples the same rows.
    """
    rng = np.random.default_rng(seed)
    step = max(1, _CELLS // max(n, 1))
    for a in range(0, n_boot, step):
        b = min(n_boot, a + step)
        idx = rng.integers(0, n, (b - a, n))
        flat = (np.arange(b - a)[:, None] * n + idx).ravel()
        yield np.bincount(flat, minlength=(b - a) * n).reshape(b - a, n).astype(np.float64)


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return [float(v) for v in np.percentile(values, q)]


def _with_intervals(metric, n: int, names, n_boot: int, level: float, seed: int) -> dict:
    """``{name: value, name_ci: [low, high]}`` of ``metric(weights) -> {name: (b,) array}``."""
    point = metric(np.ones((1, n)))
    out = {k: float(v[0]) for k, v in point.items()}
    if n == 0:
        return {**{k: None for k in names}, **{f"{k}_ci": None for k in names}}
    parts = [metric(w) for w in bootstrap_weights(n, n_boot, seed)]
    for k in names:
        out[f"{k}_ci"] = _interval(np.concatenate([p[k] for p in parts]), level)
    return out


# --------------------------------------------------------------------------- regression

def _as_2d(y) -> np.ndarray:
    y = np.asarray(y, np.float64)
    return y.reshape(len(y), -1)


def _weighted_regression(t: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict:
    """R², MAE, RMSE and Spearman ρ per weighted resample (rows ``w``), averaged over outputs."""
    total = w.sum(1, keepdims=True)
    err = p - t  # (n, k)
    mae = (w @ np.abs(err)) / total
    mse = (w @ err ** 2) / total
    mean = (w @ t) / total
    var = (w @ t ** 2) / total - mean ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(var > 1e-300, 1 - mse / var, np.nan)
    rho = np.empty((len(w), t.shape[1]))
    for j in range(t.shape[1]):
        rho[:, j] = _weighted_spearman(t[:, j], p[:, j], w)
    return {"r2": r2.mean(1), "mae": mae.mean(1), "rmse": np.sqrt(mse).mean(1), "spearman": rho.mean(1)}


def _weighted_spearman(t: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spearman ρ of each resample: Pearson's r of the average ranks each resample gives (ties shared)."""
    rho = np.empty(len(w))
    for name, x in (("t", t), ("p", p)):
        order = np.argsort(x, kind="stable")
        xs = x[order]
        ws = w[:, order]
        starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # groups of equal values
        group_w = np.add.reduceat(ws, starts, axis=1)
        below = np.cumsum(group_w, axis=1) - group_w
        rank = below + (group_w + 1) / 2  # the average rank of a tie group of the resample
        per_row = np.repeat(rank, np.diff(np.r_[starts, len(x)]), axis=1)
        ranks = np.empty_like(per_row)
        ranks[:, order] = per_row
        if name == "t":
            rt = ranks
        else:
            rp = ranks
    total = w.sum(1)
    mt, mp = (w * rt).sum(1) / total, (w * rp).sum(1) / total
    cov = (w * (rt - mt[:, None]) * (rp - mp[:, None])).sum(1)
    vt = (w * (rt - mt[:, None]) ** 2).sum(1)
    vp = (w * (rp - mp[:, None]) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho[:] = np.where((vt > 0) & (vp > 0), cov / np.sqrt(vt * vp), np.nan)
    return rho


def regression_metrics(y_true, y_pred, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """``r2``, ``mae``, ``rmse``, ``spearman`` of predictions, each with its bootstrap ``*_ci``.

    Several outputs (``(n, k)``): each metric's mean over the outputs (scikit-learn's
    ``uniform_average``). R² is undefined (NaN) when the truth is constant.

    Examples:
        >>> m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0])
        >>> m["mae"], m["rmse"]
        (0.25, 0.5)
    """
    t, p = _as_2d(y_true), _as_2d(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"{p.shape} predictions for {t.shape} true values")
    centre = t.mean(0) if len(t) else 0.0  # the variance as E[t^2] - E[t]^2 loses nothing to a large offset
    t, p = t - centre, p - centre
    return _with_intervals(lambda w: _weighted_regression(t, p, w), len(t), REGRESSION_METRICS, n_boot, level, seed)


def mean_baseline(y_train, n: int) -> np.ndarray:
    """The trivial regression baseline: the train mean (per output) for each of ``n`` rows."""
    y = np.asarray(y_train, np.float64)
    return np.broadcast_to(y.mean(0), (n,) + y.shape[1:]).copy()


# --------------------------------------------------------------------------- multi-label

def _weighted_ap(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision of one label per resample, as scikit-learn's (with sample weights); NaN without positives.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct scores, highest first.
    """
    order = np.argsort(-s, kind="stable")
    ss, ys, ws = s[order], y[order].astype(np.float64), w[:, order]
    ends = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]  # the last row of each tie group
    tp = np.cumsum(ws * ys, axis=1)[:, ends]
    seen = np.cumsum(ws, axis=1)[:, ends]
    positives = tp[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(seen > 0, tp / seen, 0.0)
        recall = tp / positives
    gain = np.diff(np.concatenate([np.zeros((len(w), 1)), recall], axis=1), axis=1)
    ap = (np.nan_to_num(gain) * precision).sum(1)
    return np.where(positives[:, 0] > 0, ap, np.nan)


def _weighted_multilabel(y: np.ndarray, s: np.ndarray, pred: np.ndarray, w: np.ndarray) -> dict:
    aps = np.stack([_weighted_ap(y[:, j], s[:, j], w) for j in range(y.shape[1])], axis=1)
    with np.errstate(invalid="ignore"):
        m_ap = np.where(np.isfinite(aps).any(1), np.nanmean(np.where(np.isfinite(aps), aps, np.nan), 1), np.nan) \
            if aps.size else np.full(len(w), np.nan)
    yt, yp = y.astype(np.float64), pred.astype(np.float64)
    tp = w @ (yt * yp)
    fp = w @ ((1 - yt) * yp)
    fn = w @ (yt * (1 - yp))
    denom = 2 * tp + fp + fn
    micro = np.where(denom.sum(1) > 0, 2 * tp.sum(1) / np.maximum(denom.sum(1), 1e-300), 0.0)
    present = denom > 0  # labels in the truth or the predictions of the resample (as stats.py's macro-F1)
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1e-300), 0.0)
    macro = np.where(present.any(1), (f1 * present).sum(1) / np.maximum(present.sum(1), 1), 0.0)
    exact = (y == pred).all(1).astype(np.float64)
    subset = (w @ exact) / w.sum(1)
    return {"map": m_ap, "micro_f1": micro, "macro_f1": macro, "subset_accuracy": subset}


def mean_average_precision(y_true, scores) -> float:
    """Macro mAP: scikit-learn's ``average_precision_score`` of each label with positives, averaged."""
    y, s = np.asarray(y_true), np.asarray(scores, np.float64)
    aps = [average_precision_score(y[:, j], s[:, j]) for j in range(y.shape[1]) if y[:, j].any()]
    return float(np.mean(aps)) if aps else float("nan")


def multilabel_metrics(y_true, scores, thresholds=0.5, *, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> dict:
    """``map``, ``micro_f1``, ``macro_f1``, ``subset_accuracy`` of label scores, each with its bootstrap ``*_ci``.

    Args:
        y_true: ``(n, labels)`` 0/1 indicators.
        scores: ``(n, labels)`` scores (probabilities, or any score: only their order matters to mAP).
        thresholds: one per label (or one for all): a label is predicted where its score >= it;
            choose them on validation with :func:`choose_thresholds`.

    Macro-F1 averages the labels present in the truth or the predictions (as
    :mod:`.stats` does for classes); mAP the labels with positives.
    """
    y = np.asarray(y_true).astype(np.uint8)
    s = np.asarray(scores, np.float64)
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"{s.shape} scores for {y.shape} labels; both must be (rows, labels)")
    pred = (s >= np.broadcast_to(np.asarray(thresholds, np.float64), (y.shape[1],))).astype(np.uint8)
    out = _with_intervals(lambda w: _weighted_multilabel(y, s, pred, w), len(y), MULTILABEL_METRICS, n_boot,
                          level, seed)
    if len(y):
        out["map"] = mean_average_precision(y, s)  # scikit-learn's own, which the weighted form equals
    return out


def choose_thresholds(y_val, scores_val, default: float = 0.5) -> np.ndarray:
    """Per label, the threshold that maximises its F1 on validation; ``default`` for a label without positives.

    The cut falls half way between the lowest score predicted positive and the
    next lower score (ties: the highest such cut, the fewest positives).
    """
    y = np.asarray(y_val).astype(bool)
    s = np.asarray(scores_val, np.float64)
    out = np.full(y.shape[1], float(default))
    for j in range(y.shape[1]):
        if not y[:, j].any():
            continue
        order = np.argsort(-s[:, j], kind="stable")
        ss, ys = s[order, j], y[order, j]
        ends = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]
        tp = np.cumsum(ys)[ends]
        predicted = ends + 1
        f1 = 2 * tp / (predicted + ys.sum())
        k = int(np.argmax(f1))
        out[j] = (ss[ends[k]] + ss[ends[k] + 1]) / 2 if ends[k] + 1 < len(ss) else ss[ends[k]]
    return out


def frequency_baseline(y_train, n: int) -> np.ndarray:
    """The trivial multi-label baseline: each label's train frequency as its score, for each of ``n`` rows."""
    y = np.asarray(y_train, np.float64)
    return np.broadcast_to(y.mean(0), (n, y.shape[1])).copy()
