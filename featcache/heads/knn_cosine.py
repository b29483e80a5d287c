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
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import normalize  # L2 rows; an all-zero row stays zero (similarity 0)
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


class CosineKNNClassifier(ClassifierMixin, BaseEstimator):
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

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, n_neighbors: int = 20, temperature: float = 0.07, batch_size: int = 1024):
        self.n_neighbors = n_neighbors
        self.temperature = temperature
        self.batch_size = batch_size

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
        self.classes_, self._codes = np.unique(y, return_inverse=True)
        self._train = normalize(X)
        return self

    def predict_proba(self, X):
        """Each class's share of the weighted votes of the ``n_neighbors`` most similar training rows.

        Args:
            X: features, shape (m, d).

        Returns:
            Probabilities, shape (m, n_classes), in the order of ``classes_``.
        """
        check_is_fitted(self)
        X = normalize(validate_data(self, X, reset=False, dtype=[np.float64, np.float32]))
        train = self._train.astype(X.dtype, copy=False)
        k = min(self.n_neighbors, len(train))
        n_classes = len(self.classes_)
        out = np.zeros((len(X), n_classes))
        for a in range(0, len(X), self.batch_size):
            sim = X[a:a + self.batch_size] @ train.T
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.broadcast_to(
                np.arange(sim.shape[1]), sim.shape)
            s = np.take_along_axis(sim, top, axis=1).astype(np.float64)
            w = np.exp((s - s.max(1, keepdims=True)) / self.temperature)  # the max cancels in the shares
            votes = out[a:a + len(s)]
            np.add.at(votes, (np.arange(len(s))[:, None], self._codes[top]), w)
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
