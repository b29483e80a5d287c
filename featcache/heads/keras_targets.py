"""The Keras dense heads for regression and multi-label targets (docs/TARGETS.md).

Both are :class:`~.keras_head.KerasHeadClassifier`'s network and training
loop (Adam, fixed-order batches, early stopping on the validation loss, views
drawn per epoch) with another output and loss: linear outputs with MSE or
Huber on targets standardised on train, or one sigmoid per label with binary
cross-entropy. A regression head's saved model ends in the targets'
un-standardising (a fixed ``Normalization(invert=True)`` layer), so the model
alone, and its end-to-end export, predicts in the targets' own units.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .keras_head import KerasHeadClassifier

_SHARED = {k: v for k, v in KerasHeadClassifier._parameter_constraints.items() if k != "class_weight"}


def _store(est, hidden, dropout, batch_norm, standardize, epochs, batch_size, learning_rate, validation_fraction,
           patience, random_state, verbose, callbacks) -> None:
    """The shared parameters, stored as given (scikit-learn's ``__init__``); no ``class_weight`` for these kinds."""
    est.hidden, est.dropout, est.batch_norm, est.standardize = hidden, dropout, batch_norm, standardize
    est.epochs, est.batch_size, est.learning_rate = epochs, batch_size, learning_rate
    est.validation_fraction, est.patience, est.random_state = validation_fraction, patience, random_state
    est.verbose, est.callbacks = verbose, callbacks


def _variance(var):
    """A feature constant on train is left unscaled (StandardScaler's rule): a linear output is not bounded as a
    softmax is, and a val row's nonzero value in it divided by ~0 would swamp every prediction."""
    var = np.asarray(var)
    return np.where(var > 1e-8, var, 1.0).astype(var.dtype)


def _reject_streaming(self, *args, **kwargs):
    raise ValueError(f"{type(self).__name__} trains in memory; fit_cache streams classification heads only")


class KerasHeadRegressor(RegressorMixin, KerasHeadClassifier):
    """Dense regression head: ``[Normalization] -> (Dense -> [BatchNorm] -> ReLU -> [Dropout])* -> Dense(linear)``.

    Parameters are :class:`~.keras_head.KerasHeadClassifier`'s (no ``class_weight``), and:

    loss : {"mse", "huber"}
        The training loss on the standardised targets; ``huber`` (delta 1, in standard deviations) is less
        moved by outliers.

    Fitted attributes: ``y_mean_`` and ``y_scale_`` (the train targets' mean and standard deviation, per output),
    ``n_outputs_``, ``model_``, ``history_``, ``n_iter_``. ``predict`` returns shape ``(n,)`` for a 1-D ``y``,
    else ``(n, n_outputs_)``.

    Examples:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(200, 3)).astype("float32")
        >>> reg = KerasHeadRegressor(epochs=30).fit(X, 10 + 5 * X[:, 0])  # doctest: +SKIP
        >>> reg.predict(X[:2]).shape                                      # doctest: +SKIP
        (2,)
    """

    _parameter_constraints: dict = {**_SHARED, "loss": [StrOptions({"mse", "huber"})]}
    _activation, _output_name = None, "values"
    class_weight = None  # not a parameter of these kinds; the shared code reads it
    fit_cache = _reject_streaming
    _variance = staticmethod(_variance)

    def __init__(self, hidden=(), dropout=0.0, batch_norm=False, standardize=True, epochs=100, batch_size="auto",
                 learning_rate=1e-2, validation_fraction=0.1, patience=5, random_state=0, verbose=0, callbacks=None,
                 loss="mse"):
        _store(self, hidden, dropout, batch_norm, standardize, epochs, batch_size, learning_rate,
               validation_fraction, patience, random_state, verbose, callbacks)
        self.loss = loss

    def _n_outputs(self) -> int:
        return self.n_outputs_

    def _keras_loss(self):
        import keras

        return keras.losses.Huber(delta=1.0) if self.loss == "huber" else keras.losses.MeanSquaredError()

    def _fit_targets(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float32, multi_output=True, y_numeric=True, ensure_min_samples=1)
        Y = np.asarray(y, np.float64)
        self._one_output = Y.ndim == 1
        Y = Y.reshape(len(Y), -1)
        self.n_outputs_ = Y.shape[1]
        self.y_mean_ = Y.mean(0)
        scale = Y.std(0)
        self.y_scale_ = np.where(scale > 0, scale, 1.0)  # a constant output: learnt as 0 standard deviations
        return X, self._standardise(Y)

    def _standardise(self, Y):
        return ((np.asarray(Y, np.float64).reshape(len(Y), -1) - self.y_mean_) / self.y_scale_).astype(np.float32)

    def _val_targets(self, yv):
        return np.ones(len(yv), bool), self._standardise(yv)

    def _loss(self, model, take, y, weights):
        total, norm = 0.0, 0.0
        for a in range(0, len(y), 8192):
            idx = np.arange(a, min(a + 8192, len(y)))
            r = np.abs(np.asarray(model.predict_on_batch(take(idx)), np.float64) - y[idx])
            per_row = (np.where(r <= 1.0, 0.5 * r * r, r - 0.5) if self.loss == "huber" else r * r).mean(1)
            w = np.ones(len(idx)) if weights is None else weights[idx]
            total += float((per_row * w).sum())
            norm += float(w.sum())
        return total / max(norm, 1e-12)

    def _final_model(self, model):
        import keras
        from keras import layers

        values = layers.Normalization(mean=self.y_mean_, variance=np.square(self.y_scale_), invert=True,
                                      name="unstandardize")(model.outputs[0])
        return keras.Model(model.inputs, values, name="featcache_head")

    def predict(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        out = [np.asarray(self.model_.predict_on_batch(np.ascontiguousarray(X[a:a + 8192])), np.float64)
               for a in range(0, len(X), 8192)]
        n_out = int(self.model_.outputs[0].shape[-1])
        values = np.concatenate(out) if out else np.zeros((0, n_out))
        return values[:, 0] if getattr(self, "_one_output", n_out == 1) else values

    predict_proba = property()  # a regressor has no probabilities: hasattr(reg, "predict_proba") is False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = "regressor"
        tags.classifier_tags = None
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        return tags


class KerasHeadMultiLabel(KerasHeadClassifier):
    """Dense multi-label head: the same network, one sigmoid per label, binary cross-entropy.

    ``fit`` takes a 0/1 indicator matrix ``y`` ``(n, labels)``; ``classes_`` is ``arange(labels)``;
    ``predict_proba`` gives each label's probability ``(n, labels)`` and ``predict`` thresholds them at 0.5
    (featcache chooses per-label thresholds on the val split instead). Parameters are
    :class:`~.keras_head.KerasHeadClassifier`'s, without ``class_weight``.
    """

    _parameter_constraints: dict = dict(_SHARED)
    _activation, _output_name = "sigmoid", "labels"
    class_weight = None  # not a parameter of these kinds; the shared code reads it
    fit_cache = _reject_streaming
    _variance = staticmethod(_variance)

    def __init__(self, hidden=(), dropout=0.0, batch_norm=False, standardize=True, epochs=100, batch_size="auto",
                 learning_rate=1e-2, validation_fraction=0.1, patience=5, random_state=0, verbose=0, callbacks=None):
        _store(self, hidden, dropout, batch_norm, standardize, epochs, batch_size, learning_rate,
               validation_fraction, patience, random_state, verbose, callbacks)

    def _keras_loss(self):
        return "binary_crossentropy"

    @staticmethod
    def _indicator(y) -> np.ndarray:
        Y = np.asarray(y)
        if Y.ndim != 2 or Y.shape[1] < 1 or not np.isin(Y, (0, 1)).all():
            raise ValueError(f"a multi-label head fits a 0/1 indicator matrix (rows, labels), got shape {Y.shape}")
        return Y.astype(np.float32)

    def _fit_targets(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float32, multi_output=True, ensure_min_samples=1)
        Y = self._indicator(y)
        self.classes_ = np.arange(Y.shape[1])
        return X, Y

    def _val_targets(self, yv):
        return np.ones(len(yv), bool), self._indicator(yv)

    @staticmethod
    def _loss(model, take, y, weights):
        total, norm = 0.0, 0.0
        for a in range(0, len(y), 8192):
            idx = np.arange(a, min(a + 8192, len(y)))
            p = np.clip(np.asarray(model.predict_on_batch(take(idx)), np.float64), 1e-7, 1 - 1e-7)
            bce = -(y[idx] * np.log(p) + (1 - y[idx]) * np.log1p(-p)).mean(1)
            w = np.ones(len(idx)) if weights is None else weights[idx]
            total += float((bce * w).sum())
            norm += float(w.sum())
        return total / max(norm, 1e-12)

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        out = [np.asarray(self.model_.predict_on_batch(np.ascontiguousarray(X[a:a + 8192])), np.float64)
               for a in range(0, len(X), 8192)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes_)))

    def predict(self, X):
        return (self.predict_proba(X) >= 0.5).astype(np.int64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        return tags


#: the estimator class a saved Keras head's card names (model_dir.py rebuilds it from its params)
ESTIMATORS = {c.__name__: c for c in (KerasHeadClassifier, KerasHeadRegressor, KerasHeadMultiLabel)}