"""Benchmark many heads on one or more caches with an honest protocol.

Protocol: hyper-parameters are chosen on the validation split (or by K-fold
cross-validation inside the training split with ``cv=K``); the chosen
setting is refit on train+val and the test split is touched once. Linear
heads sweep their regularisation on a log grid, as linear probes do. Keras
heads early-stop on the validation split and are evaluated once.

Each (cache, head) runs in its own fresh Python process (so a crash or a
runaway head cannot take the run down, and a script without a ``__main__``
guard works), at most ``n_jobs`` at a time through joblib, with a per-head
time budget after which the process is killed and the row says "timed out".
Rows are appended to ``results.jsonl`` as they finish, so an interrupted run
keeps what it did and a re-run skips finished rows for the same cache key and
settings; it retries a timed-out row under a larger budget and a failed one
when the code changed (:func:`retry_reason`). Every row carries 95% bootstrap
intervals on its test accuracy and macro-F1 and its own peak memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import resource
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FeatcacheError, check_integer, is_integer
from .model_dir import current_card
from .store import Cache, canonical_json, open_cache
from .versions import HEAD_PACKAGES, versions

#: the regularisation sweeps and small grids, chosen on the validation split
GRIDS = {
    # the linear probe's sweep over a wide log grid, as CLIP's (1e-6 to 1e6): walked as a warm-started path that
    # stops two points past the peak, then refined to half decades around it (:func:`_path`)
    "logreg": {"C": [10.0 ** e for e in range(-6, 7)]},
    "linear_svm": {"alpha": [1e-5, 1e-4, 1e-3]},
    "ridge": {"alpha": [1e-1, 1.0, 10.0, 100.0, 1000.0]},  # all from one SVD
    "sgd": {"alpha": [1e-5, 1e-4, 1e-3]},
    "knn": {"n_neighbors": [5, 10, 20]},
    "knn_cosine": {"n_neighbors": [10, 20, 100, 200]},  # DINOv2's k-NN protocol
}
#: memory-aware fallback: heads whose cost grows badly with rows are fitted on a stratified subsample
SUBSAMPLE = {"knn": 20_000, "linear_svm": 30_000, "ridge": 50_000, "random_forest": 20_000, "mlp": 50_000,
             "hist_gb": 20_000, "sgd": 30_000}  # figure 11: random_forest and sgd took 180 s of 180 at 50k / all
#: seconds per head: interactive (every default head takes well under a minute on 10k x 1,280 rows)
DEFAULT_TIMEOUT = 180.0
#: heads at once: each gets half the cores (BLAS capped), which hides one head's start-up behind another's work
DEFAULT_N_JOBS = 2
#: measured seconds per head (selection, fit and test) with one core each, two heads at a time, in the default
#: bench on 10,000 x 1,280 Fashion-MNIST rows (docs/PERFORMANCE.md, figure 9): the up-front estimate scales them
#: by rows x features; other heads count as 10 s. Also the order heads start in, the costliest first.
COST_10K = {"logreg": 2.0, "linear_svm": 8.5, "ridge": 3.8, "sgd": 16.0, "knn": 3.5, "knn_cosine": 2.2,
            "random_forest": 14.0, "hist_gb": 15.5, "lda": 1.5, "gaussian_nb": 0.4, "mlp": 2.4, "keras_linear": 1.4,
            "keras_mlp": 8.0, "classic": 3.9}
#: a head's process start, its imports and loading the cache (Keras heads: importing TensorFlow)
START_SECONDS = {"sklearn": 1.5, "keras": 5.0}
#: how bench's heads may use a cache's augmented views (Keras heads draw one view an epoch whenever they do)
VIEW_MODES = ("auto", "rows", "mean", "none")
RESULTS = "results.jsonl"
#: where each head's process of this run leaves its fitted head until the best is known (then removed)
FITTED = ".featcache-fitted"
#: the best head's learning-curve rows, apart from the table's rows so each file has one kind of row
CURVE = "learning_curve.jsonl"
BEST_MODEL = "best_model"


@dataclass(frozen=True)
class Task:
    cache: str
    cache_key: str
    head: str
    params: dict
    cv: int | None
    baseline: bool  # raw pixels instead of the cache's features
    pixel_size: int = 16
    cores: int = 0  # the head's share of the CPUs (0: all); changes the speed, never the row
    #: a learning-curve point: the same protocol on this share of the train and val rows
    train_fraction: float = 1.0
    #: a user's own scikit-learn classifier (an unfitted clone) for a ``custom:`` head; None for a named head
    estimator: object = None
    #: the cache's augmented views the head trains on (0: none) and how (:mod:`featcache.heads.views`)
    views: int = 0
    views_mode: str = "none"
    #: where the head's process saves its fitted head, for bench to keep the best as best_model/ without fitting
    #: it again ("": nowhere); like ``cores``, never part of the row
    model_path: str = ""

    @property
    def settings(self) -> str:
        """A hash of what makes this row: a re-run with the same settings skips it."""
        body = {"key": self.cache_key, "head": self.head, "params": self.params, "cv": self.cv,
                "baseline": self.baseline, "pixels": self.pixel_size if self.baseline else None,
                "grid": GRIDS.get(self.head), "protocol": "val-select+trainval-refit/v3",
                "head_is": _head_is(self.head, self.estimator)}
        if self.train_fraction != 1.0:  # absent at 1.0, so the rows of earlier reports keep their hashes
            body["train_fraction"] = self.train_fraction
        if self.views:  # absent without views, likewise; K is not in the cache key, so it is here
            body["views"] = [self.views, self.views_mode]
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def _head_is(head: str, estimator=None) -> str:
    """What a head is (its pipeline's repr, or a user's estimator's with every parameter): a new default or a
    changed parameter makes a new row, never a kept stale one."""
    from .heads import make_head

    from sklearn import config_context

    with config_context(print_changed_only=False):  # every parameter, defaults too: a changed default counts
        return repr(estimator) if estimator is not None else repr(make_head(head))


def _spec(task: Task):
    """The task's HeadSpec: the named head's, or one for a user's own estimator (no preprocessing, no grid)."""
    from .heads import HeadSpec, get_head_spec

    if task.estimator is None:
        return get_head_spec(task.head)
    est = task.estimator
    return HeadSpec(task.head, lambda: est, "sklearn", "none", f"your own {type(est).__name__}")


def user_heads(heads) -> tuple[list[str], dict]:
    """Head names for ``heads`` (names, or a user's estimators named ``custom:ClassName``, ``#2`` ... when two
    share a class) and ``{name: unfitted clone}`` of the estimators; a bad object is a FeatcacheError first."""
    import pickle

    from sklearn.base import clone

    from .heads.custom import head_name, user_head

    names, estimators = [], {}
    for h in heads:
        if isinstance(h, str):
            names.append(h)
            continue
        user_head(h, [])  # not a classifier, a class, unclonable: one line naming it
        base = name = head_name(h)
        n = 1
        while name in names:
            n += 1
            name = f"{base}#{n}"
        est = clone(h)
        try:
            pickle.dumps(est)
        except Exception as exc:  # noqa: BLE001 - any pickling failure: the head's process cannot get it
            raise FeatcacheError(f"head {name} cannot be pickled for its process: {exc}") from None
        names.append(name)
        estimators[name] = est
    return names, estimators


# --------------------------------------------------------------------------- the child process


def pixel_features(cache, size: int = 16) -> np.ndarray:
    """Raw pixels of the cached images, downsampled to ``size`` x ``size`` RGB, in row order."""
    from PIL import Image

    from .sources import reopen

    src = reopen(cache.source_address)
    by_id = {it.id: it for it in src.items}
    ids = cache.ids()
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise FeatcacheError(f"the source has changed since the cache was made (e.g. {missing[0]!r} is gone)")
    out = np.empty((len(ids), size * size * 3), np.float32)
    for a in range(0, len(ids), 512):
        items = [by_id[i] for i in ids[a:a + 512]]
        batch = src.read(items, (size, size))
        if len(batch.items) != len(items):
            raise FeatcacheError("an image that was cached can no longer be decoded")
        imgs = batch.images
        if imgs.shape[1:3] != (size, size):
            imgs = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX)) for im in imgs])
        out[a:a + len(items)] = imgs.reshape(len(items), -1) / 255.0
    return out


