"""Likely label errors and class overlap from out-of-fold probabilities of a fast head on the cached features."""

from __future__ import annotations

import numpy as np

from ..errors import FeatcacheError

#: said whenever an optional package of featcache inspect is missing
INSTALL = "pip install 'featcache[inspect]'"
#: cleanlab's ``find_label_issues(filter_by=...)`` choices; the first is inspect's default (docs/PERFORMANCE.md:
#: on 10,000 Fashion-MNIST rows with 5% flips it doubled the precision of prune_by_noise_rate at the same recall)
FILTERS = ("low_self_confidence", "prune_by_noise_rate", "both", "confident_learning", "low_normalized_margin")


def _features(cache, rows, output) -> np.ndarray:
    X = cache.read_rows(rows, output).features
    return np.asarray(X, np.float32).reshape(len(rows), -1)


def out_of_fold(cache, rows: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0,
                output: str | None = None) -> np.ndarray:
    """Out-of-fold class probabilities ``(len(rows), n_classes)`` of a logistic regression on unit-length features.

    An image's augmented views (store/augmented.py) train with it and are never
    split from it: folds are grouped by image, so no view of a held-out image is fitted.
    ``labels`` are 0..C-1 for ``rows``; every probability column is a class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    n_classes = int(labels.max()) + 1
    X = _features(cache, rows, output)
    views = (np.asarray(cache.views_of(rows, output), np.float32).reshape(cache.views, len(rows), -1)
             if cache.views else np.zeros((0,) + X.shape, np.float32))
    has_view = (cache.view_positions(1, rows) >= 0) if cache.views else np.zeros(len(rows), bool)
    smallest = int(np.bincount(labels, minlength=n_classes)[np.bincount(labels, minlength=n_classes) > 0].min())
    k = max(2, min(folds, smallest))  # a class with 3 images cannot be in 5 folds
    probs = np.zeros((len(rows), n_classes), np.float64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fit, held in splitter.split(X, labels, groups=np.arange(len(rows))):
        extra = fit[has_view[fit]]  # views of the fitted images only
        Xf = np.concatenate([X[fit]] + [v[extra] for v in views])
        yf = np.concatenate([labels[fit]] + [labels[extra]] * len(views))
        # unit rows, weak penalty: on 251 planted rows 86% out-of-fold accuracy vs 81% standardized at C=0.1
        head = make_pipeline(Normalizer(), LogisticRegression(max_iter=1000, C=10.0))
        head.fit(Xf, yf)
        probs[np.ix_(held, head[-1].classes_)] = head.predict_proba(X[held])
    return probs


def label_issues(probs: np.ndarray, labels: np.ndarray, filter_by: str = FILTERS[0]) -> dict:
    """cleanlab's confident learning on ``probs``: flagged positions ranked worst first, with scores and suggestions.

    ``low_self_confidence`` flags the rows of lowest probability of their given label, as many as
    confident learning estimates are mislabelled; ``prune_by_noise_rate`` (cleanlab's default) also flags
    every row the head confidently puts in another class, which on classes the features confuse is most of them.
    """
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise FeatcacheError(f"finding label errors needs cleanlab: {INSTALL}") from None
    ranked = find_label_issues(labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence")
    score = 1.0 - probs[np.arange(len(labels)), labels]  # 1 - the probability of the given label
    return {"index": np.asarray(ranked, np.int64), "score": score[ranked], "suggested": probs[ranked].argmax(1)}


def class_overlap(probs: np.ndarray, labels: np.ndarray, min_rate: float = 0.05) -> list[dict]:
    """Class pairs the features cannot separate: the share of their images the out-of-fold head swaps, worst first."""
    n = probs.shape[1]
    conf = np.zeros((n, n), np.int64)
    np.add.at(conf, (labels, probs.argmax(1)), 1)
    counts = conf.sum(1)
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            total = counts[a] + counts[b]
            rate = (conf[a, b] + conf[b, a]) / total if total else 0.0
            if rate >= min_rate:
                pairs.append({"a": a, "b": b, "swapped": int(conf[a, b] + conf[b, a]), "rate": float(rate)})
    return sorted(pairs, key=lambda p: -p["rate"])
