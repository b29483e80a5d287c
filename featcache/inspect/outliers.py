"""Outliers: the mean cosine distance to the k nearest neighbours (blocked), or cleanlab Datalab's outlier score."""

from __future__ import annotations

import numpy as np

from ..errors import FeatcacheError
from .duplicates import WORK_BYTES
from .labels import INSTALL

#: the outlier scores inspect offers
METHODS = ("knn", "datalab")


def knn_distance(U: np.ndarray, k: int, work_bytes: int = WORK_BYTES) -> np.ndarray:
    """Each unit row's mean cosine distance to its ``k`` nearest other rows (higher: more of an outlier)."""
    k = min(k, len(U) - 1)
    if k < 1:
        return np.zeros(len(U))
    step = max(1, work_bytes // (4 * len(U)))
    out = np.empty(len(U))
    for a in range(0, len(U), step):
        sim = U[a:a + step] @ U.T
        sim[np.arange(len(sim)), np.arange(a, a + len(sim))] = -np.inf  # not its own neighbour
        top = np.partition(sim, -k, axis=1)[:, -k:]
        out[a:a + len(sim)] = 1.0 - top.mean(1)
    return out


def datalab_score(X: np.ndarray, k: int) -> np.ndarray:
    """cleanlab's feature-based outlier score (Datalab's outlier issue), as 1 - its quality (higher: more of an outlier).

    Datalab itself needs ``cleanlab[datalab]`` (the ``datasets`` package); the score it
    reports for features is :class:`cleanlab.outlier.OutOfDistribution`'s, used directly.
    """
    try:
        from cleanlab.outlier import OutOfDistribution
    except ImportError:
        raise FeatcacheError(f"the datalab outlier score needs cleanlab: {INSTALL}") from None
    ood = OutOfDistribution({"k": min(k, len(X) - 1)})
    return 1.0 - ood.fit_score(features=np.asarray(X, np.float32), verbose=False)


def outlier_scores(U: np.ndarray, k: int, method: str = "knn") -> np.ndarray:
    return knn_distance(U, k) if method == "knn" else datalab_score(U, k)
