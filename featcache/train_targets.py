"""Training a head on a regression or multi-label target attached to a cache (docs/TARGETS.md).

Rows without a value for the target are skipped; a multi-label head's
per-label thresholds are chosen on the val split; every split is measured
with the kind's metrics (:mod:`featcache.bench.metrics`).
"""

from __future__ import annotations

import time

import numpy as np

from .errors import FeatcacheError
from .heads import get_head_spec, is_keras, validate_head


def _scores(pipe, X, kind: str) -> np.ndarray:
    """Predicted values (regression) or per-label positive scores (multi-label)."""
    if kind == "regression":
        return np.asarray(pipe.predict(X), dtype=np.float64)
    proba = pipe.predict_proba(X)
    if isinstance(proba, list):  # KNeighbors on an indicator matrix: one (rows, 2) array per label
        classes = getattr(pipe.steps[-1][1] if hasattr(pipe, "steps") else pipe, "classes_", None)
        # a label train never saw positive has the one class 0: its probability of 1 is 0
        return np.stack([p[:, -1] if classes is None or np.ravel(c)[-1] == 1 else np.zeros(len(p))
                         for p, c in zip(proba, classes if classes is not None else proba)], axis=1)
    return np.asarray(proba, dtype=np.float64)


def target_masks(cache, t, val_fraction: float, test_fraction: float) -> dict:
    """Each split's rows with a value for target ``t``: the cache's own split of each row, unlabelled rows
    included (``split_masks`` leaves them out, but a mosaic folder's images have targets and no class)."""
    from .splits import SPLIT_NAMES, assign_splits

    names = assign_splits(cache.ids(), cache.splits(), val_fraction=val_fraction, test_fraction=test_fraction,
                          labels=cache.labels())
    return {s: (names == s) & t.mask for s in SPLIT_NAMES}


def train_target(cache, head: str, target: str, *, params: dict | None = None, preprocess: str | None = None,
                 val_fraction: float, test_fraction: float, features: np.ndarray | None = None,
                 views: str = "auto", train_fraction: float = 1.0, prepare=None) -> dict:
    """Fit ``head`` for ``target`` on its train rows with a value: ``{"pipe", "metrics", "target", "test", ...}``.

    ``features``: other rows to learn from in the cache's row order (the bench's raw-pixel baseline);
    ``test`` is ``(true, predicted)`` on the test rows (predicted: values, or per-label scores).
    ``views``: how the train rows' augmented views join them (:mod:`.heads.views`: auto, rows, mean, none); a
    view has its image's target values. ``train_fraction``: a learning-curve point, a seeded share of the
    train and val rows (the test split whole). ``prepare(head, pipe)``: called on the head before it fits
    (``train --tensorboard`` adds its callback there).
    """
    from .bench.metrics import choose_thresholds, multilabel_metrics, regression_metrics

    t = cache.target(target)
    kind = t.kind
    head, pipe, head_views = _head_for(head, preprocess, params, kind, target)
    if prepare is not None:
        prepare(head, pipe)
    masks = _share(target_masks(cache, t, val_fraction, test_fraction), train_fraction)
    if not masks["train"].any():
        raise FeatcacheError(f"target {target!r} has no value on any train row of {cache.path}")
    X = cache.features() if features is None else features
    X = X.reshape(len(X), -1).astype(np.float32)
    y = t.values
    t0 = time.perf_counter()
    fit_x, fit_y, used, draw = _train_rows(cache, X, y, masks["train"], views, head_views, is_keras(pipe),
                                           features is None)
    pipe, chosen = _fit_on_val(head, preprocess, params or {}, kind, pipe, (fit_x, fit_y, draw),
                               (X[masks["val"]], y[masks["val"]]))
    fit_seconds = time.perf_counter() - t0
    thresholds = None
    if kind == "multilabel":
        thresholds = (choose_thresholds(y[masks["val"]], _scores(pipe, X[masks["val"]], kind))
                      if masks["val"].any() else np.full(y.shape[1], 0.5))
    results, test = {}, None
    for split, m in masks.items():
        if not m.any():
            continue
        s = _scores(pipe, X[m], kind)
        results[split] = (regression_metrics(y[m], s) if kind == "regression"
                          else multilabel_metrics(y[m], s, thresholds))
        if split == "test":
            test = (y[m], s)
    card_target = {"name": target, "kind": kind, "names": list(t.names),
                   "rows": {s: int(m.sum()) for s, m in masks.items()}, "sha256": target_sha256(cache, target)}
    if thresholds is not None:
        card_target["thresholds"] = [float(v) for v in thresholds]
    return {"pipe": pipe, "head": head, "metrics": results, "fit_seconds": fit_seconds, "target": card_target, "test": test,
            "best_params": chosen, "thresholds": thresholds, "views": used, "n_train": int(len(fit_x))}


def _share(masks: dict, fraction: float, seed: int = 0) -> dict:
    """A learning-curve point's masks: a seeded ``fraction`` of the train and of the val rows, test whole."""
    if fraction >= 1.0:
        return masks
    rng, out = np.random.default_rng(seed), dict(masks)
    for split in ("train", "val"):
        rows = np.flatnonzero(masks[split])
        out[split] = np.zeros_like(masks[split])
        out[split][rng.permutation(rows)[:max(1, int(round(fraction * len(rows)))) if len(rows) else 0]] = True
    return out


