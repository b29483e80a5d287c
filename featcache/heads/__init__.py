"""Classifier heads by name: scikit-learn models and small Keras dense heads.

Every head is a scikit-learn :class:`~sklearn.pipeline.Pipeline` whose last
step is named ``clf`` (optionally after ``scale`` and ``pca`` steps), so all
heads share one interface: ``fit``, ``predict``, ``predict_proba``, ``score``,
``get_params``/``set_params``, and compose with GridSearchCV and joblib.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from ..errors import FeatcacheError


@dataclass(frozen=True)
class HeadSpec:
    name: str
    make: Callable
    kind: str  # "sklearn" or "keras"
    preprocess: str  # default: "standard", "none" or "pca:N"
    description: str
    #: where a plain parameter such as C goes inside the pipeline
    param_prefix: str = "clf__"
    #: supports streaming from a cache (partial_fit or fit_cache)
    streams: bool = False
    defaults: dict = field(default_factory=dict)


def _sk(name, factory, preprocess, description, prefix="clf__", streams=False):
    return HeadSpec(name, factory, "sklearn", preprocess, description, prefix, streams)


def _logreg():
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=1.0, max_iter=2000)


def _linear_svm():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import LinearSVC
    return CalibratedClassifierCV(LinearSVC(C=0.1, max_iter=5000), cv=3)


def _ridge():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import RidgeClassifier
    return CalibratedClassifierCV(RidgeClassifier(alpha=1.0), cv=3)


def _sgd():
    from sklearn.linear_model import SGDClassifier
    return SGDClassifier(loss="log_loss", alpha=1e-4, max_iter=50, tol=1e-3, random_state=0)


def _knn():
    from sklearn.neighbors import KNeighborsClassifier
    return KNeighborsClassifier(n_neighbors=10, weights="distance")


def _random_forest():
    from sklearn.ensemble import RandomForestClassifier
    return RandomForestClassifier(n_estimators=200, random_state=0)


def _hist_gb():
    from sklearn.ensemble import HistGradientBoostingClassifier
    return HistGradientBoostingClassifier(max_iter=100, early_stopping=True, random_state=0)


def _lda():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")


def _gaussian_nb():
    from sklearn.naive_bayes import GaussianNB
    return GaussianNB()


def _mlp():
    from sklearn.neural_network import MLPClassifier
    return MLPClassifier(hidden_layer_sizes=(256,), early_stopping=True, max_iter=200, random_state=0)


def _keras(**kw):
    def make():
        from .keras_head import KerasHeadClassifier
        return KerasHeadClassifier(**kw)
    return make


HEADS: dict[str, HeadSpec] = {s.name: s for s in [
    _sk("logreg", _logreg, "standard", "logistic regression (lbfgs)"),
    _sk("linear_svm", _linear_svm, "standard", "linear SVM, calibrated probabilities", "clf__estimator__"),
    _sk("ridge", _ridge, "standard", "ridge classifier, calibrated probabilities", "clf__estimator__"),
    _sk("sgd", _sgd, "standard", "SGD logistic regression", streams=True),
    _sk("knn", _knn, "standard", "k-nearest neighbours (k=10, distance-weighted)"),
    _sk("random_forest", _random_forest, "none", "random forest (200 trees)"),
    _sk("hist_gb", _hist_gb, "none", "histogram gradient boosting"),
    _sk("lda", _lda, "none", "linear discriminant analysis (shrinkage)"),
    _sk("gaussian_nb", _gaussian_nb, "standard", "Gaussian naive Bayes", streams=True),
    _sk("mlp", _mlp, "standard", "scikit-learn MLP (256)", streams=True),
    HeadSpec("keras_linear", _keras(hidden=(), learning_rate=1e-2), "keras", "none",
             "Keras softmax regression (Adam, early stopping)",
             streams=True),
    HeadSpec("keras_mlp", _keras(hidden=(512,), dropout=0.3, batch_norm=True), "keras", "none",
             "Keras MLP 512, batch norm, dropout 0.3", streams=True),
    HeadSpec("classic", _keras(hidden=(512,), standardize=False), "keras", "none",
             "the classic recipe's head: Flatten -> Dense(512, relu) -> Dense(classes, softmax)", streams=True),
]}


def list_heads() -> list[HeadSpec]:
    return list(HEADS.values())


def get_head_spec(name: str) -> HeadSpec:
    try:
        return HEADS[name]
    except KeyError:
        raise FeatcacheError(f"unknown head {name!r}; known heads: {', '.join(HEADS)}") from None


def parse_value(text: str):
    """A --param value: JSON when it parses (numbers, true, null, lists), a tuple for 'a,b', else the string."""
    try:
        value = json.loads(text)
        return tuple(value) if isinstance(value, list) else value
    except ValueError:
        pass
    if "," in text:
        return tuple(parse_value(t) for t in text.split(",") if t)
    return text


def make_head(name: str, preprocess: str | None = None, **params):
    """A head by name, as a Pipeline ending in ``clf``; plain params go to the classifier."""
    from sklearn.base import clone
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    spec = get_head_spec(name)
    prep = preprocess if preprocess is not None else spec.preprocess
    steps = []
    for part in [p for p in str(prep).split("+") if p and p != "none"]:
        if part == "standard":
            steps.append(("scale", StandardScaler()))
        elif part.startswith("pca"):
            _, _, n = part.partition(":")
            steps.append(("pca", PCA(n_components=int(n) if n else 0.95, random_state=0)))
        else:
            raise FeatcacheError(f"preprocess must be none, standard, pca[:N] or standard+pca[:N]; got {prep!r}")
    pipe = Pipeline(steps + [("clf", clone(spec.make()))])
    full = {}
    for k, v in params.items():
        full[k if "__" in k else spec.param_prefix + k] = v
    try:
        pipe.set_params(**full)
    except ValueError as exc:
        raise FeatcacheError(f"invalid parameter for head {name!r}: {exc}") from None
    return pipe


def is_keras(pipe) -> bool:
    from .keras_head import KerasHeadClassifier

    return isinstance(pipe.steps[-1][1], KerasHeadClassifier)
