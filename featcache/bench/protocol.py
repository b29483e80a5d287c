"""The protocol, in the head's process: select on val (or CV in train), refit on train+val, test once.

One function per selection strategy (:data:`featcache.heads.SELECTIONS`),
each returning a :class:`Selected`; the head's spec names its strategy:

* ``early_stopping`` (Keras heads): one fit on train, early-stopping on val.
* ``path`` (logistic regression): the grid walked in ascending regularisation
  strength order, each fit warm-started from the last, and the refit on
  train+val starts from the chosen point's solution.
* ``calibrated_on_val`` (ridge, linear SVM): fit on train and calibrate the
  decision function on val by temperature scaling, which keeps every
  prediction's class, instead of refitting three folds; a ``one_svd`` head
  takes all its alphas from one SVD (``RidgeClassifierCV``'s GCV).
* ``grid``: the points scored on val, spread across the head's cores with
  BLAS threads capped per job, then refit on train+val.
* ``out_of_bag`` (random forest): one fit on train+val; its out-of-bag
  accuracy is the row's validation figure.
* ``fit_once``: one fit on train; val only scores it.

``cv=K`` chooses by K-fold cross-validation inside train instead, whatever
the strategy (Keras heads still early-stop).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field

import joblib
import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import RidgeClassifierCV
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedGroupKFold, StratifiedKFold
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from ..errors import FeatcacheError
from ..heads import HeadSpec, absent_classes, get_head_spec, make_head, proba_and_labels
from ..heads.custom import user_head
from ..heads.fitting import fit_head, with_views
from ..store import open_cache
from ..train import metrics, split_masks
from .pixels import pixel_features
from .progress import epoch_progress, progress
from .repeats import draw_state, draws_key, redraw, summary
from .tasks import Task, task_spec


@dataclass
class Rows:
    """A task's rows: features, labels, the split indices, and the train images' views."""
    X: np.ndarray
    y: np.ndarray
    tr: np.ndarray
    va: np.ndarray
    te: np.ndarray
    draw: np.ndarray | None = None  # a Keras head's views, drawn one per epoch
    groups: np.ndarray | None = None  # the image each train row shows (views as rows), for CV folds
    notes: list = field(default_factory=list)
    split: tuple = ()  # (train, val) before the row cap and views: what a repeat's re-draw splits again
    score_only: bool = False  # a repeat's draw: its validation score is wanted, not a refit
    fold_seed: int = 0  # the CV folds' shuffle


@dataclass(frozen=True)
class Selected:
    """What a selection strategy returns: the fitted head, its chosen setting, and how it was fitted."""
    estimator: object
    params: dict
    val_accuracy: float | None
    fit_rows: np.ndarray
    select_seconds: float
    fit_seconds: float
    notes: tuple = ()
    draw_scores: tuple = ()  # CV: the chosen setting's score on each fold


def evaluate(task: Task) -> dict:
    """Select on val (or CV in train), refit on train+val, test once: the row's measured fields."""
    cores = task.cores or os.cpu_count() or 1
    spec = task_spec(task)
    _cap_threads(cores, spec.kind == "keras")
    with threadpool_limits(cores):
        rows = load_rows(task, spec)
        chosen = select(task, spec, rows, cores)
        draws = repeated(task, spec, rows, chosen, cores)
    est, y, te = chosen.estimator, rows.y, rows.te
    progress("fitted; predicting the test split")
    t2 = time.perf_counter()
    classes = np.unique(y[y >= 0])  # every class of the cache: one the head never saw has zero probability
    proba, pred = proba_and_labels(est, rows.X[te], classes)  # the test split, touched once
    predict_s = time.perf_counter() - t2
    m = metrics(y[te], proba, classes, pred)
    if task.model_path:  # the row's own estimator: best_model/ is this very fit
        _save_fit(est, task.model_path)
    labels = sorted(set(y[te].tolist()) | set(est.classes_.tolist()))
    return {
        **{k: m.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")},
        "val_accuracy": chosen.val_accuracy, **draws, "best_params": chosen.params, "fit_seconds": chosen.fit_seconds,
        "select_seconds": chosen.select_seconds,
        "predict_seconds_per_1000": predict_s / max(len(te), 1) * 1000, "n_train": int(len(chosen.fit_rows)),
        "n_test": int(len(te)), "note": "; ".join(rows.notes + list(chosen.notes)),
        "fit_splits": ["train"] if len(chosen.fit_rows) == len(rows.tr) else ["train", "val"],
        "confusion": confusion_matrix(y[te], pred, labels=labels).tolist(),
        "confusion_labels": labels,
        # in test-row order: the child turns these into bootstrap intervals; the report's leakage check and
        # per-class table read the predictions
        "y_test": y[te].tolist(), "test_predictions": pred.tolist(),
    }


def repeated(task: Task, spec: HeadSpec, rows: Rows, chosen: Selected, cores: int) -> dict:
    """The row's validation fields over ``task.repeats`` draws (:mod:`.repeats`): draw 0 is ``chosen``'s own,
    each other draw runs the same selection again on its rows, scored only (its fit is never the row's)."""
    if task.repeats <= 1:
        return {"repeats": 1}
    tr, va = rows.split
    cv = task.cv if spec.strategy != "early_stopping" else None  # Keras heads early-stop on val even with cv
    if cv:  # R x K folds inside train: the folds shuffled again
        scores = list(chosen.draw_scores)
        for r in range(1, task.repeats):
            again = dataclasses.replace(load_rows(task, spec), score_only=True, fold_seed=draw_state(task.seed, r))
            scores += select(task, spec, again, cores).draw_scores
        ratio = 1 / (cv - 1)
    elif len(va) and chosen.val_accuracy is not None:
        scores = [chosen.val_accuracy]
        for r in range(1, task.repeats):
            again = load_rows(task, spec, split=redraw(rows.y, tr, va, r, task.seed))
            scores.append(select(task, spec, dataclasses.replace(again, score_only=True), cores).val_accuracy)
        ratio = len(va) / len(tr)
    else:
        return {"repeats": 1}  # no validation rows to draw again
    progress(f"validation scored on {task.repeats} draws")
    return {"repeats": task.repeats, **summary(scores, ratio, draws_key(rows.y, tr, va, cv, task.repeats, task.seed))}


def load_rows(task: Task, spec: HeadSpec, split: tuple | None = None) -> Rows:
    """The task's features and splits, with its learning-curve share, row cap and views applied; ``split``:
    a repeat's (train, val) rows instead of the cache's."""
    progress("loading the features")
    cache = open_cache(task.cache, target=task.target or None)
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
    if split is not None:
        tr, va = split
    pool = (tr, va)
    limit = spec.row_cap
    if limit and task.views and task.views_mode == "rows":  # the cap is on rows fitted: views are rows too
        limit = max(1, limit // (1 + task.views))
    if limit and len(tr) > limit:
        tr = _subsample(tr, y, limit)
        notes.append(f"train subsampled to {limit:,} images")
    absent = absent_classes(y[tr], np.unique(y[y >= 0]))
    if absent:  # a rare class whose images are all in val or test: the heads give it zero probability
        notes.append("classes absent from train: " + ", ".join(cache.class_name(c) for c in absent))
    rows = Rows(X, y, tr, va, te, notes=notes, split=pool)
    if task.views:
        V = cache.views_of(tr, views=task.views).reshape(task.views, len(tr), -1).astype(np.float32)
        _add_views(rows, V, task.views_mode)
        notes.append(f"{task.views} augmented views per train image as {task.views_mode}")
    return rows


def _add_views(rows: Rows, V: np.ndarray, mode: str) -> None:
    """The train images' views: more rows (appended to X), their mean, or a Keras head's draw."""
    if mode == "draw":
        rows.draw = V
    else:  # in place: these rows are the head process's own
        rows.X, rows.y, rows.tr, rows.groups = with_views(rows.X, rows.y, rows.tr, V, mode, copy=False)


def select(task: Task, spec: HeadSpec, rows: Rows, cores: int) -> Selected:
    """The head's strategy (its spec's), or CV when ``task.cv``; a strategy needing val falls back to one fit."""
    strategy = spec.strategy
    progress(f"features loaded ({len(rows.tr):,} train rows); fitting")
    if strategy == "early_stopping":
        return early_stopping(task, rows, cores)
    if task.cv:
        return cross_validated(task, spec, rows, cores)
    if strategy == "out_of_bag" and rows.groups is None \
            and _make(task, 1, **task.params).get_params().get("clf__bootstrap", True):
        # (not with views as rows: an image's views would be out of bag for trees that trained on its others)
        return out_of_bag(task, rows, cores)
    if strategy == "calibrated_on_val" and len(rows.va):
        return calibrated_on_val(task, spec, rows, cores)
    cands = _candidates(spec, task.params)
    if strategy in ("path", "grid") and len(cands) > 1 and len(rows.va):
        return path(task, spec, cands, rows, cores) if strategy == "path" else grid(task, cands, rows, cores)
    return fit_once(task, rows, cores)


def early_stopping(task: Task, rows: Rows, cores: int) -> Selected:
    """One fit on train, early-stopping on val: that is a Keras head's selection, and its model is the row's."""
    X, y, tr, va = rows.X, rows.y, rows.tr, rows.va
    t0 = time.perf_counter()
    est = _make(task, cores, **task.params)
    own = est.get_params()["clf__callbacks"]
    est.set_params(clf__callbacks=[*(own or ()), epoch_progress(f"fitting on {len(tr):,} train rows")])
    fit_head(est, X, y, tr, val=va, draw=rows.draw)
    est.set_params(clf__callbacks=own)  # the saved head carries no progress hook
    val_acc = float(est.score(X[va], y[va])) if len(va) else None
    return Selected(est, dict(task.params), val_acc, tr, 0.0, time.perf_counter() - t0)


def cross_validated(task: Task, spec: HeadSpec, rows: Rows, cores: int) -> Selected:
    """The grid chosen by K-fold CV inside train, then refit on the whole train split."""
    X, y, tr = rows.X, rows.y, rows.tr
    t0 = time.perf_counter()
    grid = {k: v for k, v in (spec.grid or {}).items() if k not in task.params}
    # views of one image stay in one fold: a view of a held-out image is never trained on
    folds = (StratifiedKFold(task.cv, shuffle=True, random_state=rows.fold_seed) if rows.groups is None
             else StratifiedGroupKFold(task.cv, shuffle=True, random_state=rows.fold_seed))
    prefixed = {spec.param_prefix + k: v for k, v in grid.items()}
    search = GridSearchCV(_make(task, cores, **task.params), prefixed or {}, cv=folds, n_jobs=1)
    search.fit(X[tr], y[tr], **({"groups": rows.groups} if rows.groups is not None else {}))
    best = {**task.params, **{k[len(spec.param_prefix):]: v for k, v in search.best_params_.items()}}
    folds_scores = tuple(float(search.cv_results_[f"split{i}_test_score"][search.best_index_])
                         for i in range(task.cv))
    select_s = time.perf_counter() - t0
    if rows.score_only:
        return Selected(None, best, float(search.best_score_), tr, select_s, 0.0, draw_scores=folds_scores)
    progress(f"chose {best} by {task.cv}-fold CV; refitting it on train")
    t1 = time.perf_counter()
    est = fit_head(_make(task, cores, **best), X, y, tr)
    return Selected(est, best, float(search.best_score_), tr, select_s, time.perf_counter() - t1,
                    draw_scores=folds_scores)


def out_of_bag(task: Task, rows: Rows, cores: int) -> Selected:
    """One fit on train+val: its out-of-bag accuracy is the held-out figure, and no refit is needed."""
    t0 = time.perf_counter()
    fit_idx = np.concatenate([rows.tr, rows.va])
    est = fit_head(_make(task, cores, **task.params).set_params(clf__oob_score=True), rows.X, rows.y, fit_idx)
    return Selected(est, dict(task.params), float(est.steps[-1][1].oob_score_), fit_idx, 0.0,
                    time.perf_counter() - t0, ("fit on train+val; val accuracy out-of-bag",))


def fit_once(task: Task, rows: Rows, cores: int) -> Selected:
    """No grid: one fit on train; val scores it."""
    X, y, tr, va = rows.X, rows.y, rows.tr, rows.va
    t0 = time.perf_counter()
    est = fit_head(_make(task, cores, **task.params), X, y, tr)
    val_acc = float(est.score(X[va], y[va])) if len(va) else None
    return Selected(est, dict(task.params), val_acc, tr, 0.0, time.perf_counter() - t0)


def path(task: Task, spec: HeadSpec, cands: list[dict], rows: Rows, cores: int) -> Selected:
    """A regularisation path chosen on val (:func:`_path`), refit on train+val from the chosen point."""
    t0 = time.perf_counter()
    best, val_acc, warm, n_fitted = _path(task.head, cands, rows.X, rows.y, rows.tr, rows.va)
    note = f"{spec.path_param} path: {n_fitted} fits over its log grid, refined to half decades"
    return _refit(task, rows, cores, best, val_acc, warm, t0, (note,))


def grid(task: Task, cands: list[dict], rows: Rows, cores: int) -> Selected:
    """Every grid point scored on val, spread across ``cores``; the best refit on train+val."""
    t0 = time.perf_counter()
    best, val_acc = _grid_on_val(task, cands, rows.X, rows.y, rows.tr, rows.va, cores)
    return _refit(task, rows, cores, best, val_acc, None, t0)


def _refit(task, rows: Rows, cores, best, val_acc, warm, t0, notes=()) -> Selected:
    """Refit the chosen setting on train+val, from ``warm``'s coefficients when it has them."""
    y = rows.y
    fit_idx = np.concatenate([rows.tr, rows.va])
    select_s = time.perf_counter() - t0
    if rows.score_only:
        return Selected(None, best, val_acc, fit_idx, select_s, 0.0)
    progress(f"chose {best} on val; refitting it on train+val ({len(fit_idx):,} rows)")
    t1 = time.perf_counter()
    est = _make(task, cores, **best)
    if warm is not None and len(warm["coef_"]) == _coef_rows(np.unique(y[fit_idx])):
        # start the refit from the chosen point's solution (not when val brings a class train lacks)
        est.set_params(clf__warm_start=True)
        for k, v in warm.items():
            setattr(est.steps[-1][1], k, v)
    fit_head(est, rows.X, y, fit_idx)
    return Selected(est, best, val_acc, fit_idx, select_s, time.perf_counter() - t1, tuple(notes))


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
    key = get_head_spec(head).path_param
    order = sorted(range(len(cands)), key=lambda i: cands[i].get(key, 0))
    pipe = make_head(head, **cands[order[0]])
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
        progress(f"regularisation path: {len(scores)} settings scored on val")

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


def _grid_on_val(task: Task, cands: list[dict], X, y, tr, va, cores: int):
    """Score every grid point on val, the points spread across ``cores`` with BLAS threads capped per job."""
    jobs = max(1, min(cores, len(cands)))
    done = []

    def score(c):
        s = _make(task, max(1, cores // jobs), **c).fit(X[tr], y[tr]).score(X[va], y[va])
        done.append(s)  # list.append is atomic across threads
        progress(f"grid: {len(done)} of {len(cands)} settings scored on val")
        return s

    with threadpool_limits(max(1, cores // jobs)):
        scores = Parallel(n_jobs=jobs, backend="threading")(delayed(score)(c) for c in cands)
    b = int(np.argmax(scores))
    return cands[b], float(scores[b])


def calibrated_on_val(task: Task, spec: HeadSpec, rows: Rows, cores: int) -> Selected:
    """Fit the base classifier on train (choosing its setting on val), then calibrate it on val.

    Temperature scaling fits one number on val and keeps every row's
    predicted class, so the row's validation accuracy is the base
    classifier's own.
    """
    y, tr, va = rows.y, rows.tr, rows.va
    t0 = time.perf_counter()
    cands = _candidates(spec, task.params)
    pipe = make_head(task.head, **cands[0])
    pre = pipe[:-1] if len(pipe) > 1 else None
    Xtr = pre.fit_transform(rows.X[tr]) if pre is not None else rows.X[tr]
    Xva = pre.transform(rows.X[va]) if pre is not None else rows.X[va]
    if spec.one_svd and len(cands) > 1:  # every alpha from one SVD (generalised cross-validation)
        alphas = sorted({c["alpha"] for c in cands})
        others = {k: v for k, v in _base(task, cands[0], cores).get_params().items() if k != "alpha"}
        cv = RidgeClassifierCV(alphas=alphas, fit_intercept=others.get("fit_intercept", True)).fit(Xtr, y[tr])
        best = {**task.params, "alpha": float(cv.alpha_)}
        base = _base(task, best, cores).fit(Xtr, y[tr])
    else:
        best, base = _base_on_val(task, cands, Xtr, y[tr], Xva, y[va], cores)
    val_acc = float(base.score(Xva, y[va]))
    select_s = time.perf_counter() - t0
    if rows.score_only:
        return Selected(None, best, val_acc, tr, select_s, 0.0)
    progress(f"chose {best} on val; calibrating on val")
    t1 = time.perf_counter()
    known = np.isin(y[va], base.classes_)  # val rows of a class train lacks cannot calibrate its scores
    calibrated = CalibratedClassifierCV(FrozenEstimator(base), method="temperature").fit(Xva[known], y[va][known])
    steps = (list(pre.steps) if pre is not None else []) + [("clf", calibrated)]
    return Selected(Pipeline(steps), best, val_acc, tr, select_s, time.perf_counter() - t1,
                    ("fit on train, calibrated on val",))


def _base(task: Task, params: dict, n_jobs: int):
    """The calibrated head's base classifier with ``params``, unfitted."""
    return clone(_make(task, n_jobs, **params).steps[-1][1].estimator)


def _base_on_val(task: Task, cands, Xtr, ytr, Xva, yva, cores: int):
    """Each point's base classifier fitted on train (spread across ``cores``); the best on val and its fit."""
    jobs = max(1, min(cores, len(cands)))
    done = []

    def fit(c):
        b = _base(task, c, max(1, cores // jobs)).fit(Xtr, ytr)
        done.append(c)
        progress(f"grid: {len(done)} of {len(cands)} settings fitted on train")
        return b

    with threadpool_limits(max(1, cores // jobs)):
        fitted = Parallel(n_jobs=jobs, backend="threading")(delayed(fit)(c) for c in cands)
    scores = [float(b.score(Xva, yva)) for b in fitted]
    i = int(np.argmax(scores))
    return cands[i], fitted[i]


def _make(task: Task, cores: int, **params):
    """``make_head``, with the classifier's own ``n_jobs`` set to the head's cores (for threaded heads); a
    user's estimator: a clone with ``params`` in featcache's Pipeline shape (its ``n_jobs`` its own)."""
    if task.estimator is not None:
        return user_head(task.estimator, [], params)[1]
    est = make_head(task.head, **params)
    spec = get_head_spec(task.head)
    if spec.threaded and cores and "n_jobs" not in params:
        est.set_params(**{spec.param_prefix + "n_jobs": int(cores)})
    return est


def _candidates(spec: HeadSpec, fixed: dict) -> list[dict]:
    grid = {k: v for k, v in (spec.grid or {}).items() if k not in fixed}
    if not grid:
        return [dict(fixed)]
    return [{**fixed, **g} for g in ParameterGrid(grid)]


def _subsample(idx: np.ndarray, y: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
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


def _cap_threads(cores: int, keras: bool) -> None:
    """Keep a head to its share of the cores: BLAS through threadpoolctl (in evaluate), TensorFlow here."""
    if keras and cores < (os.cpu_count() or 1):
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(cores))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(max(1, min(2, cores))))
        try:
            import tensorflow as tf  # TensorFlow is heavy: imported only by a Keras head's process

            tf.config.threading.set_intra_op_parallelism_threads(cores)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, cores)))
        except (ImportError, RuntimeError):  # another backend, or TensorFlow already started
            pass


def _save_fit(est, path: str) -> None:
    """Leave the row's fitted head at ``path`` for best_model/; best effort: a head that cannot be saved
    (a full disk, state that does not pickle) costs a refit in the parent should it be the best, never its row."""
    progress("fitted and measured; saving the fitted head")
    try:
        joblib.dump(est, path + ".part")
        os.replace(path + ".part", path)
    except Exception:  # noqa: BLE001 - any failure: the parent fits the best head again instead
        with contextlib.suppress(OSError):
            os.remove(path + ".part")
