"""Repeated selection's draws, in the head's process: the train/val split drawn again inside train+val.

Draw 0 is always the cache's own split (so ``repeats=1`` is the plain
protocol); draw r > 0 is a stratified re-draw of the same train+val rows into
a train and a val part of the same sizes, seeded by ``(seed, r)``; with
``cv=K`` a draw is the K folds shuffled again inside train. The test split is
never part of a draw. Every head of a bench sees the same draws, which is
what makes :func:`~featcache.bench.stats.corrected_ttest` a paired test.
"""

from __future__ import annotations

import hashlib

import numpy as np


def draw_state(seed: int, r: int) -> int:
    """The integer seed of draw ``r`` (r > 0) under ``seed``: independent streams, the same on every machine."""
    return int(np.random.SeedSequence([seed, r]).generate_state(1)[0])


def redraw(y: np.ndarray, tr: np.ndarray, va: np.ndarray, r: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``r``'s (train, val) rows: train+val split again, stratified by class, the sizes kept.

    Examples:
        >>> y = np.arange(20) % 2
        >>> tr, va = redraw(y, np.arange(16), np.arange(16, 20), 1, 0)
        >>> len(tr), len(va), sorted(set(tr) | set(va)) == list(range(20))
        (16, 4, True)
    """
    from sklearn.model_selection import train_test_split  # scikit-learn: only in a head's process

    pool = np.sort(np.concatenate([tr, va]))
    state = draw_state(seed, r)
    try:
        t, v = train_test_split(pool, test_size=len(va), stratify=y[pool], random_state=state)
    except ValueError:  # a class too small to stratify: a plain seeded draw
        perm = np.random.default_rng(state).permutation(pool)
        v, t = perm[:len(va)], perm[len(va):]
    return np.sort(t), np.sort(v)


def draws_key(y: np.ndarray, tr: np.ndarray, va: np.ndarray, cv, repeats: int, seed: int) -> str:
    """What makes two rows' draws the same rows (their scores pair): the split, its labels and the draw rule."""
    h = hashlib.sha256()
    for a in (np.sort(tr), np.sort(va), y[np.sort(tr)], y[np.sort(va)]):
        h.update(np.ascontiguousarray(a, np.int64).tobytes())
    h.update(repr((cv, repeats, seed)).encode())
    return h.hexdigest()[:16]


def summary(scores, ratio: float, key: str) -> dict:
    """The row's validation fields over its draws: the mean (the row's ``val_accuracy``), sd and the draws."""
    s = np.asarray(scores, float)
    return {"val_accuracy": float(s.mean()), "val_accuracy_sd": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
            "val_draws": [float(v) for v in s], "val_ratio": float(ratio), "draws_key": key}
