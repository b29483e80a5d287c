"""The one fitting routine: what train, bench's per-head fits and bench's best model all call.

:func:`with_views` expands the train images' augmented views into fitting
rows (:mod:`featcache.heads.views`) and :func:`fit_head` fits a head on
rows, wiring a Keras head's validation split and its views in one place.
"""

from __future__ import annotations

import numpy as np

from . import is_keras
from .views import expand


def with_views(X: np.ndarray, y: np.ndarray, rows: np.ndarray, V: np.ndarray, mode: str, copy: bool = True):
    """``(X, y, rows, groups)`` where fitting on ``X[rows]`` fits the train ``rows`` with their views ``V``.

    ``V`` is ``(K, len(rows), ...)``. ``rows`` mode appends the views as more
    rows (``groups`` says which image each fitting row shows, for CV folds);
    ``mean`` puts each image's mean over its views in its own row (of a copy
    unless ``copy`` is False); ``draw`` and ``none`` leave the rows as they are
    (a Keras head draws from ``V`` itself).
    """
    if mode not in ("rows", "mean"):
        return X, y, rows, None
    Xt, yt, g = expand(X[rows], y[rows], V, mode)
    if mode == "mean":
        X = X.copy() if copy else X
        X[rows] = Xt
        return X, y, rows, None
    extra = np.arange(len(X), len(X) + len(Xt) - len(rows))
    X, y = np.concatenate([X, Xt[len(rows):]]), np.concatenate([y, yt[len(rows):]])
    return X, y, np.concatenate([rows, extra]), np.concatenate([rows, rows[g[len(rows):]]])


def fit_head(pipe, X: np.ndarray, y: np.ndarray, rows: np.ndarray, *, val: np.ndarray | None = None,
             draw: np.ndarray | None = None, block_sizes=None, **fit_params):
    """Fit ``pipe`` on ``X[rows]``; a Keras head early-stops on ``X[val]`` (none when empty) and draws one of
    ``draw``'s views per image per epoch, in ``block_sizes`` blocks when given. Returns ``pipe``."""
    if is_keras(pipe):
        fit_params["clf__validation_data"] = (X[val], y[val]) if val is not None and len(val) else None
        if draw is not None:
            fit_params["clf__views"] = draw
        if block_sizes is not None:
            fit_params["clf__block_sizes"] = block_sizes
    return pipe.fit(X[rows], y[rows], **fit_params)
