"""The regression and multi-label builds of the registered heads, declared once per head.

Each factory returns the unfitted ``clf`` step for that kind; :func:`add_kinds`
writes them into the heads' specs, so ``HeadSpec.factory(kind)`` is the one
place a head is built for a target kind.
"""

from __future__ import annotations

import dataclasses
import functools

from .spec import HEADS, register_head

RIDGE_ALPHAS = (1e-1, 1.0, 10.0, 100.0, 1000.0)


def _ridge_reg():
    from sklearn.linear_model import RidgeCV
    # RidgeCV's efficient leave-one-out: every alpha from one SVD; multi-output natively
    return RidgeCV(alphas=RIDGE_ALPHAS)


def _sgd_reg():
    from sklearn.linear_model import SGDRegressor
    return SGDRegressor(alpha=1e-4, average=True, max_iter=20, tol=1e-3, random_state=0)


def _linear_svr():
    from sklearn.svm import LinearSVR
    # the squared epsilon-insensitive loss solved in the primal: liblinear's fast path with more rows than features
    return LinearSVR(C=1.0, epsilon=0.0, loss="squared_epsilon_insensitive", dual=False, max_iter=2000, tol=1e-4)


def _knn_reg():
    from sklearn.neighbors import KNeighborsRegressor
    return KNeighborsRegressor(n_neighbors=10, weights="distance")


def _forest_reg():
    from sklearn.ensemble import RandomForestRegressor
    return RandomForestRegressor(n_estimators=200, random_state=0)


def _hist_gb_reg():
    from sklearn.ensemble import HistGradientBoostingRegressor
    return HistGradientBoostingRegressor(max_iter=300, max_bins=63, early_stopping=False, random_state=0)


def _mlp_reg():
    from sklearn.neural_network import MLPRegressor
    return MLPRegressor(hidden_layer_sizes=(256,), max_iter=200, random_state=0)


def _logreg_ovr():
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    return OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=2000, tol=1e-3))


def _knn_multilabel():
    from sklearn.neighbors import KNeighborsClassifier
    # a 0/1 indicator matrix fit: predict_proba per label is the neighbours' label frequency
    return KNeighborsClassifier(n_neighbors=10, weights="distance")


def _knn_cosine_reg():
    from .knn_cosine import CosineKNNRegressor
    return CosineKNNRegressor(n_neighbors=20, temperature=0.07)


def _knn_cosine_multilabel():
    from .knn_cosine import CosineKNNMultiLabel
    return CosineKNNMultiLabel(n_neighbors=20, temperature=0.07)


def _keras_reg(**kw):
    from .keras_targets import KerasHeadRegressor
    return KerasHeadRegressor(**kw)


def _keras_multilabel(**kw):
    from .keras_targets import KerasHeadMultiLabel
    return KerasHeadMultiLabel(**kw)


def _keras_builds(name: str) -> dict:
    """A Keras head's regression and multi-label builds: its classification network's settings, another output."""
    kw = {k: v for k, v in HEADS[name].make.keywords.items() if k != "class_weight"}
    # partials of module-level functions pickle, so a head's process can be handed the spec
    return {"regression": functools.partial(_keras_reg, **kw), "multilabel": functools.partial(_keras_multilabel, **kw)}


#: head name -> {kind: factory}
BUILDS = {
    "ridge": {"regression": _ridge_reg},
    "sgd": {"regression": _sgd_reg},
    "linear_svm": {"regression": _linear_svr},  # LinearSVR: the regression SVM under the classifier's name
    "knn": {"regression": _knn_reg, "multilabel": _knn_multilabel},
    "random_forest": {"regression": _forest_reg},
    "hist_gb": {"regression": _hist_gb_reg},
    "mlp": {"regression": _mlp_reg},
    "logreg": {"multilabel": _logreg_ovr},
    "knn_cosine": {"regression": _knn_cosine_reg, "multilabel": _knn_cosine_multilabel},
}
#: the Keras heads that serve regression (MSE, or loss="huber") and multi-label (sigmoid, binary cross-entropy)
KERAS_KINDS = ("keras_linear", "keras_mlp")


#: head -> {kind: {param: values}} chosen on the val split by the kind's metric (train_targets.py); measured on
#: Lite0 mosaics (docs/PERFORMANCE.md): C=1 overfits 1,280 standardised features, C=0.01 to 0.1 wins on val
GRIDS = {"logreg": {"multilabel": {"C": (0.01, 0.1, 1.0)}},
         "linear_svm": {"regression": {"C": (0.01, 0.1, 1.0)}},  # LinearSVR's C, as logreg's, on val R²
         # DINOv2's k grid, less 200: a few thousand train rows rarely have 200 neighbours worth a vote
         "knn_cosine": {"regression": {"n_neighbors": (10, 20, 100)}, "multilabel": {"n_neighbors": (10, 20, 100)}}}


def add_kinds() -> None:
    """Give each built-in head in :data:`BUILDS` its other kinds (re-registering its spec)."""
    for name, builds in [*BUILDS.items(), *((n, _keras_builds(n)) for n in KERAS_KINDS)]:
        spec = HEADS[name]
        prefixes = {"multilabel": "clf__estimator__"} if name == "logreg" else None  # inside one-vs-rest
        register_head(dataclasses.replace(spec, kinds=("classification", *builds), builds=dict(builds),
                                          build_prefixes=prefixes), replace=True)


def heads_for(kind: str) -> list[str]:
    """The registered heads that serve targets of ``kind``."""
    return [n for n, s in HEADS.items() if kind in s.kinds]
