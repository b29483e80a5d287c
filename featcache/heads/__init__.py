"""Classifier heads by name: scikit-learn models and small Keras dense heads.

Every head is a scikit-learn :class:`~sklearn.pipeline.Pipeline` whose last
step is named ``clf`` (optionally after ``scale`` and ``pca`` steps), so all
heads share one interface: ``fit``, ``predict``, ``predict_proba``, ``score``,
``get_params``/``set_params``, and compose with GridSearchCV and joblib.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Callable

import numpy as np

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
    #: how it trains on a cache's augmented views (:mod:`featcache.heads.views`): ``rows`` (every view a
    #: training row), ``mean`` (each image's mean over its views: as many rows as without views) or ``draw``
    #: (Keras heads: one view per image per epoch)
    views: str = "rows"


def _sk(name, factory, preprocess, description, prefix="clf__", streams=False, views="rows"):
    return HeadSpec(name, factory, "sklearn", preprocess, description, prefix, streams, views)


def _logreg():
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=1.0, max_iter=2000, tol=1e-3)  # tol: within 0.2 points of 1e-4, 3x faster


def _linear_svm():
    # the hinge loss solved in the primal by averaged SGD: one pass is O(rows x features), where liblinear's
    # LinearSVC took 12-27 s per C on 6,700 x 1,280 rows (primal or dual) and 600 s for the old 4-C sweep
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import SGDClassifier
    return CalibratedClassifierCV(SGDClassifier(loss="hinge", alpha=1e-4, average=True, max_iter=20, tol=1e-3,
                                                random_state=0), cv=3)


def _ridge():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import RidgeClassifier
    return CalibratedClassifierCV(RidgeClassifier(alpha=1.0), cv=3)


def _sgd():
    from sklearn.linear_model import SGDClassifier
    # averaged SGD: 20 epochs reach what 50 plain ones did not (85.2% vs 83.3% on 10k Fashion-MNIST rows)
    return SGDClassifier(loss="log_loss", alpha=1e-4, average=True, max_iter=20, tol=1e-3, random_state=0)


def _knn():
    from sklearn.neighbors import KNeighborsClassifier
    return KNeighborsClassifier(n_neighbors=10, weights="distance")


def _knn_cosine():
    from .knn_cosine import CosineKNNClassifier
    return CosineKNNClassifier(n_neighbors=20, temperature=0.07)


def _random_forest():
    from sklearn.ensemble import RandomForestClassifier
    return RandomForestClassifier(n_estimators=200, random_state=0)


def _hist_gb():
    from sklearn.ensemble import HistGradientBoostingClassifier
    # 300 rounds without early stopping: stopping on the held-out loss ended at ~50 rounds, 2.4 points below
    # where accuracy still climbs (docs/PERFORMANCE.md, figure 9); 63 bins cost less and lost nothing measured
    return HistGradientBoostingClassifier(max_iter=300, max_bins=63, early_stopping=False, random_state=0)


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
    _sk("linear_svm", _linear_svm, "standard", "linear SVM (hinge loss, averaged SGD), calibrated probabilities",
        "clf__estimator__"),
    _sk("ridge", _ridge, "standard", "ridge classifier, calibrated probabilities", "clf__estimator__"),
    _sk("sgd", _sgd, "standard", "SGD logistic regression (averaged)", streams=True),
    # views as rows would make these K + 1 times slower to fit (forests, boosting) or to predict (k-NN)
    _sk("knn", _knn, "standard", "k-nearest neighbours (k=10, distance-weighted)", views="mean"),
    _sk("knn_cosine", _knn_cosine, "none", "DINOv2's weighted k-NN probe (cosine, votes exp(sim/0.07))",
        views="mean"),
    _sk("random_forest", _random_forest, "none", "random forest (200 trees)", views="mean"),
    _sk("hist_gb", _hist_gb, "pca:128", "histogram gradient boosting on a PCA to 128 dimensions", views="mean"),
    _sk("lda", _lda, "none", "linear discriminant analysis (shrinkage)"),
    _sk("gaussian_nb", _gaussian_nb, "standard", "Gaussian naive Bayes", streams=True),
    _sk("mlp", _mlp, "standard", "scikit-learn MLP (256)", streams=True),
    HeadSpec("keras_linear", _keras(hidden=(), learning_rate=1e-2), "keras", "none",
             "Keras softmax regression (Adam, early stopping)",
             streams=True, views="draw"),
    # tuned on 10k Fashion-MNIST rows (85.9% vs logreg's 85.4%; 512 wide, dropout 0.3: 83.3%), checked on
    # scikit-learn's digits (97.6% vs logreg's 97.0%): docs/PERFORMANCE.md
    HeadSpec("keras_mlp", _keras(hidden=(1024,), dropout=0.5, batch_norm=True, learning_rate=1e-3), "keras", "none",
             "Keras MLP 1024, batch norm, dropout 0.5", streams=True, views="draw"),
    HeadSpec("classic", _keras(hidden=(512,), standardize=False, learning_rate=1e-3, batch_size=64), "keras", "none",
             "the classic recipe's head: Flatten -> Dense(512, relu) -> Dense(classes, softmax)", streams=True,
             views="draw"),
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


def preprocess_steps(prep) -> list:
    """The pipeline steps a preprocess string names; an error naming the bad text otherwise."""
    from sklearn.preprocessing import StandardScaler

    from .pca import AtMostPCA

    usage = "preprocess must be none, standard, pca[:N] or standard+pca[:N]"
    if not isinstance(prep, str):
        raise FeatcacheError(f"{usage}; got {prep!r}")
    steps = []
    for part in [p for p in prep.split("+") if p and p != "none"]:
        if part == "standard":
            step = ("scale", StandardScaler())
        elif part == "pca" or part.startswith("pca:"):
            step = ("pca", AtMostPCA(n_components=_pca_components(part, prep), random_state=0))
        else:
            raise FeatcacheError(f"{usage}; got {prep!r} ({part!r} is none of them)")
        if any(name == step[0] for name, _ in steps):
            raise FeatcacheError(f"{usage}; got {prep!r} ({part!r} twice)")
        steps.append(step)
    return steps


def _pca_components(part: str, prep: str):
    """``pca`` keeps 95% of the variance; ``pca:N`` N components, or ``pca:0.8`` that share of the variance."""
    _, sep, text = part.partition(":")
    if not sep:
        return 0.95
    try:
        n = int(text)
    except ValueError:
        try:
            n = float(text)
        except ValueError:
            n = None
    if isinstance(n, int) and n >= 1:
        return n
    if isinstance(n, float) and 0 < n < 1:
        return n
    raise FeatcacheError(f"preprocess {prep!r}: in {part!r}, N must be a number of components (1 or more) or a "
                         f"share of the variance between 0 and 1, got {text!r}")


def make_head(name: str, preprocess: str | None = None, **params):
    """A head by name, as a Pipeline ending in ``clf``; plain params go to the classifier."""
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    spec = get_head_spec(name)
    prep = preprocess if preprocess is not None else spec.preprocess
    pipe = Pipeline(preprocess_steps(prep) + [("clf", clone(spec.make()))])
    full = {}
    valid = pipe.get_params(deep=True)
    for k, v in params.items():
        key = k if isinstance(k, str) and "__" in k else spec.param_prefix + str(k)
        if not isinstance(k, str) or key not in valid:
            plain = [p[len(spec.param_prefix):] for p in valid
                     if p.startswith(spec.param_prefix) and "__" not in p[len(spec.param_prefix):]]
            near = difflib.get_close_matches(str(k), plain, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"it has {', '.join(sorted(plain))}"
            raise FeatcacheError(f"invalid parameter for head {name!r}: {k!r} is not one of its parameters ({hint})")
        full[key] = v
    try:
        pipe.set_params(**full)
    except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: C__x=1 (C has no parameters)
        raise FeatcacheError(f"invalid parameter for head {name!r}: {_first_line(exc)}") from None
    return pipe


def validate_head(name: str, preprocess: str | None = None, params: dict | None = None):
    """The head ``make_head`` builds, with every parameter checked before any work; else a FeatcacheError.

    Each estimator in the pipeline (nested ones too, such as the SVM inside
    ``linear_svm``'s calibration) checks its parameters against the
    constraints it declares itself (scikit-learn's ``_parameter_constraints``),
    so a constraint is written once, in the estimator. What depends on the
    data (``n_neighbors`` above the number of rows, ``pca:N`` above the number
    of features) can only fail at fit time.
    """
    from sklearn.base import BaseEstimator

    if params is not None and not (isinstance(params, dict) and all(isinstance(k, str) for k in params)):
        raise FeatcacheError(f"parameters for head {name!r} must map names to values, got {params!r}")
    pipe = make_head(name, preprocess, **(params or {}))
    estimators = [pipe] + [v for v in pipe.get_params(deep=True).values() if isinstance(v, BaseEstimator)]
    for est in estimators:
        try:
            est._validate_params()
        except (ValueError, TypeError) as exc:  # sklearn's InvalidParameterError is both
            raise FeatcacheError(f"invalid parameter for head {name!r}: {_first_line(exc)}") from None
    return pipe


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def proba_and_labels(est, X, classes=None):
    """``(predict_proba(X), labels)``, the labels always those of the estimator's own ``predict``.

    ``classes``: every class the probabilities must have a column for, in
    order (e.g. the cache's); a class the head never saw (absent from its
    train split) gets a column of zeros (:func:`widen_proba`).

    For featcache's heads ``predict`` is the argmax of the probabilities save
    where the top two tie (a one-vs-rest head's sigmoids saturate at exactly
    1.0 in float32), so only those rows ask ``predict``, and a k-NN or a forest
    is not run twice. Your own estimator's ``predict`` may disagree with its
    probabilities anywhere (a Platt-scaled ``SVC``): every row asks it.
    """
    proba = np.asarray(est.predict_proba(X))
    clf = est.steps[-1][1] if hasattr(est, "steps") else est
    if not isinstance(clf, _argmax_classifiers()) or proba.ndim != 2 or proba.shape[1] < 2:
        labels = np.asarray(est.predict(X))
    else:
        labels = np.asarray(est.classes_)[proba.argmax(1)]
        top = np.partition(proba, -2, axis=1)[:, -2:]
        tied = np.flatnonzero(top[:, 0] == top[:, 1])
        if len(tied):
            labels[tied] = est.predict(X[tied])
    return (proba if classes is None else widen_proba(proba, est.classes_, classes)), labels


def widen_proba(proba, have, classes) -> np.ndarray:
    """``proba`` over the head's classes ``have`` as columns of every one of ``classes``, zeros for the ones the
    head never saw: a class absent from a train split is a class the head gives no probability, not an error."""
    have, classes = np.asarray(have).tolist(), np.asarray(classes).tolist()
    if have == classes:
        return proba
    column = {c: k for k, c in enumerate(classes)}
    unknown = [c for c in have if c not in column]
    if unknown:
        raise FeatcacheError(f"the head predicts classes {unknown[:5]} that are not among the {len(classes)} expected")
    out = np.zeros((len(proba), len(classes)), dtype=np.result_type(proba.dtype, np.float32))
    out[:, [column[c] for c in have]] = proba
    return out


def absent_classes(y_train, classes) -> list:
    """The classes of ``classes`` with no row in ``y_train``, in order."""
    seen = set(np.asarray(y_train).tolist())
    return [c for c in np.asarray(classes).tolist() if c not in seen]


def _argmax_classifiers() -> tuple:
    """The classifier classes of featcache's heads, whose ``predict`` is the argmax of ``predict_proba``
    wherever it is unique (each turns one score per class into probabilities by a rising function)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    from .keras_head import KerasHeadClassifier
    from .knn_cosine import CosineKNNClassifier

    return (CalibratedClassifierCV, LinearDiscriminantAnalysis, HistGradientBoostingClassifier,
            RandomForestClassifier, LogisticRegression, SGDClassifier, GaussianNB, KNeighborsClassifier,
            MLPClassifier, KerasHeadClassifier, CosineKNNClassifier)


def is_keras(pipe) -> bool:
    from .keras_head import KerasHeadClassifier

    return isinstance(pipe.steps[-1][1], KerasHeadClassifier)
