"""Classifier heads by name: scikit-learn models and small Keras dense heads.

Every head is a scikit-learn :class:`~sklearn.pipeline.Pipeline` whose last
step is named ``clf`` (optionally after ``scale`` and ``pca`` steps), so all
heads share one interface: ``fit``, ``predict``, ``predict_proba``, ``score``,
``get_params``/``set_params``, and compose with GridSearchCV and joblib.
"""

from __future__ import annotations

import difflib
import functools
import json

import numpy as np

from ..errors import FeatcacheError
from .spec import HEADS, SELECTIONS, START_SECONDS, HeadSpec, argmax_classifiers, register_head, unregister_head

__all__ = ["HEADS", "SELECTIONS", "START_SECONDS", "HeadSpec", "register_head", "unregister_head", "list_heads",
           "get_head_spec", "make_head", "validate_head", "proba_and_labels", "widen_proba", "absent_classes",
           "parse_value", "preprocess_steps", "is_keras"]


def _sk(name, factory, preprocess, description, prefix="clf__", streams=False, views="rows", **facts):
    return HeadSpec(name, factory, "sklearn", preprocess, description, prefix, streams, views, labels="argmax",
                    **facts)


def _logreg():
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=1.0, max_iter=2000, tol=1e-3)  # tol: as accurate as 1e-4 here, and faster


def _linear_svm():
    # the hinge loss solved in the primal by averaged SGD: one pass is O(rows x features), where liblinear's
    # LinearSVC is far slower per C on this many features (docs/PERFORMANCE.md)
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
    # averaged SGD: 20 averaged epochs reach what more plain ones do not (docs/PERFORMANCE.md)
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
    # no early stopping: stopping on the held-out loss ends while accuracy still climbs; 63 bins cost less and
    # lose nothing measured (docs/PERFORMANCE.md)
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


def _keras_head(**kw):
    from .keras_head import KerasHeadClassifier
    return KerasHeadClassifier(**kw)


def _keras(name, description, cost, **kw):
    # a partial of a module-level function pickles, so a head's process can be handed the spec
    return HeadSpec(name, functools.partial(_keras_head, **kw), "keras", "none", description, streams=True,
                    views="draw", cost_10k=cost, labels="argmax")


#: the linear probe's sweep over a wide log grid, as CLIP's: walked as a warm-started path that stops past the
#: peak, then refined to half decades around it (:func:`featcache.bench.protocol.path`)
_CLIP_C = [10.0 ** e for e in range(-6, 7)]

for _spec in [
    _sk("logreg", _logreg, "standard", "logistic regression (lbfgs)", grid={"C": _CLIP_C}, cost_10k=2.0,
        selection="path", path_param="C"),
    _sk("linear_svm", _linear_svm, "standard", "linear SVM (hinge loss, averaged SGD), calibrated probabilities",
        "clf__estimator__", grid={"alpha": [1e-5, 1e-4, 1e-3]}, row_cap=30_000, cost_10k=8.5,
        selection="calibrated_on_val", threaded=True),
    _sk("ridge", _ridge, "standard", "ridge classifier, calibrated probabilities", "clf__estimator__",
        grid={"alpha": [1e-1, 1.0, 10.0, 100.0, 1000.0]}, row_cap=50_000, cost_10k=3.8,
        selection="calibrated_on_val", one_svd=True),
    _sk("sgd", _sgd, "standard", "SGD logistic regression (averaged)", streams=True,
        grid={"alpha": [1e-5, 1e-4, 1e-3]}, row_cap=30_000, cost_10k=16.0, threaded=True),
    # views as rows would make these K + 1 times slower to fit (forests, boosting) or to predict (k-NN)
    _sk("knn", _knn, "standard", "k-nearest neighbours (k=10, distance-weighted)", views="mean",
        grid={"n_neighbors": [5, 10, 20]}, row_cap=20_000, cost_10k=3.5, threaded=True),
    _sk("knn_cosine", _knn_cosine, "none", "DINOv2's weighted k-NN probe (cosine, votes exp(sim/0.07))",
        views="mean", grid={"n_neighbors": [10, 20, 100, 200]}, cost_10k=2.2),  # DINOv2's k-NN protocol
    _sk("random_forest", _random_forest, "none", "random forest (200 trees)", views="mean", row_cap=20_000,
        cost_10k=14.0, selection="out_of_bag", threaded=True),
    _sk("hist_gb", _hist_gb, "pca:128", "histogram gradient boosting on a PCA to 128 dimensions", views="mean",
        row_cap=20_000, cost_10k=15.5),
    _sk("lda", _lda, "none", "linear discriminant analysis (shrinkage)", cost_10k=1.5),
    _sk("gaussian_nb", _gaussian_nb, "standard", "Gaussian naive Bayes", streams=True, cost_10k=0.4),
    _sk("mlp", _mlp, "standard", "scikit-learn MLP (256)", streams=True, row_cap=50_000, cost_10k=2.4),
    _keras("keras_linear", "Keras softmax regression (Adam, early stopping)", 1.4, hidden=(), learning_rate=1e-2),
    # tuned on Fashion-MNIST rows and checked on scikit-learn's digits against logreg (docs/PERFORMANCE.md)
    _keras("keras_mlp", "Keras MLP 1024, batch norm, dropout 0.5", 8.0, hidden=(1024,), dropout=0.5,
           batch_norm=True, learning_rate=1e-3),
    _keras("classic", "the classic recipe's head: Flatten -> Dense(512, relu) -> Dense(classes, softmax)", 3.9,
           hidden=(512,), standardize=False, learning_rate=1e-3, batch_size=64),
]:
    register_head(_spec)
del _spec

from . import kinds as _kinds  # noqa: E402  (the regression and multi-label builds of the heads above)

_kinds.add_kinds()


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


def make_head(name: str, preprocess: str | None = None, target_kind: str = "classification", **params):
    """A head by name for a target of ``target_kind``, as a Pipeline ending in ``clf``; plain params go to it."""
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    spec = get_head_spec(name)
    prep = preprocess if preprocess is not None else spec.preprocess
    pipe = Pipeline(preprocess_steps(prep) + [("clf", clone(spec.factory(target_kind)()))])
    prefix = spec.prefix(target_kind)
    full = {}
    valid = pipe.get_params(deep=True)
    for k, v in params.items():
        key = k if isinstance(k, str) and "__" in k else prefix + str(k)
        if not isinstance(k, str) or key not in valid:
            plain = [p[len(prefix):] for p in valid
                     if p.startswith(prefix) and "__" not in p[len(prefix):]]
            near = difflib.get_close_matches(str(k), plain, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"it has {', '.join(sorted(plain))}"
            raise FeatcacheError(f"invalid parameter for head {name!r}: {k!r} is not one of its parameters ({hint})")
        full[key] = v
    try:
        pipe.set_params(**full)
    except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: C__x=1 (C has no parameters)
        raise FeatcacheError(f"invalid parameter for head {name!r}: {_first_line(exc)}") from None
    return pipe


def validate_head(name: str, preprocess: str | None = None, params: dict | None = None,
                  target_kind: str = "classification"):
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
    pipe = make_head(name, preprocess, target_kind, **(params or {}))
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
    """The classifier classes whose ``predict`` is the argmax of ``predict_proba`` wherever it is unique: those
    of the heads registered with ``labels="argmax"`` (each turns one score per class into probabilities by a
    rising function)."""
    return argmax_classifiers()


def is_keras(pipe) -> bool:
    from .keras_head import KerasHeadClassifier

    return isinstance(pipe.steps[-1][1], KerasHeadClassifier)
