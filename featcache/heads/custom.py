"""A user's own scikit-learn classifier as a featcache head.

``featcache.train(cache, head=SVC())`` trains any estimator that follows the
scikit-learn API (``fit``, ``predict``, ``get_params``), not only the named
heads. It is cloned (the user's object is never fitted in place), given its
parameters, wrapped in the same ``Pipeline([... , ("clf", est)])`` shape as
every named head, and saved as a model directory that ``predict`` and
``bench``'s readers accept. An estimator without ``predict_proba`` (``SVC()``,
``RidgeClassifier()``) gets one-hot probabilities from ``predict``, said in
the card, so every head reports the same metrics.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone, is_classifier, is_regressor
from sklearn.utils.validation import check_is_fitted

from ..errors import FeatcacheError


class _ProbaFromPredict(ClassifierMixin, BaseEstimator):
    """Wrap a classifier that has no ``predict_proba``: fit a clone, predict with it; subclasses say what its
    ``classes_`` are and how ``predict`` becomes probabilities."""

    def __init__(self, estimator=None):
        self.estimator = estimator

    def fit(self, X, y, **fit_params):
        self.estimator_ = clone(self.estimator).fit(X, y, **fit_params)
        self.classes_ = self._classes(y)
        if hasattr(self.estimator_, "n_features_in_"):
            self.n_features_in_ = self.estimator_.n_features_in_
        return self

    def predict(self, X):
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)


class OneHotProba(_ProbaFromPredict):
    """Wrap a classifier that has no ``predict_proba``: its probabilities are the one-hot of ``predict``.

    Args:
        estimator: the scikit-learn classifier to wrap (fitted by ``fit``, a clone).

    Examples:
        >>> from sklearn.svm import SVC
        >>> clf = OneHotProba(SVC()).fit([[0], [1], [2], [3]], [0, 0, 1, 1])
        >>> clf.predict_proba([[3]]).tolist()
        [[0.0, 1.0]]
    """

    def _classes(self, y):
        return np.asarray(self.estimator_.classes_)

    def predict_proba(self, X):
        pred = self.predict(X)
        return (pred[:, None] == self.classes_[None, :]).astype(np.float64)


class IndicatorProba(_ProbaFromPredict):
    """Wrap a multi-label classifier that has no ``predict_proba``: each label's score is its 0/1 ``predict``.

    Args:
        estimator: the scikit-learn classifier to wrap (fitted by ``fit``, a clone) on an indicator matrix.
    """

    def _classes(self, y):
        return np.arange(np.shape(y)[1])

    def predict_proba(self, X):
        return np.asarray(self.predict(X), dtype=np.float64)


#: what each kind of target needs of your own estimator: (scikit-learn's test, what the error says it needs)
NEEDS = {"classification": (is_classifier, "a classifier (scikit-learn's is_classifier)"),
         "regression": (is_regressor, "a regressor (scikit-learn's is_regressor), e.g. RidgeCV()"),
         "multilabel": (is_classifier, "a classifier that fits a 0/1 indicator matrix, e.g. "
                                       "OneVsRestClassifier(LogisticRegression()) or KNeighborsClassifier()")}


def head_name(estimator) -> str:
    """The name a user's estimator is saved and shown under: ``custom:ClassName``."""
    return f"custom:{type(estimator).__name__}"


def user_head(estimator, steps: list, params: dict | None = None, *, kind: str = "classification",
              target: str = "label"):
    """``(name, pipeline)`` for a user's estimator, every parameter checked before any work.

    Args:
        estimator: an unfitted scikit-learn classifier or regressor (or a Pipeline ending in one).
        steps: the preprocessing steps to put before it (``[]`` for none).
        params: parameters to set on a clone of it first, e.g. ``{"C": 2.0}``.
        kind: the kind of the target it learns (classification, regression or multilabel), and
        target: its name, both for the one-line error when the estimator does not suit it.

    Returns:
        The head's name (``custom:SVC``) and ``Pipeline(steps + [("clf", est)])``.
    """
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, type):
        raise FeatcacheError(f"head must be an estimator object, not the class {estimator.__name__}; "
                             f"write {estimator.__name__}()")
    if not all(callable(getattr(estimator, m, None)) for m in ("fit", "predict", "get_params", "set_params")):
        raise FeatcacheError(f"head must be a head name or a scikit-learn classifier (fit, predict, get_params), "
                             f"got {type(estimator).__name__}")
    suits, needs = NEEDS[kind]
    if not suits(estimator):
        what = "a regressor" if is_regressor(estimator) else "a classifier" if is_classifier(estimator) else \
            "neither a classifier nor a regressor"
        raise FeatcacheError(f"head {type(estimator).__name__} is {what}, but target {target!r} is {kind}: it needs "
                             f"{needs}")
    try:
        est = clone(estimator)
        if params:
            est.set_params(**params)
        if hasattr(est, "_validate_params") and hasattr(est, "_parameter_constraints"):  # optional in your own
            est._validate_params()
    except (ValueError, TypeError, AttributeError, RuntimeError) as exc:
        lines = str(exc).strip().splitlines()
        raise FeatcacheError(f"invalid parameter for head {head_name(estimator)}: "
                             f"{lines[0] if lines else type(exc).__name__}") from None
    if kind != "regression" and not callable(getattr(est, "predict_proba", None)):  # SVC(probability=False) too
        est = IndicatorProba(est) if kind == "multilabel" else OneHotProba(est)
    return head_name(estimator), Pipeline(list(steps) + [("clf", est)])
