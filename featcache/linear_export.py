"""A fitted scikit-learn linear head as Keras layers: scaler, PCA and classifier become Dense layers.

:mod:`featcache.model_export` puts these layers after the backbone, so a
``logreg``, ``ridge``, ``lda``, ``linear_svm`` (with its sigmoid calibration)
or ``sgd`` head, and the ``knn_cosine`` probe while its training rows stay
small, ship as one end-to-end ``.keras`` model of Keras' own layers. Each
estimator family has one function reproducing its ``predict_proba`` in float32
(the tests hold them to scikit-learn's to about 1e-5). A head that is no
matrix product (a forest, boosting) is refused in one line naming the
nearest head that exports.
"""

from __future__ import annotations

import numpy as np

from .errors import FeatcacheError

#: the scikit-learn heads that become Keras layers
EXPORTABLE = ("logreg", "ridge", "lda", "linear_svm", "sgd", "knn_cosine")
#: for each head that cannot become layers, the exportable head closest to it
NEAREST = {"random_forest": "logreg", "hist_gb": "logreg", "knn": "knn_cosine", "gaussian_nb": "lda",
           "mlp": "keras_mlp"}
#: the most bytes of training rows knn_cosine may carry into an export (a matrix product over all of them)
KNN_EXPORT_BYTES = 256 * 2**20
#: a bias that sends a sigmoid to exactly 0.0 in float32 (a class a calibration fold never saw)
_NEVER = -1e4


def refusal(head: str, results=None, cache_key: str | None = None) -> str | None:
    """Why the head named ``head`` cannot be exported to Keras layers, in one line; None when it can.

    ``results``: a bench's ``results.jsonl`` (a ``best_model`` directory's
    sibling) whose row of the nearest head on the same cache gives its score.
    """
    if head in EXPORTABLE:
        return None
    near = NEAREST.get(head, "logreg")
    return (f"the {head} head cannot become Keras layers (it is no matrix product); the nearest head that exports "
            f"is {near}{_bench_score(results, near, cache_key)} (train it, e.g. featcache train CACHE --head {near}, "
            "and export that)")


