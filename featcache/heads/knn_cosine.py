"""DINOv2's weighted k-NN probe as a scikit-learn classifier.

The protocol of DINOv2 (Oquab et al., 2023, ``dinov2/eval/knn.py``), itself
from Wu et al. (2018) and DINO: features are L2-normalised, a query's
neighbours are the ``k`` training rows of highest cosine similarity, and each
neighbour votes for its class with weight ``exp(similarity / T)``, T = 0.07.
The bench chooses ``k`` on the validation split from 10, 20, 100 and 200, as
DINOv2 reports.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import normalize  # L2 rows; an all-zero row stays zero (similarity 0)
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


class _CosineKNN(BaseEstimator):
    """The parameters every cosine k-NN here shares; fitted, ``X_train_`` holds the L2-normalised training rows
    and ``y_train_`` their targets (class codes into ``classes_``, values, or 0/1 label rows)."""

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, n_neighbors: int = 20, temperature: float = 0.07, batch_size: int = 1024):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.batch_size = batch_size

    def __setstate__(self, state):
        # a model directory saved before the fitted attributes were named X_train_ and y_train_ still loads
        for old, new in (("_train", "X_train_"), ("_y", "y_train_"), ("_codes", "y_train_")):
            if old in state:
                state[new] = state.pop(old)
        super().__setstate__(state)


class CosineKNNClassifier(ClassifierMixin, _CosineKNN):
    """Weighted k-NN on cosine similarity, votes weighted by ``exp(similarity / temperature)``.

    Args:
        n_neighbors: neighbours that vote (at most the number of training rows: fewer rows, all vote).
        temperature: the votes' temperature T (DINOv2: 0.07).
        batch_size: query rows per similarity block (memory: ``batch_size`` x training rows floats).

    Examples:
        >>> import numpy as np
        >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> clf = CosineKNNClassifier(n_neighbors=2).fit(X, [0, 0, 1, 1])
        >>> clf.predict([[5.0, 0.2], [0.0, 3.0]]).tolist()
        [0, 1]
    """

    def fit(self, X, y):
        """Keep the L2-normalised training rows and their labels.

        Args:
            X: training features, shape (n, d).
            y: their labels.

        Returns:
            self.
        """
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, self.y_train_ = np.unique(y, return_inverse=True)
        self.X_train_ = normalize(X)
        return self

    def predict_proba(self, X):
        """Each class's share of the weighted votes of the ``n_neighbors`` most similar training rows.

        Args:
            X: features, shape (m, d).

        Returns:
            Probabilities, shape (m, n_classes), in the order of ``classes_``.
        """
        n, blocks = _neighbours(self, X)  # checked before any work: a NotFittedError, any array-like
        out = np.zeros((n, len(self.classes_)))
        for rows, top, w in blocks:
            np.add.at(out[rows], (np.arange(len(top))[:, None], self.y_train_[top]), w)
        return out / out.sum(1, keepdims=True)

    def predict(self, X):
        """The class with the most weighted votes.

        Args:
            X: features, shape (m, d).

        Returns:
            Labels, shape (m,).
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


def _neighbours(est, X):
    """``(rows, blocks)``: X checked now, then ``(rows, top, weights)`` per query block: the indices of the ``n_neighbors`` training rows most similar to
    ``X[rows]`` and their votes ``exp((sim - max) / T)`` (the max cancels in every weighted share)."""
    check_is_fitted(est)
    X = normalize(validate_data(est, X, reset=False, dtype=[np.float64, np.float32]))
    return len(X), _blocks(est, X)


def _blocks(est, X):
    train = est.X_train_.astype(X.dtype, copy=False)
    k = min(est.n_neighbors, len(train))
    for a in range(0, len(X), est.batch_size):
        sim = X[a:a + est.batch_size] @ train.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.broadcast_to(
            np.arange(sim.shape[1]), sim.shape)
        s = np.take_along_axis(sim, top, axis=1).astype(np.float64)
        yield slice(a, a + len(s)), top, np.exp((s - s.max(1, keepdims=True)) / est.temperature)


def _weighted_mean(est, X) -> np.ndarray:
    """Each query's weighted mean of its neighbours' training targets, shape (m, outputs)."""
    n, blocks = _neighbours(est, X)
    out = np.zeros((n, est.y_train_.shape[1]))
    for rows, top, w in blocks:
        out[rows] = np.einsum("qk,qkj->qj", w, est.y_train_[top]) / w.sum(1, keepdims=True)
    return out


class CosineKNNRegressor(RegressorMixin, _CosineKNN):
    """DINOv2's weighted cosine k-NN for numeric targets: the neighbours' values averaged with the votes' weights.

    Args: as :class:`CosineKNNClassifier`. ``y`` may be 1-D or (n, outputs); ``predict`` has its shape.

    Examples:
        >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> CosineKNNRegressor(n_neighbors=2).fit(X, [1.0, 1.0, 5.0, 5.0]).predict([[0.0, 2.0]]).round(3).tolist()
        [5.0]
    """

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], multi_output=True, y_numeric=True)
        y = np.asarray(y, np.float64)
        self._one_output = y.ndim == 1
        self.y_train_, self.X_train_ = y.reshape(len(y), -1), normalize(X)
        return self

    def predict(self, X):
        out = _weighted_mean(self, X)
        return out[:, 0] if self._one_output else out


class CosineKNNMultiLabel(ClassifierMixin, _CosineKNN):
    """DINOv2's weighted cosine k-NN for a 0/1 indicator matrix: each label's probability is its weighted
    frequency among the neighbours (``predict_proba`` (m, labels); ``predict`` thresholds it at 0.5).

    Args: as :class:`CosineKNNClassifier`.
    """

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], multi_output=True)
        y = np.asarray(y)
        if y.ndim != 2 or not np.isin(y, (0, 1)).all():
            raise ValueError(f"CosineKNNMultiLabel fits a 0/1 indicator matrix (rows, labels), got shape {y.shape}")
        self.classes_ = np.arange(y.shape[1])
        self.y_train_, self.X_train_ = y.astype(np.float64), normalize(X)
        return self

    def predict_proba(self, X):
        return _weighted_mean(self, X)

    def predict(self, X):
        return (self.predict_proba(X) >= 0.5).astype(np.int64)