def _subsample(idx: np.ndarray, y: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    if len(idx) <= limit:
        return idx
    keep, _ = train_test_split(idx, train_size=limit, stratify=y[idx], random_state=seed)
    return np.sort(keep)


def _fraction(idx: np.ndarray, y: np.ndarray, fraction: float) -> np.ndarray:
    """A stratified ``fraction`` of ``idx`` (a plain seeded draw when a class is too small to stratify)."""
    n = max(1, int(round(fraction * len(idx))))
    if n >= len(idx):
        return idx
    try:
        return _subsample(idx, y, n, seed=1)
    except ValueError:
        return np.sort(np.random.default_rng(1).choice(idx, n, replace=False))


#: in a head's process: the file where it says how far it has got (a timed-out row quotes it); None elsewhere
_PROGRESS_FILE: str | None = None
_PROGRESS_LOCK = threading.Lock()


def _progress(text: str) -> None:
    """Say how far this head's process has got, for its row should it run out of time (nothing outside one)."""
    if _PROGRESS_FILE is None:
        return
    with _PROGRESS_LOCK, contextlib.suppress(OSError):  # a grid's threads report too
        with open(_PROGRESS_FILE + ".part", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(_PROGRESS_FILE + ".part", _PROGRESS_FILE)


def _epoch_progress(what: str):
    """A Keras callback that reports each finished epoch through :func:`_progress`."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            _progress(f"{what}: {epoch + 1} epochs done")

    return EpochProgress()


def _candidates(head: str, fixed: dict) -> list[dict]:
    grid = {k: v for k, v in GRIDS.get(head, {}).items() if k not in fixed}
    if not grid:
        return [dict(fixed)]
    from sklearn.model_selection import ParameterGrid

    return [{**fixed, **g} for g in ParameterGrid(grid)]


def evaluate(task: Task) -> dict:
    """Select on val (or CV in train), refit on train+val, test once. Runs in the child.

    How each kind of head is selected and fitted (measured in docs/PERFORMANCE.md, figure 9):

    * Keras heads fit once on train, early-stopping on val (that is their selection).
    * Heads in :data:`PATHS` (logistic regression) walk their grid in ascending
      regularisation strength order, each fit warm-started from the last, and the
      refit on train+val starts from the chosen point's solution.
    * Heads in :data:`CALIBRATED_ON_VAL` (ridge, linear SVM) fit on train and
      calibrate their decision function on val by temperature scaling, which
      keeps every prediction's class, instead of refitting three folds; ridge
      takes all its alphas from one SVD (``RidgeClassifierCV``'s GCV).
    * Other heads with a grid score its points on val, spread across the
      head's cores with BLAS threads capped per job, then refit on train+val.
    * Heads in :data:`OUT_OF_BAG` (random forest) fit once on train+val; their
      out-of-bag accuracy is the row's validation figure.
    * Heads without a grid fit once on train; val only scores them.
    """
    from sklearn.metrics import confusion_matrix

    cores = task.cores or os.cpu_count() or 1
    _cap_threads(cores, _spec(task).kind == "keras")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(cores):
        out = _evaluate(task, cores)
    est, best, val_acc, fit_idx, select_s, fit_s, note, X, y, tr, te = out
    from .heads import proba_and_labels
    from .train import metrics

    _progress("fitted; predicting the test split")
    t2 = time.perf_counter()
    classes = np.unique(y[y >= 0])  # every class of the cache: one the head never saw has zero probability
    proba, pred = proba_and_labels(est, X[te], classes)  # the test split, touched once
    predict_s = time.perf_counter() - t2
    m = metrics(y[te], proba, classes, pred)
    if task.model_path:  # the row's own estimator: best_model/ is this very fit
        _save_fit(est, task.model_path)
    labels = sorted(set(y[te].tolist()) | set(est.classes_.tolist()))
    return {
        **{k: m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")},
        "val_accuracy": val_acc, "best_params": best, "fit_seconds": fit_s, "select_seconds": select_s,
        "predict_seconds_per_1000": predict_s / max(len(te), 1) * 1000, "n_train": int(len(fit_idx)),
        "n_test": int(len(te)), "note": note,
        "fit_splits": ["train"] if len(fit_idx) == len(tr) else ["train", "val"],
        "confusion": confusion_matrix(y[te], pred, labels=labels).tolist(),
        "confusion_labels": labels,
        # in test-row order: the child turns these into bootstrap intervals; the report's leakage check and
        # per-class table read the predictions
        "y_test": y[te].tolist(), "test_predictions": pred.tolist(),
    }


def _save_fit(est, path: str) -> None:
    """Leave the row's fitted head at ``path`` for best_model/; best effort: a head that cannot be saved
    (a full disk, state that does not pickle) costs a refit in the parent should it be the best, never its row."""
    import joblib

    _progress("fitted and measured; saving the fitted head")
    try:
        joblib.dump(est, path + ".part")
        os.replace(path + ".part", path)
    except Exception:  # noqa: BLE001 - any failure: the parent fits the best head again instead
        with contextlib.suppress(OSError):
            os.remove(path + ".part")


#: heads whose grid is a regularisation path: (parameter, ascending = from strongest regularisation)
PATHS = {"logreg": "C"}
#: bagged heads fitted once on train+val, their out-of-bag accuracy standing for val (no refit)
OUT_OF_BAG = {"random_forest"}
#: heads fitted on train and calibrated on val (temperature scaling) instead of 3-fold calibration refits
CALIBRATED_ON_VAL = {"linear_svm", "ridge"}


def _cap_threads(cores: int, keras: bool) -> None:
    """Keep a head to its share of the cores: BLAS through threadpoolctl (in evaluate), TensorFlow here."""
    if keras and cores < (os.cpu_count() or 1):
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(cores))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(max(1, min(2, cores))))
        try:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(cores)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, cores)))
        except (ImportError, RuntimeError):  # another backend, or TensorFlow already started
            pass


def _evaluate(task: Task, cores: int):
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold

    from .train import split_masks

    _progress("loading the features")
    cache = open_cache(task.cache)
    spec = _spec(task)
    X = pixel_features(cache, task.pixel_size) if task.baseline else cache.features().reshape(len(cache), -1)
    X = np.asarray(X, np.float32)
    y = cache.labels()
    masks = split_masks(cache)
    tr, va, te = (np.flatnonzero(masks[s]) for s in ("train", "val", "test"))
    if not len(tr) or not len(te):
        raise FeatcacheError("the cache needs labelled train and test rows")
    notes = [f"PCA to {spec.preprocess.partition('pca:')[2]} dimensions first"] if "pca:" in spec.preprocess else []
    if task.train_fraction < 1.0:  # a learning-curve point
        tr, va = _fraction(tr, y, task.train_fraction), _fraction(va, y, task.train_fraction)
        notes.append(f"learning curve: {task.train_fraction:.0%} of the train and val rows")
    limit = SUBSAMPLE.get(task.head)
    if limit and task.views and task.views_mode == "rows":  # the cap is on rows fitted: views are rows too
        limit = max(1, limit // (1 + task.views))
    if limit and len(tr) > limit:
        tr = _subsample(tr, y, limit)
        notes.append(f"train subsampled to {limit:,} images")
    from .heads import absent_classes

    absent = absent_classes(y[tr], np.unique(y[y >= 0]))
    if absent:  # a rare class whose images are all in val or test: the heads give it zero probability
        notes.append("classes absent from train: " + ", ".join(cache.class_name(c) for c in absent))
    views, groups = None, None
    if task.views:  # the train images' views: more rows (appended to X), their mean, or a Keras head's draw
        from .heads import views as head_views

        V = cache.views_of(tr, views=task.views).reshape(task.views, len(tr), -1).astype(np.float32)
        if task.views_mode == "draw":
            views = V
        else:
            Xt, yt, g = head_views.expand(X[tr], y[tr], V, task.views_mode)
            if task.views_mode == "mean":
                X[tr] = Xt
            else:
                extra = np.arange(len(X), len(X) + len(Xt) - len(tr))
                X, y = np.concatenate([X, Xt[len(tr):]]), np.concatenate([y, yt[len(tr):]])
                groups, tr = np.concatenate([tr, tr[g[len(tr):]]]), np.concatenate([tr, extra])
        notes.append(f"{task.views} augmented views per train image as {task.views_mode}")
    t0 = time.perf_counter()
    best, val_acc, est, fit_s = dict(task.params), None, None, None
    cands = _candidates(task.head, task.params)
    _progress(f"features loaded ({len(tr):,} train rows); fitting")
    if spec.kind == "keras":  # one fit: early stopping on val is its selection, and that model is the row's
        est = _make(task.head, cores, task.estimator, **best)
        own = est.get_params()["clf__callbacks"]
        est.set_params(clf__callbacks=[*(own or ()), _epoch_progress(f"fitting on {len(tr):,} train rows")])
        est.fit(X[tr], y[tr], clf__validation_data=(X[va], y[va]) if len(va) else None,
                **({"clf__views": views} if views is not None else {}))
        est.set_params(clf__callbacks=own)  # the saved head carries no progress hook
        val_acc = float(est.score(X[va], y[va])) if len(va) else None
        fit_idx, fit_s, select_s = tr, time.perf_counter() - t0, 0.0
    elif task.cv:
        grid = {k: v for k, v in GRIDS.get(task.head, {}).items() if k not in task.params}
        # views of one image stay in one fold: a view of a held-out image is never trained on
        folds = (StratifiedKFold(task.cv, shuffle=True, random_state=0) if groups is None
                 else StratifiedGroupKFold(task.cv, shuffle=True, random_state=0))
        prefixed = {spec.param_prefix + k: v for k, v in grid.items()}
        search = GridSearchCV(_make(task.head, cores, task.estimator, **task.params), prefixed or {}, cv=folds,
                              n_jobs=1)
        search.fit(X[tr], y[tr], **({"groups": groups} if groups is not None else {}))
        best = {**task.params, **{k[len(spec.param_prefix):]: v for k, v in search.best_params_.items()}}
        val_acc = float(search.best_score_)
        fit_idx = tr
    elif task.head in OUT_OF_BAG and task.estimator is None and groups is None \
            and _make(task.head, 1, **best).get_params().get("clf__bootstrap", True):
        # (not with views as rows: an image's views would be out of bag for trees that trained on its others)
        # one fit on train+val: its out-of-bag accuracy is the held-out figure, and no refit is needed
        fit_idx = np.concatenate([tr, va])
        est = _make(task.head, cores, **best).set_params(clf__oob_score=True).fit(X[fit_idx], y[fit_idx])
        val_acc = float(est.steps[-1][1].oob_score_)
        fit_s, select_s = time.perf_counter() - t0, 0.0
        notes.append("fit on train+val; val accuracy out-of-bag")
    elif task.head in CALIBRATED_ON_VAL and len(va):
        est, best, val_acc, select_s, fit_s = _calibrated_on_val(task, cands, X, y, tr, va, cores)
        fit_idx = tr
        notes.append("fit on train, calibrated on val")
    elif len(cands) > 1 and len(va):
        if task.head in PATHS:
            best, val_acc, warm, n_fitted = _path(task.head, cands, X, y, tr, va)
            notes.append(f"{PATHS[task.head]} path: {n_fitted} fits over its log grid, refined to half decades")
        else:
            best, val_acc, warm = _grid_on_val(task.head, cands, X, y, tr, va, cores)
        fit_idx = np.concatenate([tr, va])  # refit on train+val with the chosen setting
        select_s = time.perf_counter() - t0
        _progress(f"chose {best} on val; refitting it on train+val ({len(fit_idx):,} rows)")
        t1 = time.perf_counter()
        est = _make(task.head, cores, task.estimator, **best)
        if warm is not None and len(warm["coef_"]) == _coef_rows(np.unique(y[fit_idx])):
            # start the refit from the chosen point's solution (not when val brings a class train lacks)
            est.set_params(clf__warm_start=True)
            for k, v in warm.items():
                setattr(est.steps[-1][1], k, v)
        est.fit(X[fit_idx], y[fit_idx])
        fit_s = time.perf_counter() - t1
    else:  # no grid: one fit on train; val scores it
        est = _make(task.head, cores, task.estimator, **best).fit(X[tr], y[tr])
        val_acc = float(est.score(X[va], y[va])) if len(va) else None
        fit_idx, fit_s, select_s = tr, time.perf_counter() - t0, 0.0
    if fit_s is None:  # CV: refit the chosen setting on the whole training split
        _progress(f"chose {best} by {task.cv}-fold CV; refitting it on train")
        select_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        est = _make(task.head, cores, task.estimator, **best).fit(X[fit_idx], y[fit_idx])
        fit_s = time.perf_counter() - t1
    return est, best, val_acc, fit_idx, select_s, fit_s, "; ".join(notes), X, y, tr, te


def _coef_rows(classes) -> int:
    """The rows of a linear classifier's ``coef_`` for these classes: one for two classes, else one each."""
    return 1 if len(classes) == 2 else len(classes)


#: a regularisation path stops after this many points in a row below its best: past the peak, as CLIP's search
PATH_PATIENCE = 2


def _path(head: str, cands: list[dict], X, y, tr, va):
    """A regularisation path: one pipeline, its preprocessing fitted once, each point warm-started.

    The points are walked from the strongest regularisation and the walk stops
    :data:`PATH_PATIENCE` points past the best (validation accuracy is
    unimodal along the path in practice, and the weakly regularised end is
    the slow one); the best is then refined to the half decades on either side
    of it, each warm-started from it. Returns (params, val accuracy, the
    chosen point's coefficients, points fitted).
    """
    key = PATHS[head]
    order = sorted(range(len(cands)), key=lambda i: cands[i].get(key, 0))
    pipe = _make(head, 0, **cands[order[0]])
    pre, clf = pipe[:-1], pipe.steps[-1][1]
    Xtr = pre.fit_transform(X[tr]) if len(pipe) > 1 else X[tr]
    Xva = pre.transform(X[va]) if len(pipe) > 1 else X[va]
    clf.set_params(warm_start=True)
    points = [cands[i] for i in order]
    scores, states = [], []

    def fit(c, start=None):
        own = {k.removeprefix("clf__"): v for k, v in c.items()}  # plain names and clf__NAME: the classifier's
        clf.set_params(**{k: v for k, v in own.items() if "__" not in k})  # the other steps' are fixed
        if start is not None:
            clf.coef_, clf.intercept_ = start["coef_"].copy(), start["intercept_"].copy()
        clf.fit(Xtr, y[tr])
        scores.append(float(clf.score(Xva, y[va])))
        states.append({"coef_": clf.coef_.copy(), "intercept_": clf.intercept_.copy()})
        _progress(f"regularisation path: {len(scores)} settings scored on val")

    walked = []
    for c in points:
        fit(c)
        walked.append(c)
        top = int(np.argmax(scores))  # ties: the first, the more regularised
        if len(scores) - 1 - top >= PATH_PATIENCE:
            break
    top = int(np.argmax(scores))
    if len(points) > 1 and isinstance(points[top].get(key), (int, float)):
        for f in (10 ** -0.5, 10 ** 0.5):  # refine to the half decades on either side, from the best point
            walked.append({**points[top], key: float(points[top][key] * f)})
            fit(walked[-1], states[top])
    b = max(range(len(scores)), key=lambda i: (scores[i], -walked[i].get(key, 0)))  # ties: more regularised
    return walked[b], scores[b], states[b], len(scores)


def _grid_on_val(head: str, cands: list[dict], X, y, tr, va, cores: int):
    """Score every grid point on val, the points spread across ``cores`` with BLAS threads capped per job."""
    from joblib import Parallel, delayed
    from threadpoolctl import threadpool_limits

    jobs = max(1, min(cores, len(cands)))
    done = []

    def score(c):
        s = _make(head, max(1, cores // jobs), **c).fit(X[tr], y[tr]).score(X[va], y[va])
        done.append(s)  # list.append is atomic across threads
        _progress(f"grid: {len(done)} of {len(cands)} settings scored on val")
        return s

    with threadpool_limits(max(1, cores // jobs)):
        scores = Parallel(n_jobs=jobs, backend="threading")(delayed(score)(c) for c in cands)
    b = int(np.argmax(scores))
    return cands[b], float(scores[b]), None


#: heads whose classifier takes ``n_jobs``: given the head's cores unless the parameters fix it
THREADED = {"random_forest", "knn", "sgd", "linear_svm"}


def _make(head: str, cores: int, estimator=None, **params):
    """``make_head``, with the classifier's own ``n_jobs`` set to the head's cores (for THREADED heads); a
    user's ``estimator``: a clone with ``params`` in featcache's Pipeline shape (its ``n_jobs`` its own)."""
    from .heads import get_head_spec, make_head

    if estimator is not None:
        from .heads.custom import user_head

        return user_head(estimator, [], params)[1]
    est = make_head(head, **params)
    if head in THREADED and cores and "n_jobs" not in params:
        est.set_params(**{get_head_spec(head).param_prefix + "n_jobs": int(cores)})
    return est


def _calibrated_on_val(task: Task, cands: list[dict], X, y, tr, va, cores: int):
    """Fit the base classifier on train (choosing its setting on val), then calibrate it on val.

    Temperature scaling fits one number on val and keeps every row's
    predicted class, so the row's validation accuracy is the base
    classifier's own. Returns (estimator, params, val_acc, select_s, fit_s).
    """
    from joblib import Parallel, delayed
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import Pipeline
    from threadpoolctl import threadpool_limits

    from .heads import get_head_spec, make_head

    t0 = time.perf_counter()
    spec = get_head_spec(task.head)
    pipe = make_head(task.head, **cands[0])
    pre = pipe[:-1] if len(pipe) > 1 else None
    Xtr = pre.fit_transform(X[tr]) if pre is not None else X[tr]
    Xva = pre.transform(X[va]) if pre is not None else X[va]

    def base_for(c, n_jobs=cores):
        p = _make(task.head, n_jobs, **c)
        return clone(p.steps[-1][1].estimator)

    if task.head == "ridge" and len(cands) > 1:  # every alpha from one SVD (generalised cross-validation)
        from sklearn.linear_model import RidgeClassifierCV

        alphas = sorted({c["alpha"] for c in cands})
        others = {k: v for k, v in base_for(cands[0]).get_params().items() if k != "alpha"}
        cv = RidgeClassifierCV(alphas=alphas, fit_intercept=others.get("fit_intercept", True)).fit(Xtr, y[tr])
        best = {**task.params, "alpha": float(cv.alpha_)}
        base = base_for(best).fit(Xtr, y[tr])
    else:
        jobs = max(1, min(cores, len(cands)))
        done = []

        def fit(c):
            b = base_for(c, max(1, cores // jobs)).fit(Xtr, y[tr])
            done.append(c)
            _progress(f"grid: {len(done)} of {len(cands)} settings fitted on train")
            return b

        with threadpool_limits(max(1, cores // jobs)):
            fitted = Parallel(n_jobs=jobs, backend="threading")(delayed(fit)(c) for c in cands)
        scores = [float(b.score(Xva, y[va])) for b in fitted]
        i = int(np.argmax(scores))
        best, base = cands[i], fitted[i]
    val_acc = float(base.score(Xva, y[va]))
    select_s = time.perf_counter() - t0
    _progress(f"chose {best} on val; calibrating on val")
    t1 = time.perf_counter()
    known = np.isin(y[va], base.classes_)  # val rows of a class train lacks cannot calibrate its scores
    calibrated = CalibratedClassifierCV(FrozenEstimator(base), method="temperature").fit(Xva[known], y[va][known])
    steps = (list(pre.steps) if pre is not None else []) + [("clf", calibrated)]
    return Pipeline(steps), best, val_acc, select_s, time.perf_counter() - t1


#: resampled rows drawn at a time by bootstrap_intervals (8 M: about 64 MB of indices)
_BOOTSTRAP_CELLS = 8 * 1024 * 1024


def bootstrap_intervals(y_true, y_pred, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Percentile bootstrap intervals of test accuracy and macro-F1, resampling the test rows.

    Args:
        y_true: the test labels.
        y_pred: the head's predictions for them, in the same order.
        n_boot: bootstrap resamples.
        level: the interval's coverage (0.95: the 2.5th to the 97.5th percentile).
        seed: the resampling seed, so a row's interval is reproducible.

    Returns:
        ``{"accuracy_ci": [low, high], "macro_f1_ci": [low, high]}`` (fractions, like the metrics);
        macro-F1 is scikit-learn's (``average="macro"``, ``zero_division=0``) over the
        classes that occur in each resample's labels or predictions.

    Examples:
        >>> ci = bootstrap_intervals([0, 1, 1, 0], [0, 1, 0, 0])
        >>> 0 <= ci["accuracy_ci"][0] <= 0.75 <= ci["accuracy_ci"][1] <= 1
        True
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    n = len(t)
    if n == 0:
        return {"accuracy_ci": None, "macro_f1_ci": None}
    classes, codes = np.unique(np.concatenate([t, p]), return_inverse=True)
    k = len(classes)
    tc, pc = codes[:n], codes[n:]
    rng = np.random.default_rng(seed)
    acc, macro = np.empty(n_boot), np.empty(n_boot)
    step = max(1, _BOOTSTRAP_CELLS // n)  # resamples at a time: memory bounded on any test split
    for a in range(0, n_boot, step):
        b = min(n_boot, a + step)
        idx = rng.integers(0, n, (b - a, n))  # the same stream as one (n_boot, n) draw
        tt, pp = tc[idx], pc[idx]
        hit = tt == pp
        acc[a:b] = hit.mean(1)
        rows = np.arange(b - a)[:, None] * k
        size = (b - a) * k
        tp = np.bincount((rows + tt)[hit], minlength=size).reshape(b - a, k)
        n_true = np.bincount((rows + tt).ravel(), minlength=size).reshape(b - a, k)
        n_pred = np.bincount((rows + pp).ravel(), minlength=size).reshape(b - a, k)
        denom = n_true + n_pred
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        present = denom > 0
        macro[a:b] = (f1 * present).sum(1) / present.sum(1)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {"accuracy_ci": [float(v) for v in np.percentile(acc, q)],
            "macro_f1_ci": [float(v) for v in np.percentile(macro, q)]}


def _rss_mb(field: str) -> float | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``echo 5 > /proc/self/clear_refs``); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child(task: Task) -> dict:
    """Evaluate one task in the head's own process: the row's result, with its own peak memory."""
    result = {}
    try:
        spec = _spec(task)
        spec.make()  # import the head's libraries before memory is measured
        if spec.kind == "keras":
            import keras  # noqa: F401 - the head module itself imports Keras only when it builds a model
        start = _rss_mb("VmRSS")
        own = _reset_peak_rss() and start is not None
        base = start if own else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        try:
            result = {"status": "ok", **evaluate(task)}
        finally:
            peak = _rss_mb("VmHWM") if own else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            result["peak_memory_mb"] = max(0.0, (peak or 0.0) - base)
        y_test = result.pop("y_test")
        result.update(bootstrap_intervals(y_test, result["test_predictions"]))
    except BaseException as exc:  # noqa: BLE001 - reported in the row
        msg = str(exc) or exc.__class__.__name__
        result = {"status": "failed", "error": f"{exc.__class__.__name__}: {msg}",
                  "traceback": traceback.format_exc(limit=4), "peak_memory_mb": result.get("peak_memory_mb")}
    return result


def _child_main(result_path: str) -> None:
    """The head process's entry point: a pickled Task on stdin, a pickled result into ``result_path``.

    It runs ``python -c`` (never the parent's ``__main__``), so a script that
    calls :func:`bench` without an ``if __name__ == "__main__":`` guard works.
    Once the task is read, a thread waits for stdin's end: if the parent dies,
    the head does too.
    """
    import pickle
    import sys

    global _PROGRESS_FILE
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    task = pickle.load(sys.stdin.buffer)
    _PROGRESS_FILE = result_path + ".progress"

    def orphaned():
        sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
        os._exit(3)

    threading.Thread(target=orphaned, daemon=True).start()
    result = _child(task)
    tmp = result_path + ".part"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (Keras/TF can hang or crash there)


#: how much of a failed head process's stderr its row keeps (the end, where the error is)
STDERR_TAIL = 2000


def run_task(task: Task, timeout: float | None) -> dict:
    """Run one task in a fresh Python process; kill it past ``timeout`` seconds.

    The process runs ``python -c`` with featcache's own entry point rather
    than multiprocessing's spawn, which re-runs the caller's ``__main__``
    script (and so fails in a script or notebook without a
    ``if __name__ == "__main__":`` guard). A process that dies without a
    result leaves the end of its stderr in the row.
    """
    import pickle
    import subprocess
    import sys
    import tempfile

    root = str(Path(__file__).resolve().parents[1])  # the child imports this very featcache
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory(prefix="featcache-head-") as tmp:
        result_path = os.path.join(tmp, "result.pkl")
        code = "import sys; sys.path.pop(0); from featcache.bench import _child_main; _child_main(sys.argv[1])"
        t0 = time.perf_counter()
        with open(os.path.join(tmp, "stderr"), "w+b") as err:
            proc = subprocess.Popen([sys.executable, "-c", code, result_path], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err, env=env)
            timed_out = False
            try:
                try:
                    pickle.dump(task, proc.stdin)
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass  # died at start: its stderr says why
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            wall = time.perf_counter() - t0
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace").strip()
        result = None
        if not timed_out and os.path.isfile(result_path):
            with open(result_path, "rb") as f:
                result = pickle.load(f)
        progress = None
        with contextlib.suppress(OSError):
            progress = Path(result_path + ".progress").read_text("utf-8").strip() or None
    if result is None:
        if timed_out:
            result = {"status": "timed out", "error": f"no result within the {timeout:g} s budget"
                                                      + (f"; it had got as far as: {progress}" if progress else ""),
                      "progress": progress}
        else:
            last = stderr.splitlines()[-1] if stderr else ""
            result = {"status": "failed", "error": f"the head's process died (exit code {proc.returncode})"
                                                   + (f": {last}" if last else "")}
            if stderr:
                result["stderr"] = stderr[-STDERR_TAIL:]
    result["wall_seconds"] = wall
    result["budget_seconds"] = timeout
    return result


# --------------------------------------------------------------------------- the driver


def _row(task: Task, cache, result: dict) -> dict:
    p = cache.params
    return {
        "cache": task.cache, "cache_key": task.cache_key, "backbone": "raw pixels" if task.baseline else p["backbone"],
        "features": (f"pixels {task.pixel_size}x{task.pixel_size}" if task.baseline
                     else f"{p['backbone']} {p['image_size'][0]}px {cache.outputs[0]}"
                     + (f" + {task.views} views" if task.views else "")),  # the report shows the K a row used
        "head": task.head, "baseline": task.baseline, "params": task.params, "settings": task.settings,
        "views": task.views, "views_mode": task.views_mode,
        **({"augment": cache.augment} if task.views else {}),
        **({"estimator": repr(task.estimator)} if task.estimator is not None else {}),  # what custom:X was
        "versions": versions(HEAD_PACKAGES, backend=False),
        **{k: v for k, v in result.items() if k != "traceback"},
    }


def retry_reason(row: dict, timeout: float | None) -> str | None:
    """Why a kept row is run again under these settings, or None when it stands.

    A row that finished stands. A timed-out row is retried when the budget is
    now larger (or gone); a failed row when featcache, scikit-learn, Keras or
    NumPy changed since it failed (its cause may be fixed). A failure that the
    same code would repeat is kept, so a re-run costs nothing.

    Args:
        row: a row from ``results.jsonl``.
        timeout: this run's per-head budget in seconds (None: no limit).

    Returns:
        A short reason (shown in the live table), or None.

    Examples:
        >>> retry_reason({"status": "timed out", "budget_seconds": 60.0}, 600.0)
        'budget 60 s -> 600 s'
        >>> retry_reason({"status": "timed out", "budget_seconds": 60.0}, 60.0) is None
        True
    """

    status = row.get("status")
    if status == "timed out":
        budget = row.get("budget_seconds")
        if budget is None:  # rows written before the budget was recorded name it in their error
            m = re.search(r"within the ([0-9.e+-]+) s budget", row.get("error") or "")
            budget = float(m.group(1)) if m else None
        if budget is None or timeout is None or timeout > budget:
            return f"budget {budget:g} s -> " + ("no limit" if timeout is None else f"{timeout:g} s") \
                if budget is not None else "budget unknown"
        return None
    if status == "failed":
        now = versions(HEAD_PACKAGES, backend=False)
        if row.get("versions") != now:
            return "versions changed"
    return None


def _load_rows(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text("utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a kill mid-write
    return rows


def _append_row(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


BACKENDS = ("threading", "ray")


@contextlib.contextmanager
def _joblib_backend(backend: str, ray_address: str | None):
    """Make joblib's ``ray`` backend available (joining or starting Ray) for the sweep's duration."""
    if backend != "ray":
        yield
        return
    from .ray_cluster import connect, import_ray

    ray = import_ray()
    from ray.util.joblib import register_ray

    register_ray()
    started = connect(ray_address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _run_tasks(todo: list, timeout: float | None, n_jobs: int, backend: str):
    """(task, result) pairs as they finish, so each row is saved as soon as it exists.

    joblib's Ray backend cannot yield results one by one, so there the tasks
    go in waves as wide as the parallelism and rows are saved after each wave.
    """
    from joblib import Parallel, delayed

    def job(t):
        return t, run_task(t, timeout)

    if backend != "ray":
        yield from Parallel(n_jobs=n_jobs, backend=backend, return_as="generator_unordered")(
            delayed(job)(t) for t in todo)
        return
    import ray

    width = n_jobs if n_jobs > 0 else max(1, int(ray.cluster_resources().get("CPU", 1)))
    for a in range(0, len(todo), width):
        yield from Parallel(n_jobs=n_jobs, backend="ray")(delayed(job)(t) for t in todo[a:a + width])


def _cores_per_head(n_jobs: int, n_tasks: int, backend: str) -> int:
    """Each head's share of this machine's cores when ``n_jobs`` heads run at once (0: all, for Ray)."""
    if backend == "ray":
        return 0
    cpus = os.cpu_count() or 1
    at_once = max(1, min(cpus if n_jobs < 0 else n_jobs, n_tasks))
    return max(1, cpus // at_once)


def estimate_seconds(heads, n_rows: int, n_features: int, n_jobs: int = 1) -> float:
    """About how long ``heads`` take on an ``n_rows`` x ``n_features`` cache, ``n_jobs`` at a time.

    A rough, up-front figure from :data:`COST_10K` (one core a head on this
    project's 2-core machine), scaled linearly by rows x features, capped
    where :data:`SUBSAMPLE` caps a head's rows; said before the run so that a
    long one is no surprise.

    Args:
        heads: head names (a raw-pixel baseline counts as its head).
        n_rows, n_features: the cache's shape.
        n_jobs: heads at once (-1: every CPU).

    Returns:
        Seconds of wall time for the heads (not the best head's learning curve).

    Examples:
        >>> round(estimate_seconds(["logreg"], 10_000, 1280)) >= 3
        True
    """
    from .heads import get_head_spec

    cpus = os.cpu_count() or 1
    at_once = max(1, min(cpus if n_jobs < 0 else n_jobs, len(heads) or 1))

    def cost(h):
        rows = min(n_rows, int(SUBSAMPLE.get(h, n_rows) / 0.67))  # the cap is on the ~67% of rows in train
        return START_SECONDS[get_head_spec(h).kind] + COST_10K.get(h, 10.0) * rows * n_features / (10_000 * 1280)

    return sum(cost(h) for h in heads) / at_once


def check_options(*, cv=None, timeout=DEFAULT_TIMEOUT, n_jobs=DEFAULT_N_JOBS, pixel_size=16, backend="threading",
                  views="auto", name=lambda key: key) -> None:
    """Refuse a bad benchmark setting before any work; ``name(key)`` is how the error names the setting."""
    from numbers import Real

    if not is_integer(n_jobs) or n_jobs == 0:
        raise FeatcacheError(f"{name('n_jobs')} must be a non-zero integer (-1: every CPU), got {n_jobs!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, Real)
                                or not 0 < timeout < float("inf")):  # NaN fails too
        raise FeatcacheError(f"{name('timeout')} must be a number of seconds > 0 (or None: no limit), got {timeout!r}")
    if cv is not None and (not is_integer(cv) or cv < 2):
        raise FeatcacheError(f"{name('cv')} must be an integer of at least 2 folds (or None), got {cv!r}")
    check_integer(pixel_size, name("pixel_size"))
    if backend not in BACKENDS:
        raise FeatcacheError(f"{name('backend')} must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if views not in VIEW_MODES:
        raise FeatcacheError(f"{name('views')} must be one of {', '.join(VIEW_MODES)}, got {views!r}")


def bench(caches, heads=None, *, params: dict | None = None, cv: int | None = None,
          timeout: float | None = DEFAULT_TIMEOUT, n_jobs: int = DEFAULT_N_JOBS, out="report",
          baseline_heads=("logreg",),
          pixel_size: int = 16, backend: str = "threading", progress: bool = False, save_best: bool = True,
          ray_address: str | None = None, learning_curve=(0.1, 0.25, 0.5), leakage: bool = True,
          views: str = "auto") -> list[dict]:
    """Run ``heads`` on each cache with an honest protocol; write the report into ``out``; return the rows.

    Hyper-parameters are chosen on the validation split (or ``cv`` folds
    inside train), the chosen setting is refit on train+val, the test split
    is touched once, and the best head is picked by validation accuracy
    alone and saved to ``out/best_model``. Each head runs in its own process
    with a time budget; rows are kept as they finish, so a re-run resumes.

    Args:
        caches: one cache (a :class:`~featcache.store.Cache` or its directory) or several.
        heads: head names (default: every head), or your own unfitted scikit-learn
            classifiers among them (``["logreg", SVC()]``): each is cloned into its
            head's process, fitted once on train (no grid) and shown as
            ``custom:ClassName`` (``custom:SVC#2`` for a second ``SVC``); its
            parameters are part of the row's settings, so a changed one re-runs.
            ``params`` for it are keyed by that name.
        params: fixed parameters per head, e.g. ``{"knn": {"n_neighbors": 5}}``.
        cv: choose hyper-parameters by K-fold CV inside train instead of on val.
        timeout: seconds per head before its row says "timed out" (None: no limit). A
            kept timed-out row is run again when this budget is larger than its
            own; a kept failed row when featcache or its libraries changed.
        n_jobs: heads run at once (-1: every CPU of the backend), each with
            its share of the cores; with n_jobs=1 a head has them all.
        out: the report directory (new, empty, or an earlier featcache report).
        baseline_heads: heads also run on raw pixels of the first cache's images.
        pixel_size: side of the downsampled raw-pixel baseline.
        backend: a joblib backend: ``threading`` (each head still runs in its
            own spawned process) or ``ray``, which runs the heads as tasks on
            the Ray cluster at ``ray_address`` (or a local instance); the
            caches and ``out`` must then be on storage every node sees.
        progress: show the live table.
        save_best: refit and save the best head to ``out/best_model``.
        learning_curve: shares of the train and val rows at which the best head
            is run again (its chosen parameters fixed) for the report's learning
            curve; empty or None: none.
        leakage: look for test rows whose nearest train/val row has cosine >= 0.98 on
            the cached features (:mod:`featcache.leakage`) and report the best
            head's accuracy with and without them.
        views: how heads train on a cache's augmented views (``extract --views
            K``): ``auto`` (each head's own way, ``featcache heads``), ``rows``,
            ``mean``, ``none``; each row records the K it used. Selection and
            test rows are always the plain view.

    Returns:
        The rows, one dict per (cache, head): test accuracy, macro-F1,
        validation accuracy, chosen parameters, fit time, status, ...

    Examples:
        >>> rows = featcache.bench("caches/fm", ["logreg", "knn"], out="report")  # doctest: +SKIP
        >>> from sklearn.svm import SVC
        >>> rows = featcache.bench("caches/fm", ["logreg", SVC()], out="report")  # doctest: +SKIP
    """
    from .heads import HEADS, get_head_spec, validate_head
    from .heads.views import resolve_mode
    from .report import LiveTable, best_row, write_report
    from .train import split_masks, train_classes

    check_options(cv=cv, timeout=timeout, n_jobs=n_jobs, pixel_size=pixel_size, backend=backend, views=views)
    learning_curve = tuple(learning_curve or ())
    if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in learning_curve):
        raise FeatcacheError(f"learning_curve must be shares of the training rows between 0 and 1 (exclusive), "
                             f"got {learning_curve!r}")
    caches = [caches] if isinstance(caches, (str, os.PathLike, Cache)) else list(caches)
    caches = [c.path if isinstance(c, Cache) else c for c in caches]  # each head's process reopens its cache
    if not caches:
        raise FeatcacheError("bench needs at least one cache directory")
    heads, estimators = user_heads(list(heads) if heads else list(HEADS))  # your own estimators: custom:Name
    for h in [h for h in heads if h not in estimators] + list(baseline_heads or ()):
        get_head_spec(h)
    params = params or {}
    unknown = set(params) - set(heads)
    if unknown:
        raise FeatcacheError(f"parameters given for heads that are not benchmarked: {', '.join(sorted(unknown))}")
    for h in heads:  # a bad parameter fails here, not in every head's process
        if h in estimators:
            from .heads.custom import user_head

            user_head(estimators[h], [], params.get(h))
        else:
            validate_head(h, None, params.get(h))
    opened = {str(c): open_cache(c) for c in caches}
    for cache in opened.values():  # before any work: a one-class cache would fail every head
        train_classes(cache, split_masks(cache))
    tasks = []
    for path, cache in opened.items():
        for h in heads:
            spec = None if h in estimators else get_head_spec(h)
            keras = spec is not None and spec.kind == "keras"
            # one choice for every head: rows or mean for the scikit-learn heads, Keras heads still draw
            mode = resolve_mode("auto" if keras and views in ("rows", "mean") else views,
                                "rows" if spec is None else spec.views, keras, cache.views)
            tasks.append(Task(path, cache.key, h, dict(params.get(h, {})), cv, False, pixel_size,
                              estimator=estimators.get(h), views=cache.views if mode != "none" else 0,
                              views_mode=mode))
    first = opened[str(caches[0])]
    if baseline_heads and first.source_address is None:  # arrays: their pixels cannot be read again
        import warnings

        from .errors import FeatcacheWarning

        warnings.warn(f"no raw-pixel baseline: {caches[0]} was made from in-memory arrays, whose pixels featcache "
                      "cannot read again", FeatcacheWarning, stacklevel=2)
        baseline_heads = ()
    for h in baseline_heads or ():
        if h in heads:
            tasks.append(Task(str(caches[0]), first.key, h, dict(params.get(h, {})), cv, True, pixel_size))
    out = check_report_target(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatcacheError(f"cannot create the report directory {out}: {exc.strerror or exc}") from None
    results_path = out / RESULTS
    done = {r["settings"]: r for r in _load_rows(results_path)}  # a retried row's later line wins
    for key, r in list(done.items()):
        if retry_reason(r, timeout):
            del done[key]
    rows = [{**done[t.settings], "cache": t.cache} for t in tasks if t.settings in done]  # as this run spells it
    todo = [t for t in tasks if t.settings not in done]
    fitted = out.resolve() / FITTED  # each head's fit, until the best is known
    ours = not fitted.is_symlink() and (fitted.is_dir() or not fitted.exists())
    if ours and fitted.is_dir():
        _remove_fitted(fitted, None)  # a killed run's leftovers: never trusted for a row recomputed since
    # not under Ray (a worker may not see out/), and not in a folder that is not ours: the best is fitted again
    fitted = fitted if save_best and todo and ours and backend != "ray" else None
    order = {t.settings: i for i, t in enumerate(tasks)}
    todo = [dataclasses.replace(t, cores=_cores_per_head(n_jobs, len(todo), backend),
                                model_path=str(fitted / f"{t.settings}.joblib") if fitted and not t.baseline else "")
            for t in _longest_first(todo)]
    if progress and todo:
        from .console import console

        groups: dict = {}
        for t in todo:
            width = 3 * t.pixel_size ** 2 if t.baseline else _n_features(opened[t.cache])
            groups.setdefault((len(opened[t.cache]), width), []).append("logreg" if t.estimator is not None
                                                                        else t.head)  # your own: a linear head's
        est = sum(estimate_seconds(h, n, d, n_jobs) for (n, d), h in groups.items())
        budget = f", at most {timeout:g} s a head" if timeout else ""
        console.print(f"about {est:.0f} s for these {len(todo)} heads ({min(n_jobs if n_jobs > 0 else 99, len(todo))} "
                      f"at a time{budget})")
    try:
        if fitted:
            fitted.mkdir(exist_ok=True)
        live = LiveTable(tasks, rows, enabled=progress)
        with live, _joblib_backend(backend if todo else "threading", ray_address):  # no Ray when nothing is left
            for task in todo:
                live.running(task)
            for task, result in _run_tasks(todo, timeout, n_jobs, backend):
                row = _row(task, opened[task.cache], result)
                try:
                    _append_row(results_path, row)
                except OSError as exc:
                    raise FeatcacheError(f"cannot record a result in {results_path}: {exc.strerror or exc}; the "
                                         "rows recorded so far are kept, run the same command again to go on") from None
                rows.append(row)
                live.finished(row)
                if fitted:  # only the best so far is kept: the others' files go as soon as they are beaten
                    leader = best_row(sorted(rows, key=lambda r: order.get(r["settings"], 1 << 30)))
                    _remove_fitted(fitted, {r["settings"] for r in rows} - {(leader or {}).get("settings")})
            live.summarise(rows)  # the best head and its ties, once every row is in
        rows.sort(key=lambda r: order.get(r["settings"], 1 << 30))
        best_dir = None
        best = best_row(rows)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:  # the best head is saved while the learning curve's processes run
            saving = None
            if save_best and best is not None:
                best_dir = out / BEST_MODEL
                saving = pool.submit(_save_best, best, best_dir, estimators.get(best["head"]), fitted)
            curve = _learning_curve(best, learning_curve, out / CURVE, timeout, n_jobs, cv, pixel_size,
                                    estimators.get(best["head"]) if best is not None else None)
            if saving is not None:
                saving.result()
    finally:
        if fitted:
            _remove_fitted(fitted, None)
    leaks = None
    if leakage and best is not None:
        from .leakage import near_duplicates

        leaks = near_duplicates(opened[best["cache"]])
        leaks["cache"] = best["cache"]
    try:
        write_report(out, rows, best_dir=best_dir, curve=curve, leakage=leaks)
    except OSError as exc:
        raise FeatcacheError(f"cannot write the report in {out}: {exc.strerror or exc}; the rows are kept in "
                             f"{results_path}") from None
    return rows


def _longest_first(tasks: list) -> list:
    """The tasks in the order to start them: the costliest first (by :data:`COST_10K`), so that two slots
    finish together rather than one waiting on a long head started last."""
    from .heads import get_head_spec

    def cost(t):
        kind = "sklearn" if t.estimator is not None else get_head_spec(t.head).kind
        return START_SECONDS[kind] + COST_10K.get(t.head, 10.0)

    return sorted(tasks, key=cost, reverse=True)


def _save_best(best: dict, best_dir: Path, own, fitted: Path | None) -> None:
    """Save the best row's head to ``best_dir``: the very estimator its process fitted when it left one in
    ``fitted`` (this run measured it), else (a row kept from an earlier run) fitted again like the row unless
    ``best_dir`` already holds a current one."""
    from .heads import get_head_spec
    from .train import custom_fields, save_fitted, train

    params = best.get("best_params") or {}
    name = best["head"] if own is None else best["head"].partition("#")[0]  # train names yours custom:ClassName
    keras = own is None and get_head_spec(best["head"]).kind == "keras"
    fit_splits = best.get("fit_splits") or (["train"] if keras else ["train", "val"])  # rows before it was kept
    views = (best.get("views") or 0, best.get("views_mode") or "none")
    path = fitted / f"{best['settings']}.joblib" if fitted else None
    if path is not None and path.is_file():
        import joblib

        save_fitted(best["cache"], name, joblib.load(path), out=best_dir, params=params, fit_splits=fit_splits,
                    views=views, fit_seconds=best.get("fit_seconds") or 0.0)
        return
    card = current_card(best_dir, name, best["cache_key"], params, *views)
    if own is not None and card is not None:  # the same name, the same estimator?
        same = card.get("estimator") == custom_fields("custom:", _make("", 0, own, **params))["estimator"]
        card = card if same else None
    if card is None or card.get("fit_splits", ["train"]) != fit_splits:
        train(best["cache"], best["head"] if own is None else own, params=params, out=best_dir,
              fit_splits=fit_splits, views=views[1])


#: a fitted head's file in FITTED: the row's settings hash (a ``.part`` while it is written)
_FITTED_FILE = re.compile(r"([0-9a-f]{16})\.joblib(\.part)?")


def _remove_fitted(fitted: Path, settings: set | None) -> None:
    """Remove the fitted heads of these rows' ``settings`` from ``fitted`` (None: all, and the folder itself).

    Only files named as bench names them go; the folder is removed only when
    nothing else is in it."""
    with contextlib.suppress(OSError):
        for p in fitted.iterdir():
            m = _FITTED_FILE.fullmatch(p.name)
            if m and p.is_file() and not p.is_symlink() and (settings is None or (m[1] in settings and not m[2])):
                p.unlink()
        if settings is None:
            fitted.rmdir()  # refuses when something else is there: it stays


def _n_features(cache) -> int:
    return int(np.prod(cache.output_info(cache.output_name(None))["shape"]))


def _learning_curve(best, fractions, path: Path, timeout, n_jobs, cv, pixel_size, estimator=None) -> list[dict]:
    """The best head's rows at each share of the train and val rows, its chosen parameters fixed.

    Each point is a row like the table's (its own process and budget), kept in
    ``learning_curve.jsonl`` and reused by a re-run under the same rules; the
    100% point is the best row itself.
    """
    if best is None or not fractions:
        return []
    done = {r["settings"]: r for r in _load_rows(path) if isinstance(r, dict) and "settings" in r}
    for key, r in list(done.items()):
        if retry_reason(r, timeout):
            del done[key]
    params = {**(best.get("params") or {}), **(best.get("best_params") or {})}
    tasks = [Task(best["cache"], best["cache_key"], best["head"], params, cv, False, pixel_size=pixel_size,
                  train_fraction=float(f), cores=_cores_per_head(n_jobs, len(fractions), "threading"),
                  estimator=estimator, views=best.get("views") or 0, views_mode=best.get("views_mode") or "none")
             for f in sorted(set(fractions)) if 0 < f < 1]
    rows = {t.settings: done[t.settings] for t in tasks if t.settings in done}
    todo = [t for t in tasks if t.settings not in rows]
    cache = open_cache(best["cache"]) if todo else None
    for task, result in _run_tasks(todo, timeout, n_jobs, "threading"):
        row = {**_row(task, cache, result), "train_fraction": task.train_fraction}
        with contextlib.suppress(OSError):  # a lost point costs a re-run, not the report
            _append_row(path, row)
        rows[task.settings] = row
    points = [rows[t.settings] for t in tasks] + [{**best, "train_fraction": 1.0}]
    return [{k: r.get(k) for k in ("head", "features", "train_fraction", "status", "accuracy", "accuracy_ci",
                                   "macro_f1", "n_train", "error")} for r in points]


def check_report_target(out) -> Path:
    """Refuse, before any work, a report directory that is not featcache's; returns it as a Path.

    ``out`` may be new, empty, or a report of featcache's: one holding a
    ``results.jsonl`` of benchmark rows. featcache then writes only its own
    file names there (results.*, report.*, best_model/, learning_curve.jsonl,
    leakage.json, the report's figures, *.png, and while it runs
    .featcache-fitted/, each head's fit until the best is saved).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FeatcacheError(f"--out {out} exists and is not a directory; choose a new report directory")
    if out.is_dir() and any(p for p in out.iterdir() if not _is_fitted_leftover(p)) and not _is_report(out):
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:3])
        raise FeatcacheError(f"--out {out} is not empty and holds no featcache report (it has {shown}); "
                             "choose a new or empty report directory")
    return out


def _is_fitted_leftover(path: Path) -> bool:
    """``out/.featcache-fitted`` of a run killed before its first row: a folder holding only our fits."""
    return (path.name == FITTED and path.is_dir() and not path.is_symlink()
            and all(_FITTED_FILE.fullmatch(p.name) and p.is_file() for p in path.iterdir()))


def _is_report(out: Path) -> bool:
    path = out / RESULTS
    if path.is_symlink() or not path.is_file():
        return False
    try:
        rows = _load_rows(path)  # a line cut by a kill is skipped, as on resume
    except OSError:
        return False
    return any(isinstance(r, dict) and {"settings", "head", "status"} <= set(r) for r in rows)
