"""Small Keras dense heads as a scikit-learn classifier.

``KerasHeadClassifier`` follows scikit-learn's conventions (``__init__`` only
stores parameters, learned attributes end in ``_``) and passes its estimator
checks, so it composes with Pipeline, GridSearchCV and joblib. It trains with
Adam and early stopping on a validation split, optionally with class weights,
standardisation inside the model (so an exported model needs nothing else),
and can stream its training rows from a cache larger than RAM.
"""

from __future__ import annotations

import io
import os
import tempfile
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import batches as _batches
from . import views as _views


class KerasHeadClassifier(ClassifierMixin, BaseEstimator):
    """Dense softmax head: ``[Normalization] -> (Dense -> [BatchNorm] -> ReLU -> [Dropout])* -> Dense(softmax)``.

    Parameters
    ----------
    hidden : tuple of int, or int
        Sizes of the hidden layers; ``()`` is a linear (softmax regression)
        head and an int ``n`` means one hidden layer, ``(n,)``.
    dropout : float
        Dropout after each hidden layer.
    batch_norm : bool
        Batch normalisation after each hidden Dense layer.
    standardize : bool
        Standardise inputs with the training mean and variance, inside the model.
    epochs, learning_rate : training schedule (Adam).
    batch_size : int or "auto"
        Rows per step; ``"auto"`` takes about 1/50 of the training rows,
        rounded to a power of two between 16 and 256 (128 for 6,700 rows):
        large enough that a step's matrix products, not Python, dominate it,
        and small enough for tens of updates an epoch.
    validation_fraction : float
        Share of the training rows held out for early stopping when no
        ``validation_data`` is given (none below 20 rows).
    patience : int
        Early-stopping patience in epochs, on validation loss; best weights are restored.
    class_weight : None or "balanced"
    random_state : int
        Seeds weight initialisation, dropout and batch order; every seed is
        derived from it, nothing process-wide is seeded.
    verbose : int
        Keras' fit verbosity: 0 silent, 1 a progress bar per epoch, 2 one line
        per epoch (loss and val_loss).
    callbacks : list of keras.callbacks.Callback, or None
        Called as in ``Model.fit`` (``on_epoch_end`` gets ``loss`` and
        ``val_loss``), e.g. ``CSVLogger`` or ``TensorBoard``; a callback that
        sets ``model.stop_training`` (``EarlyStopping``) stops the run.
    """

    #: scikit-learn's declared constraints, checked by ``_validate_params`` (at fit, and by
    #: ``featcache.heads.validate_head`` before any work)
    _parameter_constraints: dict = {
        "hidden": ["array-like", Interval(Integral, 1, None, closed="left"), None],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "batch_norm": ["boolean"],
        "standardize": ["boolean"],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "patience": [Interval(Integral, 0, None, closed="left")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "random_state": [Interval(Integral, 0, 2**32 - 1, closed="both")],
        "verbose": ["verbose"],
        "callbacks": [list, tuple, None],
    }

    def __init__(self, hidden=(), dropout=0.0, batch_norm=False, standardize=True, epochs=100, batch_size="auto",
                 learning_rate=1e-2, validation_fraction=0.1, patience=5, class_weight=None, random_state=0,
                 verbose=0, callbacks=None):
        self.hidden = hidden
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.standardize = standardize
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.class_weight = class_weight
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    # ------------------------------------------------------------------ model

    #: the output layer's activation and name (the regression and multi-label heads change them: keras_targets.py)
    _activation, _output_name = "softmax", "probabilities"

    def _build(self, n_features, n_classes, mean, var):
        import keras
        from keras import layers

        inputs = keras.Input((n_features,), name="features")
        x = inputs
        if self.standardize:
            x = layers.Normalization(mean=mean, variance=self._variance(var), name="standardize")(x)
        seed = int(self.random_state)
        init = keras.initializers.GlorotUniform
        for i, units in enumerate(self._hidden_sizes()):
            x = layers.Dense(units, use_bias=not self.batch_norm, kernel_initializer=init(seed=seed + 101 * i),
                             name=f"dense_{i}")(x)
            if self.batch_norm:
                x = layers.BatchNormalization(name=f"bn_{i}")(x)
            x = layers.ReLU(name=f"relu_{i}")(x)
            if self.dropout:
                x = layers.Dropout(float(self.dropout), seed=seed + 101 * i + 1, name=f"dropout_{i}")(x)
        outputs = layers.Dense(n_classes, activation=self._activation, kernel_initializer=init(seed=seed + 7),
                               name=self._output_name)(x)
        return keras.Model(inputs, outputs, name="featcache_head")

    @staticmethod
    def _variance(var):
        """The standardisation's variance: a feature constant on train is divided by ~0 (softmax bounds it)."""
        return np.maximum(var, 1e-12)

    def _validate_params(self):
        """The declared constraints, then what they cannot say: every hidden size a positive integer."""
        super()._validate_params()
        self._hidden_sizes()

    def _hidden_sizes(self) -> tuple[int, ...]:
        """``hidden`` as a tuple of layer sizes: an int ``n`` is one layer, ``(n,)``; None is none.

        Normalised here, at fit time, because scikit-learn's ``__init__`` must
        store the parameter as given.
        """
        hidden = self.hidden
        if hidden is None:
            return ()
        sizes = (hidden,) if isinstance(hidden, Integral) else tuple(hidden)
        if not all(isinstance(h, Integral) and not isinstance(h, bool) and h >= 1 for h in sizes):
            raise InvalidParameterError(f"The 'hidden' parameter of {type(self).__name__} must be an int >= 1 or "
                                        f"a sequence of them. Got {hidden!r} instead.")
        return tuple(int(h) for h in sizes)

    def _class_weights(self, y_enc):
        if getattr(self, "class_weight", None) is None:
            return None
        n_classes = len(self.classes_)
        if self.class_weight == "balanced":
            present = np.unique(y_enc)
            w = compute_class_weight("balanced", classes=present, y=y_enc)
            out = {int(c): 1.0 for c in range(n_classes)}
            out.update({int(c): float(v) for c, v in zip(present, w)})
            return out
        return {int(np.searchsorted(self.classes_, k)): float(v) for k, v in self.class_weight.items()}

    def _train(self, n_features, mean, var, take, y_enc, block_sizes, val, sample_weight=None, draw=None):
        """The training loop: Adam on fixed-order batches, early stopping on validation loss.

        ``take(idx)`` returns training feature rows; ``val`` is None or
        ``(take_val, y_val, weights_val)``; ``sample_weight`` (per training
        row) multiplies the class weights, which weigh the validation loss
        too; ``draw(epoch)``, when given, returns that epoch's ``take``
        (augmented views, :func:`featcache.heads.views.drawing`). A hand loop
        over ``train_on_batch`` keeps per-epoch overhead near zero on small
        caches and gives the in-memory and streamed paths the very same
        batches; Keras callbacks
        (and, with ``verbose``, Keras' own progress logger) see it as a ``fit``.
        """
        import keras

        model = self._build(n_features, self._n_outputs(), mean, var)
        model.compile(optimizer=keras.optimizers.Adam(float(self.learning_rate)), loss=self._keras_loss())
        sw, val = self._loss_weights(y_enc, sample_weight, val)
        history = {"loss": []} if val is None else {"loss": [], "val_loss": []}
        best, best_weights, wait = np.inf, None, 0
        bs = self._batch_size(len(y_enc))
        steps = -(-len(y_enc) // bs)
        callbacks = keras.callbacks.CallbackList(list(self.callbacks or ()), add_history=False,
                                                 add_progbar=bool(self.verbose), model=model,
                                                 verbose=int(self.verbose), epochs=int(self.epochs), steps=steps)
        model.stop_training = False
        callbacks.on_train_begin()
        for epoch in range(int(self.epochs)):
            callbacks.on_epoch_begin(epoch)
            order = _batches.epoch_order(block_sizes, int(self.random_state), epoch)
            take_epoch = take if draw is None else draw(epoch)
            history["loss"].append(self._epoch(model, callbacks, take_epoch, y_enc, order, bs, sw))
            if val is not None:
                history["val_loss"].append(self._loss(model, *val))
            callbacks.on_epoch_end(epoch, {k: v[-1] for k, v in history.items()})
            current = history["val_loss" if val is not None else "loss"][-1]
            if current < best - 1e-6:
                best, wait = current, 0
                best_weights = model.get_weights()
            else:
                wait += 1
                if wait >= int(self.patience):
                    break
            if model.stop_training:
                break
        callbacks.on_train_end({k: v[-1] for k, v in history.items() if v})
        if best_weights is not None:
            model.set_weights(best_weights)
        self.model_ = self._final_model(model)
        self.history_ = history
        self.n_iter_ = len(history["loss"])
        return self

    def _loss_weights(self, y_enc, sample_weight, val):
        """Each training row's loss weight (class weight times ``sample_weight``), and ``val`` class-weighted too."""
        cw = self._class_weights(y_enc)
        sw = None if cw is None else np.array([cw[int(c)] for c in y_enc], np.float32)
        if sample_weight is not None:
            sw = np.asarray(sample_weight, np.float32) * (1.0 if sw is None else sw)
        if val is not None and cw is not None:  # early stopping watches the objective being fitted
            take_val, y_val, w_val = val
            cw_val = np.array([cw[int(c)] for c in y_val], np.float64)
            val = (take_val, y_val, cw_val if w_val is None else cw_val * w_val)
        return sw, val

    @staticmethod
    def _epoch(model, callbacks, take, y_enc, order, bs, sw) -> float:
        """One epoch of ``train_on_batch`` over the batches of ``order``; returns the mean training loss."""
        total = 0.0
        for step, (Xb, yb, wb) in enumerate(_batches.batches_in_order(take, y_enc, order, bs, sw)):
            callbacks.on_train_batch_begin(step)
            loss = float(np.asarray(model.train_on_batch(Xb, yb, sample_weight=wb)).reshape(-1)[0])
            total += loss * len(yb)
            callbacks.on_train_batch_end(step, {"loss": loss})
        return total / max(len(order), 1)

    def _n_outputs(self) -> int:
        return len(self.classes_)

    def _keras_loss(self):
        """What ``train_on_batch`` minimises; :meth:`_loss` is the same loss on the validation rows."""
        return "sparse_categorical_crossentropy"

    def _final_model(self, model):
        """The model kept as ``model_`` once trained (a regression head appends its targets' un-standardising)."""
        return model

    def _fit_targets(self, X, y):
        """``(X, y_enc)``: the training rows checked, ``y`` encoded as the loss reads it; sets ``classes_``."""
        X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=1)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        return X, y_enc.astype(np.int64)

    def _val_targets(self, yv):
        """``(rows kept, their y encoded)`` of the validation rows: a class train never saw is left out."""
        known = np.isin(yv, self.classes_)
        return known, np.searchsorted(self.classes_, yv[known]).astype(np.int64)

    def _batch_size(self, n_rows: int) -> int:
        if self.batch_size == "auto":
            return int(2 ** np.clip(np.round(np.log2(max(n_rows, 1) / 50)), 4, 8))
        return int(self.batch_size)

    @staticmethod
    def _loss(model, take, y, weights):
        total, norm = 0.0, 0.0
        for a in range(0, len(y), 8192):
            idx = np.arange(a, min(a + 8192, len(y)))
            p = np.asarray(model.predict_on_batch(take(idx)), np.float64)
            nll = -np.log(np.clip(p[np.arange(len(idx)), y[idx]], 1e-12, None))
            w = np.ones(len(idx)) if weights is None else weights[idx]
            total += float((nll * w).sum())
            norm += float(w.sum())
        return total / max(norm, 1e-12)

    # ------------------------------------------------------------------ sklearn API

    def fit(self, X, y, sample_weight=None, validation_data=None, block_sizes=None, views=None):
        """Fit on arrays. ``validation_data=(X_val, y_val)`` drives early stopping when given.

        ``sample_weight`` weighs each training row's loss (times its class
        weight, when ``class_weight`` is set). ``views``, an array ``(K, len(X),
        n_features)`` of augmented views of each row (``Cache.views_of``),
        makes each epoch show every image once, as its plain row or one of its
        K views, drawn with ``random_state`` and the epoch.
        """
        self._validate_params()
        X, y_enc = self._fit_targets(X, y)
        sw = None if sample_weight is None else _check_sample_weight(sample_weight, X, dtype=np.float32)
        X = np.ascontiguousarray(X, dtype=np.float32)
        if views is not None:
            views = np.asarray(views)
            views = views.reshape((views.shape[0], views.shape[1], -1)) if views.ndim > 2 else views
            if views.ndim != 3 or views.shape[1:] != X.shape:
                raise ValueError(f"views must have shape (K, {X.shape[0]}, {X.shape[1]}), got {views.shape}")
        val = None
        if validation_data is not None:
            Xv = validate_data(self, validation_data[0], dtype=np.float32, reset=False)
            known, yv_enc = self._val_targets(np.asarray(validation_data[1]))
            if known.any():
                val = (np.ascontiguousarray(Xv[known]), yv_enc, None)
        elif self.validation_fraction and len(X) >= 20:
            rng = np.random.default_rng(int(self.random_state))
            perm = rng.permutation(len(X))
            n_val = max(1, int(round(len(X) * float(self.validation_fraction))))
            vi, ti = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            val = (X[vi], y_enc[vi], None if sw is None else sw[vi])
            X, y_enc = X[ti], y_enc[ti]
            views = None if views is None else views[:, ti]
            sw = None if sw is None else sw[ti]
            block_sizes = None  # the split breaks block boundaries
        mean, var = _mean_var(X, views)
        sizes = list(block_sizes) if block_sizes is not None else [len(X)]
        if sum(sizes) != len(X):
            raise ValueError(f"block_sizes add up to {sum(sizes)}, X has {len(X)} rows")
        val_spec = None if val is None else ((lambda idx, Xv=val[0]: Xv[idx]), val[1], val[2])
        draw = None
        if views is not None and len(views):
            draw = _views.drawing(lambda idx: X[idx], [lambda idx, V=V: V[idx].astype(np.float32) for V in views],
                                  int(self.random_state), len(X))
        return self._train(X.shape[1], mean, var, lambda idx: X[idx], y_enc, sizes, val_spec, sw, draw)

    def fit_cache(self, cache, train_mask, val_mask=None, output=None, views=0):
        """Fit on the rows of ``cache`` selected by ``train_mask``, streaming shard by shard.

        Uses the same batches as :meth:`fit` on those rows with
        ``block_sizes`` = rows per shard, so both give the same model. With
        ``views`` (how many of the cache's augmented views to draw from), each
        epoch shows every image once, as in :meth:`fit`, and memory holds one
        shard of each view.
        """
        self._validate_params()
        labels = cache.labels()
        rows = _batches.CacheRows(cache, np.asarray(train_mask, bool), output)
        y = labels[rows.global_rows]
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        y_enc = y_enc.astype(np.int64)
        n_features = int(np.prod(cache.output_info(rows.output)["shape"]))
        self.n_features_in_ = n_features
        total, total_sq, n = np.zeros(n_features), np.zeros(n_features), 0
        shown = [rows] + [_batches.ViewRows(rows, v) for v in range(1, int(views) + 1)]
        for source in shown:  # one pass for the standardisation statistics, over the views too (as in fit)
            for _b, block in source.iter_blocks():
                total += block.sum(0, dtype=np.float64)
                total_sq += np.square(block, dtype=np.float64).sum(0)
                n += len(block)
        mean = (total / max(n, 1)).astype(np.float32)
        var = np.maximum(total_sq / max(n, 1) - np.square(mean, dtype=np.float64), 0).astype(np.float32)
        val = None
        if val_mask is not None and np.asarray(val_mask).any():
            vrows = _batches.CacheRows(cache, np.asarray(val_mask, bool), output)
            yv = labels[vrows.global_rows]
            known = np.isin(yv, self.classes_)
            yv_enc = np.searchsorted(self.classes_, np.where(known, yv, self.classes_[0])).astype(np.int64)
            val = (vrows.take, yv_enc, None if known.all() else known.astype(np.float64))
        draw = None
        if views:
            draw = _views.drawing(rows.take, [v.take for v in shown[1:]], int(self.random_state), len(y_enc))
        return self._train(n_features, mean, var, rows.take, y_enc, rows.block_sizes, val, draw=draw)

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        out = []
        for a in range(0, len(X), 8192):
            out.append(np.asarray(self.model_.predict_on_batch(np.ascontiguousarray(X[a:a + 8192]))))
        proba = np.concatenate(out).astype(np.float64) if out else np.zeros((0, len(self.classes_)))
        return proba / np.maximum(proba.sum(axis=1, keepdims=True), 1e-300)  # float32 softmax, renormalised

    def predict(self, X):
        check_is_fitted(self, "model_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.allow_nan = False
        return tags

    # ------------------------------------------------------------------ pickling

    def __getstate__(self):
        state = self.__dict__.copy()
        state["callbacks"] = None  # callbacks hold files and models of their own run: not part of the head
        model = state.pop("model_", None)
        if model is not None:
            state["_model_bytes"] = model_to_bytes(model)
        return state

    def __setstate__(self, state):
        data = state.pop("_model_bytes", None)
        self.__dict__.update(state)
        if data is not None:
            self.model_ = model_from_bytes(data)


def _mean_var(X, views):
    """The standardisation statistics over what training shows: the plain rows and their views, if any.

    Over the views too: a feature the plain rows never use but a view does would otherwise be divided by ~0.
    """
    if views is None or not len(views):
        return X.mean(0), X.var(0)
    total, total_sq = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for rows in [X, *views]:
        for a in range(0, len(rows), 4096):  # in float64, a block at a time
            block = rows[a:a + 4096].astype(np.float64)
            total += block.sum(0)
            total_sq += np.square(block).sum(0)
    n_all = len(X) * (1 + len(views))
    mean = (total / n_all).astype(np.float32)
    var = np.maximum(total_sq / n_all - np.square(total / n_all), 0).astype(np.float32)
    return mean, var


def model_to_bytes(model) -> bytes:
    fd, path = tempfile.mkstemp(suffix=".keras")
    os.close(fd)
    try:
        model.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def model_from_bytes(data: bytes):
    import keras

    fd, path = tempfile.mkstemp(suffix=".keras")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(io.BytesIO(data).getbuffer())
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    finally:
        os.unlink(path)