def _bench_score(results, head: str, cache_key: str | None) -> str:
    """`` (test accuracy A, validation V in RESULTS)`` from the same bench's row of ``head``; empty when unknown."""
    import json
    from pathlib import Path

    if results is None or not Path(results).is_file():
        return ""
    rows = []
    for line in Path(results).read_text("utf-8", "replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill mid-write
        if (isinstance(row, dict) and row.get("head") == head and not row.get("baseline")
                and row.get("cache_key") == cache_key and isinstance(row.get("accuracy"), (int, float))):
            rows.append(row)
    if not rows:
        return ""
    best = max(rows, key=lambda r: r.get("val_accuracy") or 0.0)
    val = best.get("val_accuracy")
    return (f" (test accuracy {best['accuracy']:.1%}" + (f", validation {val:.1%}" if val is not None else "")
            + f" in the same bench, {results})")


def probabilities(pipe, x, name: str = "head"):
    """Keras tensor ``x`` (rows of features) through every step of ``pipe``: its ``predict_proba`` as layers."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    for step_name, step in pipe.steps[:-1]:
        if isinstance(step, StandardScaler):
            x = scaler_layers(step, x, f"{name}_{step_name}")
        elif isinstance(step, PCA):
            x = pca_layers(step, x, f"{name}_{step_name}")
        elif step is not None and step != "passthrough":
            raise FeatcacheError(f"the {step_name} step ({type(step).__name__}) cannot become Keras layers; only "
                                 "StandardScaler and PCA steps export")
    return classifier_layers(pipe.steps[-1][1], x, name)


def classifier_layers(clf, x, name: str):
    """The last step's probabilities, by estimator family."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    from .heads.knn_cosine import CosineKNNClassifier

    if isinstance(clf, (LogisticRegression, LinearDiscriminantAnalysis)):
        return softmax_layers(clf, x, name)
    if isinstance(clf, SGDClassifier):
        return one_vs_rest_layers(clf, x, name)
    if isinstance(clf, CalibratedClassifierCV):
        return calibrated_layers(clf, x, name)
    if isinstance(clf, CosineKNNClassifier):
        return knn_cosine_layers(clf, x, name)
    raise FeatcacheError(f"a {type(clf).__name__} cannot become Keras layers; export logreg, ridge, lda, linear_svm, "
                         "sgd, knn_cosine or a Keras head")


def _dense(x, W, b, name: str, activation=None):
    """A Dense layer computing ``x @ W + b``, its weights set from scikit-learn's."""
    import keras

    layer = keras.layers.Dense(W.shape[1], activation=activation, use_bias=b is not None, name=name, dtype="float32")
    y = layer(x)
    layer.set_weights([np.asarray(W, np.float32)] + ([np.asarray(b, np.float32)] if b is not None else []))
    return y


def scaler_layers(scaler, x, name: str):
    """StandardScaler: ``(x - mean) / scale`` as one diagonal Dense layer."""
    d = scaler.n_features_in_
    mean = scaler.mean_ if scaler.with_mean and scaler.mean_ is not None else np.zeros(d)
    scale = scaler.scale_ if scaler.with_std and scaler.scale_ is not None else np.ones(d)
    return _dense(x, np.diag(1.0 / scale), -mean / scale, name)


def pca_layers(pca, x, name: str):
    """PCA: ``(x - mean) @ components.T``, whitened where it was, as one Dense layer."""
    W = pca.components_.T.astype(np.float64)
    if pca.whiten:
        W = W / np.sqrt(pca.explained_variance_)[None, :]
    return _dense(x, W, -pca.mean_ @ W, name)


def _binary(p):
    """``[1 - p, p]`` from the positive class's probability (scikit-learn's two-class convention)."""
    from keras import ops

    return ops.concatenate([1.0 - p, p], axis=-1)


def softmax_layers(clf, x, name: str):
    """Logistic regression (multinomial) and LDA: softmax of the decision; two classes: sigmoid of it."""
    coef, b = np.asarray(clf.coef_), np.asarray(clf.intercept_)
    if len(clf.classes_) == 2:
        return _binary(_dense(x, coef.T, b, f"{name}_decision", "sigmoid"))
    return _dense(x, coef.T, b, f"{name}_decision", "softmax")


def _normalised(p, n_classes: int):
    """Rows of sigmoids scaled to sum to one; a row of zeros is uniform (as scikit-learn does)."""
    from keras import ops

    total = ops.sum(p, axis=-1, keepdims=True)
    return ops.where(total > 0, p / ops.maximum(total, 1e-30), 1.0 / n_classes)


def one_vs_rest_layers(clf, x, name: str):
    """SGD logistic regression: one sigmoid per class, normalised (``_predict_proba_lr``)."""
    if clf.loss != "log_loss":
        raise FeatcacheError(f"an SGDClassifier with loss={clf.loss!r} has no probabilities to export")
    coef, b = np.asarray(clf.coef_), np.asarray(clf.intercept_)
    p = _dense(x, coef.T, b, f"{name}_decision", "sigmoid")
    return _binary(p) if len(clf.classes_) == 2 else _normalised(p, len(clf.classes_))


def calibrated_layers(clf, x, name: str):
    """CalibratedClassifierCV (ridge, linear_svm): the mean over its folds of the sigmoid-calibrated decisions.

    Each fold's calibration ``sigmoid(-(a z + b))`` of the decision
    ``z = x w + c`` is folded into that fold's Dense weights.
    """
    from keras import ops

    n_classes = len(clf.classes_)
    folds = []
    for k, cc in enumerate(clf.calibrated_classifiers_):
        if cc.method != "sigmoid":
            raise FeatcacheError(f"a {cc.method} calibration cannot become Keras layers; only sigmoid exports")
        est = cc.estimator
        coef, c = np.atleast_2d(est.coef_), np.atleast_1d(est.intercept_)
        a = np.array([cal.a_ for cal in cc.calibrators])
        b = np.array([cal.b_ for cal in cc.calibrators])
        W, bias = coef.T * -a[None, :], -(a * c + b)
        if n_classes == 2:
            folds.append(_binary(_dense(x, W, bias, f"{name}_fold{k}", "sigmoid")))
            continue
        cols = np.searchsorted(clf.classes_, est.classes_)  # a class this fold never saw keeps probability 0
        full_W, full_b = np.zeros((W.shape[0], n_classes)), np.full(n_classes, _NEVER)
        full_W[:, cols], full_b[cols] = W, bias
        folds.append(_normalised(_dense(x, full_W, full_b, f"{name}_fold{k}", "sigmoid"), n_classes))
    return folds[0] if len(folds) == 1 else ops.mean(ops.stack(folds, axis=0), axis=0)


def knn_cosine_layers(clf, x, name: str):
    """DINOv2's weighted k-NN as layers: cosine similarity to every stored training row (one Dense), top k,
    votes ``exp(sim / T)`` gathered by an Embedding of the rows' one-hot classes."""
    import keras
    from keras import ops

    train = np.asarray(clf.X_train_, np.float32)
    if train.nbytes > KNN_EXPORT_BYTES:
        raise FeatcacheError(f"knn_cosine keeps {len(train)} training rows ({train.nbytes / 2**20:.0f} MiB): too many "
                             f"to carry in a model (at most {KNN_EXPORT_BYTES // 2**20} MiB); export logreg instead")
    n_classes = len(clf.classes_)
    k = min(clf.n_neighbors, len(train))
    x = x / ops.maximum(ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True)), 1e-30)  # a zero row stays zero
    sim = _dense(x, train.T, None, f"{name}_similarity")
    s, top = ops.top_k(sim, k)
    w = ops.exp((s - ops.max(s, axis=-1, keepdims=True)) / clf.temperature)
    onehot = keras.layers.Embedding(len(train), n_classes, name=f"{name}_classes", dtype="float32")
    votes = onehot(top)
    onehot.set_weights([np.eye(n_classes, dtype=np.float32)[clf.y_train_]])
    votes = ops.sum(votes * ops.expand_dims(w, -1), axis=1)
    return votes / ops.sum(votes, axis=-1, keepdims=True)