def _head_for(head, preprocess, params, kind: str, target: str):
    """``(name, unfitted pipeline, views mode)`` of a named head or a user's own estimator for a ``kind`` target;
    a head of the wrong kind is a one-line refusal, before any work."""
    if isinstance(head, str):
        spec = get_head_spec(head)
        spec.factory(kind)
        return head, validate_head(head, preprocess, params or {}, target_kind=kind), spec.views
    from .heads import preprocess_steps
    from .heads.custom import user_head

    name, pipe = user_head(head, preprocess_steps(preprocess or "none"), params, kind=kind, target=target)
    return name, pipe, "rows"


def _train_rows(cache, X, y, train, views: str, head_mode: str, keras: bool, cached: bool):
    """``(X, y, (K, mode), draw)`` a head fits: the train rows, with their augmented views as more rows or
    averaged in (a view learns its own image's target), or ``draw`` (a Keras head's views, ``(K, rows, d)``,
    one drawn per image per epoch; else None); raw pixels (not ``cached``) have no views."""
    from .heads.views import expand, resolve_mode

    rows = np.flatnonzero(train)
    n_views = cache.views if cached else 0
    mode = resolve_mode(views, head_mode, keras, n_views)
    if mode == "none":
        return X[rows], y[rows], (0, "none"), None
    V = cache.views_of(rows).reshape(n_views, len(rows), -1).astype(np.float32)
    if mode == "draw":
        return X[rows], y[rows], (n_views, mode), V
    fit_x, fit_y, _groups = expand(X[rows], y[rows], V, mode)
    return fit_x, fit_y, (n_views, mode), None


def _fit(pipe, train: tuple, val: tuple, head: str):
    """Fit ``pipe`` on ``train`` ``(X, y, draw)``: a Keras head early-stops on ``val`` ``(X, y)`` (as
    :func:`featcache.heads.fitting.fit_head` wires it) and draws its views; scikit-learn's ValueError (a user's
    classifier that cannot fit an indicator matrix) is a one-line error."""
    x_tr, y_tr, draw = train
    fit_params = {}
    if is_keras(pipe):
        fit_params["clf__validation_data"] = val if len(val[0]) else None
        if draw is not None:
            fit_params["clf__views"] = draw
    try:
        return pipe.fit(x_tr, y_tr, **fit_params)
    except ValueError as exc:
        lines = str(exc).strip().splitlines()
        raise FeatcacheError(f"head {head} cannot be trained on this target: "
                             f"{lines[0] if lines else type(exc).__name__}") from None


def _fit_on_val(head: str, preprocess, params: dict, kind: str, pipe, train: tuple, val: tuple):
    """``(fitted pipe, chosen params)``: the head's grid for this kind (:data:`~.heads.kinds.GRIDS`, less what
    ``params`` fixes) fitted on ``train`` ``(X, y)``, scored on ``val`` by the kind's metric, the best kept; one
    fit when there is no grid or no val row."""
    from sklearn.metrics import r2_score

    from .bench.metrics import mean_average_precision
    from .heads.kinds import GRIDS

    grid = {k: v for k, v in GRIDS.get(head, {}).get(kind, {}).items() if k not in params}
    x_va, y_va = val
    if not grid or not len(x_va):
        return _fit(pipe, train, val, head), dict(params)
    (key, values), = grid.items()  # one parameter a grid (C): the path is short
    best = None
    for v in values:
        cand = _fit(validate_head(head, preprocess, {**params, key: v}, target_kind=kind), train, val, head)
        s = _scores(cand, x_va, kind)
        score = r2_score(y_va, s) if kind == "regression" else mean_average_precision(y_va, s)
        if best is None or score > best[0]:  # ties: the smaller C, the stronger regularisation, first
            best = (score, cand, {**params, key: v})
    return best[1], best[2]


def target_sha256(cache, name: str) -> str:
    """What a target's values are, as the store checksums them: its file's sha256 (``label``: the rows key)."""
    from .store.targets import LABEL, read_index

    return cache.rows_key if name == LABEL else read_index(cache.path)[name]["sha256"]


#: the metrics a target's training table shows, by kind
TABLE_METRICS = {"regression": ("r2", "mae", "rmse", "spearman"),
                 "multilabel": ("map", "micro_f1", "macro_f1", "subset_accuracy")}


def target_table(res, cache_path):
    """The table ``featcache train --target`` prints: each split's rows and its kind's metrics."""
    from .console import table

    t = res.card["target"]
    names = TABLE_METRICS[t["kind"]]
    rows = [[split, t["rows"][split], *["-" if m.get(k) is None else f"{m[k]:.4f}" for k in names]]
            for split, m in res.metrics.items()]
    return table(f"{res.head} on {cache_path}, target {t['name']} ({t['kind']}, fit {res.fit_seconds:.2f} s)",
                 ["split", "rows", *names], rows)
