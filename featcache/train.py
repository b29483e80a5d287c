"""Stage two: train a head on a cache, measure it on each split, save it.

Reads features through the store (in memory, or streamed shard by shard),
fits a head from :mod:`featcache.heads`, and writes a model directory with
:mod:`featcache.model_dir`. Never touches images or backbones.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FeatcacheError
from .heads import get_head_spec, is_keras, list_heads, proba_and_labels, validate_head
from .heads import views as head_views
from .heads.batches import CacheRows, ViewRows
from .heads.fitting import fit_head, with_views
from .model_dir import check_model_dir_target, feature_params, save_model_dir
from .params import Param, check, defaults, docs
from .splits import TEST_FRACTION, VAL_FRACTION
from .store import Cache, open_cache
from .store import split_masks as store_split_masks

SPLITS = ("train", "val", "test")


@dataclass
class TrainResult:
    """A fitted head, its metrics per split, and where it was saved."""

    estimator: object
    head: str
    metrics: dict
    fit_seconds: float
    classes: list
    class_names: list
    model_dir: Path | None
    card: dict


def train_classes(cache: Cache, masks: dict[str, np.ndarray]) -> np.ndarray:
    """The classes of the train split; an error naming the cache unless there are two or more, all named."""
    labels = cache.labels()
    names = cache.class_names
    outside = np.unique(labels[labels >= len(names)]) if names else np.zeros(0, int)
    if len(outside):  # a card's classes are the cache's: a label past them would become a class named '57'
        raise FeatcacheError(f"{cache.path}: label {int(outside[0])} is outside its {len(names)} class names "
                             f"(labels 0..{len(names) - 1}); the cache is damaged, extract it again")
    classes = np.unique(labels[masks["train"]])
    if len(classes) == 0:
        raise FeatcacheError(f"{cache.path} has no labelled rows in its train split")
    if len(classes) == 1:
        only = cache.class_name(classes[0])
        raise FeatcacheError(f"{cache.path}: the train split holds one class ({only!r}); a classifier needs "
                             "at least two (a folder source needs one sub-folder per class)")
    return classes


#: the store's :func:`~featcache.store.split_masks`, kept here for old imports
split_masks = store_split_masks


def metrics(y_true, proba, classes, pred=None) -> dict:
    """Accuracy, balanced accuracy, macro-F1 and log loss of ``pred`` (default: the argmax of ``proba``)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss

    if len(y_true) == 0:
        return {"n": 0}
    pred = np.asarray(classes)[np.argmax(proba, axis=1)] if pred is None else np.asarray(pred)
    out = {"n": int(len(y_true)), "accuracy": float(accuracy_score(y_true, pred)),
           "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
           "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0))}
    known = np.isin(y_true, classes)
    if known.all() and len(classes) > 1:
        out["log_loss"] = float(log_loss(y_true, np.clip(proba, 1e-15, 1), labels=list(classes)))
    return out


def _shard_blocks(cache: Cache, mask: np.ndarray) -> list[int]:
    return [int(mask[s.rows[0]:s.rows[1]].sum()) for s in cache.shards]


def _predict_stream(pipe, cache: Cache, mask: np.ndarray, output):
    """``(probabilities, labels)`` of the ``mask`` rows, shard by shard."""
    rows = CacheRows(cache, mask, output)
    parts = [proba_and_labels(pipe, block) for _b, block in rows.iter_blocks()]
    if not parts:
        return np.zeros((0, 0)), np.zeros(0)
    return np.concatenate([p for p, _ in parts]), np.concatenate([lab for _, lab in parts])


def _partial_fit_stream(pipe, cache: Cache, mask, y, classes, output, epochs: int, views: int = 0) -> None:
    """``partial_fit`` shard by shard; with ``views``, each view's shards are more blocks of training rows."""
    rows = CacheRows(cache, mask, output)
    sources = [rows] + [ViewRows(rows, v) for v in range(1, views + 1)]
    pre = pipe.steps[:-1]
    clf = pipe.steps[-1][1]
    for name, step in pre:
        if not hasattr(step, "partial_fit"):
            raise FeatcacheError(f"step {name!r} cannot be fitted by streaming; use preprocess='standard' or 'none'")
    for i, (_name, step) in enumerate(pre):  # one pass per preprocessing step
        for source in sources:
            for _b, block in source.iter_blocks():
                for _n, prev in pre[:i]:
                    block = prev.transform(block)
                step.partial_fit(block)
    yrows = y[rows.global_rows]
    rng = np.random.default_rng(0)
    n_blocks = len(rows.block_sizes)
    for _epoch in range(epochs):
        for j in rng.permutation(n_blocks * len(sources)):
            source, b = sources[j // n_blocks], j % n_blocks
            if not rows.block_sizes[b]:
                continue
            block = source.block(b)
            yb = yrows[rows.offsets[b]:rows.offsets[b + 1]]
            for _n, step in pre:
                block = step.transform(block)
            clf.partial_fit(block, yb, classes=classes)


@contextlib.contextmanager
def _head_errors(head: str):
    """Around the head's own fit and predict only: scikit-learn's ValueError or TypeError there means this
    cache does not suit the head (n_neighbors above the rows, LDA with one row per class), a one-line error."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        lines = str(exc).strip().splitlines()
        raise FeatcacheError(f"head {head!r} cannot be trained on this cache: "
                             f"{lines[0] if lines else type(exc).__name__}") from exc


def custom_fields(head: str, pipe) -> dict:
    """What a card says of a user's own estimator: its repr, and whether its probabilities are one-hot."""
    if not head.startswith("custom:"):
        return {}
    from .heads.custom import IndicatorProba, OneHotProba

    clf = pipe.steps[-1][1]
    one_hot = isinstance(clf, (OneHotProba, IndicatorProba))
    if not hasattr(clf, "predict_proba"):  # a regressor: its values are what it predicts
        return {"estimator": repr(clf)}
    return {"estimator": repr(clf.estimator if one_hot else clf),
            "probabilities": "one-hot from predict (the estimator has no predict_proba)" if one_hot else "predict_proba"}


#: every keyword of :func:`train` but the cache, declared once (``featcache train``'s flags come from here)
TRAIN: tuple[Param, ...] = (
    Param("head", "logreg", "head name (featcache heads lists them), or your own classifier as module:Class "
          "(e.g. sklearn.svm:SVC, built with --param)", object, pipeline=False),
    # --param KEY=VALUE is written by hand; a pipeline's [train] params is a table per head
    Param("params", None, "parameters of the head's classifier, e.g. {'C': 0.5}; every one is checked before any "
          "work", dict, cli=False, pipeline=False),
    Param("preprocess", None, "none, standard, pca[:N] or standard+pca[:N] (default: the head's own; none for "
          "your own estimator)", pipeline=False),
    Param("out", None, "model directory to save into (new, empty, or a featcache model directory holding "
          "nothing else; None saves nothing)", Path,
          pipeline=False),
    Param("target", None, "the target to learn (featcache targets CACHE lists them; default: label); rows without "
          "a value are skipped", pipeline=False),
    Param("output", None, "which stored output to train on (default: the first)", pipeline=False),
    Param("stream", False, "never load the whole feature matrix: Keras heads read shard by shard (the same "
          "batches as in memory) and heads with partial_fit (sgd, gaussian_nb, mlp) stream too", bool, pipeline=False),
    Param("val_fraction", VAL_FRACTION, "share of rows without a source split that go to val (hashed by id)", float,
          minimum=0, maximum=1, bounds="[)", pipeline=False),
    Param("test_fraction", TEST_FRACTION, "share of rows without a source split that go to test (hashed by id)",
          float, minimum=0, maximum=1, bounds="[)", pipeline=False),
    Param("stream_epochs", 5, "passes over the cache for streamed partial_fit heads", int, minimum=1, cli=False,
          pipeline=False),
    Param("fit_splits", ("train",), "('train',), or ('train', 'val') to refit a scikit-learn head on train+val once "
          "its settings are chosen (what bench does for its best head; its val metrics are then not held out); Keras "
          "heads early-stop on val, so they fit on train alone",
          object, cli=False, pipeline=False),
    Param("verbose", 0, "Keras heads' progress, as in Model.fit: 0 silent, 1 a progress bar, 2 one line "
          "per epoch (unless params sets verbose)", int, minimum=0, cli=False, pipeline=False),
    Param("views", "auto", "how to train on the cache's augmented views (extract --views): auto (the head's own way, "
          "featcache heads), rows, mean, draw (Keras heads) or none (the plain view only); val and test rows are "
          "always the plain view", choices=head_views.MODES,
          spelling="--use-views", pipeline=False),
    Param("tensorboard", None, "log a Keras head's epochs (train and val loss and accuracy) to this TensorBoard "
          "log directory (needs featcache[tensorboard])", Path, pipeline=False),
)
_D = defaults(TRAIN)


def train(cache, head=_D["head"], *, params: dict | None = None, preprocess: str | None = None, out=None,
          output: str | None = None, stream: bool = _D["stream"], val_fraction: float = _D["val_fraction"],
          test_fraction: float = _D["test_fraction"], stream_epochs: int = _D["stream_epochs"],
          fit_splits=_D["fit_splits"], verbose: int = _D["verbose"], views: str = _D["views"],
          target: str | None = None, tensorboard=None):
    """Fit ``head`` on the train split of ``cache`` and measure it on every split.

    Args:
        cache: a :class:`~featcache.store.Cache` or its directory.
        head: a head name (``featcache heads`` lists them), or your own unfitted scikit-learn
            classifier (``SVC()``, a Pipeline ...): it is cloned, saved as ``custom:ClassName``, and
            one without ``predict_proba`` gets one-hot probabilities from ``predict``.
{settings}

    Returns:
        A :class:`TrainResult`: the fitted scikit-learn Pipeline, metrics per
        split, fit time, classes and their names, the model directory and card.

    Examples:
        >>> result = featcache.train("caches/fm", head="logreg", params={"C": 0.5}, out="models/fm")  # doctest: +SKIP
        >>> result.metrics["test"]["accuracy"]                                                        # doctest: +SKIP
        >>> from sklearn.svm import SVC
        >>> featcache.train("caches/fm", head=SVC(C=2.0), out="models/svc")                          # doctest: +SKIP
    """
    check(TRAIN, dict(params=params, preprocess=preprocess, out=out, output=output, stream=stream,
                      val_fraction=val_fraction, test_fraction=test_fraction, stream_epochs=stream_epochs,
                      verbose=verbose, views=views, target=target, tensorboard=tensorboard))
    fit_splits = _check_fit_splits(fit_splits)
    if target not in (None, "label"):
        cache = cache if isinstance(cache, Cache) else open_cache(cache)
        if cache.target(target).kind != "classification":  # a Keras head's epochs: their loss (no accuracy)
            return _train_target(cache, head, target, params, preprocess, val_fraction, test_fraction, out, views,
                                 tensorboard)
        cache = cache.with_target(target)  # a classification target: every classifier learns it as the labels
    if out is not None:
        check_model_dir_target(out)  # before any work: never train for minutes, then refuse to save
    params = dict(params or {})
    head, pipe, streams, default_preprocess, head_mode = _head_pipeline(head, preprocess, params,
                                                                        getattr(cache, "target_name", target))
    if verbose and is_keras(pipe) and "verbose" not in params:
        pipe.set_params(clf__verbose=int(verbose))
    _log_epochs(head, pipe, tensorboard)
    _check_keras(head, pipe, fit_splits, out, preprocess)
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    output = cache.output_name(output)
    mode = _views_mode(views, head, head_mode, pipe, cache, stream)
    n_views = cache.views if mode != "none" else 0
    labels = cache.labels()
    masks = split_masks(cache, val_fraction=val_fraction, test_fraction=test_fraction)
    classes = train_classes(cache, masks)
    _score_epochs(pipe, cache, output, labels, masks, tensorboard)
    fit_mask = masks["train"] | masks["val"] if "val" in fit_splits else masks["train"]
    X, fit_seconds = _fit(head, pipe, streams, cache, masks, fit_mask, labels, classes, output,
                          stream=stream, stream_epochs=stream_epochs, n_views=n_views, mode=mode)
    return _measured(cache, head, pipe, X, masks, output, out=out, params=params,
                     preprocess=preprocess or default_preprocess, fit_seconds=fit_seconds, streamed=stream,
                     fit_splits=fit_splits, views=(n_views, mode), val_fraction=val_fraction,
                     test_fraction=test_fraction)


def _train_target(cache, head, target, params, preprocess, val_fraction, test_fraction, out,
                  views: str = "auto", tensorboard=None) -> TrainResult:
    """A regression or multi-label head (featcache.train_targets), its card (with ``target``) and model dir."""
    from .train_targets import train_target

    if out is not None:
        check_model_dir_target(out)
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    res = train_target(cache, head, target, params=params, preprocess=preprocess, val_fraction=val_fraction,
                       test_fraction=test_fraction, views=views,
                       prepare=lambda name, pipe: _log_epochs(name, pipe, tensorboard))
    output = cache.output_name(None)
    head = res["head"]  # custom:ClassName for your own estimator
    card = {"head": head, "head_params": dict(res["best_params"]),  # a grid's choice on val included
            "preprocess": preprocess or (get_head_spec(head).preprocess if not head.startswith("custom:") else "none"),
            **custom_fields(head, res["pipe"]),
            "features": features_record(cache, output),
            "target": res["target"], "metrics": res["metrics"], "fit_seconds": round(res["fit_seconds"], 4),
            "fit_splits": ["train"], "splits": {"val_fraction": val_fraction, "test_fraction": test_fraction,
                                                "from_source": cache.splits() is not None,
                                                "rows": res["target"]["rows"]}}
    if res["views"][0]:  # the train rows' views, each with its image's target values
        card["views"] = {"count": res["views"][0], "mode": res["views"][1], "recipe": cache.augment}
    model_dir = save_model_dir(out, res["pipe"], card) if out is not None else None
    names = res["target"]["names"]
    return TrainResult(res["pipe"], head, res["metrics"], res["fit_seconds"], names, names, model_dir, card)


if train.__doc__:  # the settings' help, declared once in TRAIN (absent under python -OO)
    train.__doc__ = train.__doc__.replace("{settings}", docs(TRAIN[1:]))


def _check_fit_splits(fit_splits) -> tuple:
    """``fit_splits`` as a tuple, refusing anything but train or train+val."""
    fit_splits = tuple(fit_splits)
    if fit_splits not in (("train",), ("train", "val")):
        raise FeatcacheError(f"fit_splits must be ('train',) or ('train', 'val'), got {fit_splits!r}")
    return fit_splits


def _fit(head, pipe, streams, cache: Cache, masks, fit_mask, labels, classes, output, *, stream: bool,
         stream_epochs: int, n_views: int, mode: str):
    """Fit ``pipe`` shard by shard or in memory; returns ``(X, seconds)``, X None when streamed."""
    t0 = time.perf_counter()
    X = None
    if stream:
        _fit_streamed(head, pipe, streams, cache, masks, fit_mask, labels, classes, output, stream_epochs, n_views)
    else:
        X = cache.features(output)
        X = X.reshape(len(X), -1).astype(np.float32)
        _fit_in_memory(head, pipe, cache, X, labels, masks, fit_mask, output, n_views, mode)
    return X, time.perf_counter() - t0


def _views_mode(views: str, head: str, head_mode, pipe, cache: Cache, stream: bool) -> str:
    """How this head trains on the cache's augmented views, refusing a mode its pipeline or streaming cannot do."""
    mode = head_views.resolve_mode(views, head_mode, is_keras(pipe), cache.views)
    if mode == "draw" and len(pipe.steps) > 1:
        raise FeatcacheError(f"head {head!r} draws augmented views of the raw features; train it with preprocess "
                             "'none' (it standardises inside the model), or views 'none'")
    if stream and mode == "mean":
        raise FeatcacheError("views 'mean' needs the features in memory; stream with views 'rows' or 'none'")
    return mode


def _head_pipeline(head, preprocess, params: dict, target: str | None = None):
    """``(name, pipeline, streams, default preprocess, views mode)`` of a named head or a user's estimator, every
    parameter checked before any work."""
    if isinstance(head, str):
        spec = get_head_spec(head)
        pipe = validate_head(head, preprocess, params)
        return head, pipe, spec.streams, spec.preprocess, spec.views
    from .heads import preprocess_steps
    from .heads.custom import user_head  # scikit-learn is slow to import: only for your own estimator

    head, pipe = user_head(head, preprocess_steps(preprocess or "none"), params, target=target or "label")
    return head, pipe, hasattr(pipe.steps[-1][1], "partial_fit"), "none", "rows"


def _log_epochs(head: str, pipe, log_dir) -> None:
    """Add a TensorBoard callback to a Keras head (``log_dir`` None: none); a head without epochs (scikit-learn's)
    is a one-line error."""
    if log_dir is None:
        return
    if not is_keras(pipe):
        raise FeatcacheError(f"--tensorboard: only Keras heads have epochs to log; {head!r} is a scikit-learn head")
    try:
        import tensorboard  # noqa: F401  tf.summary's writers live in this package, not in TensorFlow
    except ImportError:
        raise FeatcacheError("train --tensorboard needs TensorBoard: pip install 'featcache[tensorboard]'") from None
    import keras

    clf = pipe.steps[-1][1]
    board = keras.callbacks.TensorBoard(log_dir=os.fspath(log_dir), write_graph=False)  # no graph: a hand loop
    pipe.set_params(clf__callbacks=[*(clf.callbacks or ()), board])


def _score_epochs(pipe, cache: Cache, output: str, labels, masks: dict, log_dir) -> None:
    """Add each epoch's accuracy on the plain train and val rows to the logs the TensorBoard callback writes
    (``epoch_accuracy`` in train/ and validation/, beside ``epoch_loss``, as Keras' own ``fit`` names it);
    ``log_dir`` None: nothing."""
    if log_dir is None:
        return
    import keras

    clf = pipe.steps[-1][1]
    before = pipe[:-1] if len(pipe.steps) > 1 else None  # fitted before the Keras head is
    splits = {key: rows[labels[rows] >= 0] for key, rows in
              (("accuracy", np.flatnonzero(masks["train"])), ("val_accuracy", np.flatnonzero(masks["val"])))}

    class EpochAccuracy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for key, rows in splits.items():
                if len(rows) and logs is not None:  # the same dict the board is given next
                    logs[key] = _accuracy(self.model, clf.classes_, before, cache, output, rows, labels[rows])

    pipe.set_params(clf__callbacks=[EpochAccuracy(), *(clf.callbacks or ())])  # before the board: it writes these


def _accuracy(model, classes, before, cache: Cache, output: str, rows, y, chunk: int = 8192) -> float:
    """The share of ``rows`` whose argmax class is ``y``, read from the cache a chunk at a time (a streamed fit
    never holds them all)."""
    hits = 0
    for a in range(0, len(rows), chunk):
        X = cache.read_rows(rows[a:a + chunk], output).features
        X = X.reshape(len(X), -1).astype(np.float32)
        p = np.asarray(model.predict_on_batch(X if before is None else before.transform(X)))
        hits += int(np.sum(classes[p.argmax(1)] == y[a:a + chunk]))
    return hits / len(rows)


def _check_keras(head: str, pipe, fit_splits, out, preprocess) -> None:
    """What a Keras head refuses: fitting on val (it early-stops there), saving with a preprocessing step."""
    if "val" in fit_splits and is_keras(pipe):
        raise FeatcacheError(f"head {head!r} is a Keras head: it early-stops on the val split, so it fits on train "
                             "alone")
    if out is not None and is_keras(pipe) and len(pipe.steps) > 1:
        raise FeatcacheError(f"head {head!r} is a Keras head: it standardises inside the model and cannot be saved "
                             f"with preprocess {preprocess!r}; use preprocess 'none'")


def _fit_streamed(head, pipe, streams, cache, masks, fit_mask, labels, classes, output, epochs, n_views) -> None:
    """Fit without loading the feature matrix: a Keras head shard by shard, another by ``partial_fit``."""
    if is_keras(pipe):
        with _head_errors(head):
            pipe.steps[-1][1].fit_cache(cache, masks["train"], masks["val"], output, views=n_views)
    elif streams:
        with _head_errors(head):
            _partial_fit_stream(pipe, cache, fit_mask, labels, classes, output, epochs, n_views)
    else:
        streaming = ", ".join(s.name for s in list_heads() if s.streams)
        raise FeatcacheError(f"head {head!r} cannot stream from the cache; heads that can: {streaming}")


def _fit_in_memory(head: str, pipe, cache: Cache, X, labels, masks: dict, fit_mask, output: str, n_views: int, mode: str):
    """Fit ``pipe`` on the ``fit_mask`` rows of ``X`` through the one fitting routine: a Keras head on train,
    early-stopping on val and drawing the views; another on train's rows with their views (val rows plain)."""
    tr = masks["train"]
    train_rows = np.flatnonzero(tr)
    if is_keras(pipe):
        draw = cache.views_of(train_rows, output) if n_views else None
        blocks = _shard_blocks(cache, tr)
        with _head_errors(head):
            return fit_head(pipe, X, labels, train_rows, val=np.flatnonzero(masks["val"]), draw=draw,
                            block_sizes=blocks)
    rows = np.flatnonzero(fit_mask)
    if n_views:  # the train rows' views; val rows (fit_splits with val) stay plain, after them
        V = cache.views_of(train_rows, output).reshape(n_views, len(train_rows), -1)
        X, labels, viewed, _groups = with_views(X, labels, train_rows, V, mode)
        rows = np.concatenate([viewed, np.flatnonzero(fit_mask & ~tr)])
    with _head_errors(head):
        return fit_head(pipe, X, labels, rows)


def save_fitted(cache, head: str, pipe, *, out, params: dict | None = None, fit_splits=("train",),
                views: tuple[int, str] = (0, "none"), fit_seconds: float = 0.0) -> TrainResult:
    """Measure a head fitted elsewhere on every split of ``cache`` and save it as :func:`train` would.

    ``bench`` saves its best head this way: the very estimator its row was
    measured with, fitted in the head's own process, so ``best_model/`` is
    that row's model (with its calibration on val, its out-of-bag fit) and
    nothing is fitted twice.

    Args:
        cache: a :class:`~featcache.store.Cache` or its directory.
        head: the head's name (``custom:ClassName`` for your own estimator).
        pipe: the fitted Pipeline.
        out: the model directory (new, empty, or featcache's).
        params: the parameters it was fitted with, for the card.
        fit_splits: the splits it was fitted on.
        views: ``(K, mode)``: the augmented views it trained on.
        fit_seconds: how long its fit took.
    """
    check_model_dir_target(out)
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    output = cache.output_name(None)
    X = cache.features(output)
    X = X.reshape(len(X), -1).astype(np.float32)
    preprocess = get_head_spec(head).preprocess if not head.startswith("custom:") else "none"
    return _measured(cache, head, pipe, X, split_masks(cache), output, out=out, params=dict(params or {}),
                     preprocess=preprocess, fit_seconds=fit_seconds, fit_splits=tuple(fit_splits), views=views)


def _measured(cache: Cache, head: str, pipe, X, masks: dict, output: str, *, out, params: dict, preprocess: str,
              fit_seconds: float, streamed: bool = False, fit_splits=("train",), views=(0, "none"),
              val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION) -> TrainResult:
    """A fitted head's metrics on every split, its card, and its model directory when ``out`` is given."""
    labels = cache.labels()
    one_hot = custom_fields(head, pipe).get("probabilities", "").startswith("one-hot")
    results = {}
    for split in SPLITS:
        m = masks[split]
        if not m.any():
            continue
        t1 = time.perf_counter()
        with _head_errors(head):
            proba, pred = proba_and_labels(pipe, X[m]) if X is not None else _predict_stream(pipe, cache, m, output)
        res = metrics(labels[m], proba, pipe.classes_, pred)
        if one_hot:
            res.pop("log_loss", None)  # the log loss of one-hot guesses measures nothing
        res["predict_seconds_per_1000"] = (time.perf_counter() - t1) / max(int(m.sum()), 1) * 1000
        results[split] = res
    card = card_for(cache, head, pipe, params=params, preprocess=preprocess, output=output,
                    masks=masks, results=results, fit_seconds=fit_seconds, val_fraction=val_fraction,
                    test_fraction=test_fraction, streamed=streamed, fit_splits=fit_splits)
    n_views, mode = views
    if n_views:
        card["views"] = {"count": n_views, "mode": mode, "recipe": cache.augment}
    class_names = card["class_names"]
    model_dir = save_model_dir(out, pipe, card) if out is not None else None
    return TrainResult(pipe, head, results, fit_seconds, pipe.classes_.tolist(), class_names, model_dir, card)


def card_for(cache: Cache, head: str, pipe, *, params: dict, preprocess: str, output: str, masks: dict,
             results: dict, fit_seconds: float, val_fraction: float, test_fraction: float, streamed: bool = False,
             fit_splits=("train",)) -> dict:
    """The model card of a head fitted on ``cache``: what its features are, its classes, metrics and splits.

    The one description of a card's body that :func:`train` and
    :func:`featcache.finetune.finetune` write (``model_dir`` adds the file,
    its sha256 and the versions when it saves).
    """
    class_names = [cache.class_name(c) for c in pipe.classes_.tolist()]
    own = getattr(cache, "target_name", "label")
    return {
        **({"target": _classification_target(cache)} if own != "label" else {}),
        "head": head, "head_params": {k: v for k, v in params.items()}, "preprocess": preprocess,
        "features": features_record(cache, output),
        **custom_fields(head, pipe),
        "classes": pipe.classes_.tolist(), "class_names": class_names, "metrics": results,
        "fit_seconds": round(fit_seconds, 4), "streamed": bool(streamed), "fit_splits": list(fit_splits),
        "splits": {"val_fraction": val_fraction, "test_fraction": test_fraction,
                   "from_source": cache.splits() is not None, "rows": {s: int(m.sum()) for s, m in masks.items()}},
    }


def _classification_target(cache) -> dict:
    """A card's ``target`` for a classification target other than ``label``: its name, classes and sha256."""
    from .train_targets import target_sha256

    return {"name": cache.target_name, "kind": "classification", "names": cache.class_names,
            "sha256": target_sha256(cache, cache.target_name)}


def features_record(cache, output: str) -> dict:
    """The card's ``features``: what predict and export rebuild the backbone from, and which rows it learnt."""
    info = cache.output_info(output)
    return {"cache_key": cache.key, "rows_key": cache.rows_key, "rows": len(cache),
            "cache_path": os.fspath(cache.path), "output": output,
            "shape": info["shape"], "n_features": int(np.prod(info["shape"])),
            "params": feature_params(cache.params), "input_size": cache.params.get("input_size"),
            "dtype": cache.params.get("dtype"), "backbone_ref": cache.backbone_ref,
            "precision": cache.params.get("precision", "f32"),
            **({"calibration": cache.params["calibration"]} if cache.params.get("calibration") else {})}