#: the regression and multi-label heads that become Keras layers (a target's card, train --target)
TARGET_EXPORTABLE = {"regression": ("ridge", "sgd", "keras_linear", "keras_mlp"),
                     "multilabel": ("logreg", "keras_linear", "keras_mlp")}  # Keras heads: their own model


def target_refusal(head: str, kind: str) -> str | None:
    """Why a ``kind`` head named ``head`` cannot become Keras layers, in one line; None when it can."""
    if head in TARGET_EXPORTABLE.get(kind, ()):
        return None
    return (f"the {head} head of a {kind} target cannot become Keras layers (it is no matrix product); heads "
            f"that export for {kind}: {', '.join(TARGET_EXPORTABLE.get(kind, ())) or 'none'}")


def target_outputs(pipe, x, kind: str, name: str = "head"):
    """Keras tensor ``x`` through ``pipe``: a regression head's values (linear Dense) or a one-vs-rest
    multi-label head's per-label probabilities (one sigmoid per label)."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    for step_name, step in pipe.steps[:-1]:
        if isinstance(step, StandardScaler):
            x = scaler_layers(step, x, f"{name}_{step_name}")
        elif isinstance(step, PCA):
            x = pca_layers(step, x, f"{name}_{step_name}")
        elif step is not None and step != "passthrough":
            raise FeatcacheError(f"the {step_name} step ({type(step).__name__}) cannot become Keras layers; only "
                                 "StandardScaler and PCA steps export")
    clf = pipe.steps[-1][1]
    if kind == "regression":
        if not hasattr(clf, "coef_"):
            raise FeatcacheError(f"a {type(clf).__name__} cannot become Keras layers; export ridge or sgd")
        coef = np.atleast_2d(np.asarray(clf.coef_, np.float64))  # (outputs, features)
        b = np.broadcast_to(np.asarray(clf.intercept_, np.float64), (coef.shape[0],))
        return _dense(x, coef.T, b, f"{name}_values")
    return _sigmoid_per_label(clf, x, name)


def _sigmoid_per_label(clf, x, name: str):
    """OneVsRestClassifier on an indicator matrix: each label's logistic regression as one sigmoid column; a
    label train never varied (scikit-learn's constant predictor) is its constant probability."""
    estimators = getattr(clf, "estimators_", None)
    if estimators is None:
        raise FeatcacheError(f"a {type(clf).__name__} cannot become Keras layers; export logreg")
    d = clf.n_features_in_
    W, b = np.zeros((d, len(estimators))), np.zeros(len(estimators))
    for k, est in enumerate(estimators):
        if hasattr(est, "coef_"):
            W[:, k], b[k] = np.ravel(est.coef_), np.ravel(est.intercept_)[0]
        else:  # sklearn.multiclass._ConstantPredictor: its one value, as a logit
            p = float(np.clip(np.ravel(est.y_)[0], 1e-7, 1 - 1e-7))
            b[k] = np.log(p / (1 - p))
    return _dense(x, W, b, f"{name}_labels", "sigmoid")
