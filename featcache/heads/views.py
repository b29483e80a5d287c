"""Training on a cache's augmented views: which rows a head fits on, and the Keras heads' per-epoch draw.

A cache extracted with ``--views K`` holds K augmented views of every
train-split image beside its plain view (:meth:`featcache.store.Cache.views_of`).
Each head's entry (:class:`~featcache.heads.HeadSpec`, ``featcache heads``)
says how it uses them:

* ``rows``: every view is one more training row with its image's label (the
  linear heads, naive Bayes, the scikit-learn MLP, your own estimator): K + 1
  times the rows, the usual offline augmentation;
* ``mean``: each image's features averaged over its plain view and its views,
  as many rows as without views (k-NN, random forest, boosting, which would
  otherwise fit or predict K + 1 times slower);
* ``draw``: Keras heads see one view per image per epoch, drawn from the plain
  one and the K others with the head's ``random_state`` and the epoch, so the
  epoch stays one pass over the images.

Validation and test rows are always the plain view: only train images have views.
"""

from __future__ import annotations

import numpy as np

from ..errors import FeatcacheError

#: what ``train(views=...)`` and ``bench(views=...)`` accept: ``auto`` is each head's own mode
MODES = ("auto", "rows", "mean", "draw", "none")


def resolve_mode(requested: str, head_mode: str, keras: bool, n_views: int) -> str:
    """The mode a head trains with: ``none`` when the cache has no views; a one-line error for a mode it lacks."""
    if requested not in MODES:
        raise FeatcacheError(f"views must be one of {', '.join(MODES)}, got {requested!r}")
    if requested == "none" or not n_views:
        return "none"
    mode = head_mode if requested == "auto" else requested
    if keras and mode != "draw":
        raise FeatcacheError(f"a Keras head draws one view per image per epoch: use views 'draw' (or 'auto', "
                             f"'none'), not {mode!r}")
    if not keras and mode == "draw":
        raise FeatcacheError("views 'draw' is for Keras heads; a scikit-learn head takes 'rows' or 'mean'")
    return mode


def expand(X: np.ndarray, y: np.ndarray, V: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training rows of ``mode`` from plain rows ``X`` (labels ``y``) and their views ``V`` ``(K, n, ...)``.

    Returns ``(X_fit, y_fit, groups)``: ``groups[i]`` is the image row ``i``
    shows (an index into ``X``), what a cross-validation must keep in one fold.
    """
    n = len(X)
    if mode == "rows":
        flat = V.reshape((V.shape[0] * n,) + X.shape[1:]).astype(X.dtype, copy=False)
        reps = (1 + len(V),) + (1,) * (np.ndim(y) - 1)  # a multi-output or multi-label y: whole rows repeated
        return np.concatenate([X, flat]), np.tile(y, reps), np.tile(np.arange(n), 1 + len(V))
    if mode == "mean":
        mean = (X.astype(np.float32) + V.astype(np.float32).sum(0)) / (1 + len(V))
        return mean.astype(X.dtype, copy=False), y, np.arange(n)
    return X, y, np.arange(n)


def choice(seed: int, epoch: int, n_rows: int, n_views: int) -> np.ndarray:
    """Which view each of ``n_rows`` images shows in ``epoch``: 0 the plain one, 1 ... ``n_views`` the others."""
    return np.random.default_rng([int(seed), int(epoch), 7]).integers(0, n_views + 1, n_rows)


def drawing(take_plain, take_views: list, seed: int, n_rows: int):
    """``draw(epoch)`` -> ``take(idx)``: training rows showing each image's view of that epoch.

    ``take_plain(idx)`` and each ``take_views[v - 1](idx)`` return float32 rows
    at selection positions ``idx``.
    """
    k = len(take_views)

    def draw(epoch: int):
        shown = choice(seed, epoch, n_rows, k)

        def take(idx):
            out = take_plain(idx)
            which = shown[idx]
            for v in range(1, k + 1):
                sel = which == v
                if sel.any():
                    out[sel] = take_views[v - 1](idx[sel])
            return out

        return take

    return draw
