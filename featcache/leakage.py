"""Leakage check: test rows whose nearest training row is a (near-)duplicate on the cached features.

Exact and near-duplicate images across splits inflate every accuracy: a
head can recall the training copy instead of generalising. For each test
row this finds the most similar row the heads are fitted on (train and val,
as the benchmark refits on both) by cosine similarity of the cached
features, the bench's own features (the cache's first output). Rows at or
above the threshold (0.98 by default) are the suspects; the report gives
their count, the best head's test accuracy with and without them, and the
pairs as thumbnails read back from the source.
"""

from __future__ import annotations

import numpy as np

from .errors import FeatcacheError
from .store import Cache
from .train import split_masks

#: cosine similarity on the cached features at or above which a test row counts as a near-duplicate
THRESHOLD = 0.98


def _unit(X: np.ndarray) -> np.ndarray:
    from sklearn.preprocessing import normalize

    return normalize(np.asarray(X, np.float32).reshape(len(X), -1))  # L2 rows, float32 kept


#: the working memory of the search: each block of reference rows and each block of similarities stays below it
WORK_BYTES = 256 * 1024 * 1024


def near_duplicates(cache: Cache, threshold: float = THRESHOLD, work_bytes: int = WORK_BYTES,
                    masks: dict | None = None) -> dict:
    """Each test row's most similar fitting row (train or val) and the pairs at or above ``threshold``.

    Memory stays bounded on any cache: the fitting rows are read from the
    shards a block at a time, and each block of similarities is at most
    ``work_bytes``; only the test rows' unit vectors are held whole.

    Args:
        cache: an open cache.
        threshold: cosine similarity from which a pair counts (0.98: near-duplicates; 1.0: exact copies).
        work_bytes: the bound on each block of fitting rows and of similarities (float32).
        masks: the train, val and test row masks (default: the cache's labelled rows'; a regression or
            multi-label target passes the rows that have a value).

    Returns:
        ``{"threshold", "n_test", "n_leaked", "leaked" (bool per test row, in test-row order),
        "pairs": [{"test_row", "train_row", "test_id", "train_id", "cosine"}, ...] most similar first}``;
        rows are the cache's row numbers. The test rows are in the order the bench scores them.

    Examples:
        >>> report = near_duplicates(featcache.open_cache("caches/fm"))  # doctest: +SKIP
        >>> report["n_leaked"], report["pairs"][0]["cosine"]  # doctest: +SKIP
        (12, 0.9993)
    """
    if not 0 < threshold <= 1:
        raise FeatcacheError(f"the leakage threshold must be a cosine in (0, 1], got {threshold!r}")
    masks = split_masks(cache) if masks is None else masks
    fit = np.flatnonzero(masks["train"] | masks["val"])
    te = np.flatnonzero(masks["test"])
    width = int(np.prod(cache.output_info()["shape"]))
    test = _unit(cache.read_rows(te).features) if len(te) else np.zeros((0, width), np.float32)
    ref_rows = max(1, work_bytes // (4 * max(width, 1)))  # fitting rows per block read from the shards
    best_sim = np.full(len(te), -np.inf, np.float32)
    best_row = np.zeros(len(te), np.int64)
    for r in range(0, len(fit), ref_rows):
        rows = fit[r:r + ref_rows]
        ref = _unit(cache.read_rows(rows).features)
        step = max(1, work_bytes // (4 * len(rows)))  # test rows per similarity block
        for a in range(0, len(te), step):
            sim = test[a:a + step] @ ref.T
            j = sim.argmax(1)
            s = sim[np.arange(len(j)), j]
            better = s > best_sim[a:a + step]  # strict: a tie keeps the earlier fitting row
            best_sim[a:a + step][better] = s[better]
            best_row[a:a + step][better] = rows[j[better]]
    leaked = best_sim >= threshold - 1e-6  # float32 rounding: an exact copy can score 0.9999999
    ids = cache.ids()
    order = np.flatnonzero(leaked)[np.argsort(-best_sim[leaked], kind="stable")]
    pairs = [{"test_row": int(te[i]), "train_row": int(best_row[i]), "test_id": ids[te[i]],
              "train_id": ids[best_row[i]], "cosine": float(min(best_sim[i], 1.0))} for i in order]
    return {"threshold": float(threshold), "n_test": int(len(te)), "n_leaked": int(leaked.sum()),
            "leaked": leaked.tolist(), "pairs": pairs}


def accuracy_with_and_without(y_true, y_pred, leaked) -> dict:
    """Test accuracy on every test row, and on the rows that are not near-duplicates.

    Args:
        y_true: test labels, in test-row order.
        y_pred: a head's predictions, same order.
        leaked: the ``leaked`` flags of :func:`near_duplicates`.

    Returns:
        ``{"all": accuracy, "without": accuracy without the leaked rows (None if none are left),
        "leaked": accuracy on the leaked rows alone (None if there are none)}``.

    Examples:
        >>> accuracy_with_and_without([0, 1, 1], [0, 1, 0], [True, False, False])
        {'all': 0.6666666666666666, 'without': 0.5, 'leaked': 1.0}
    """
    t, p, m = np.asarray(y_true), np.asarray(y_pred), np.asarray(leaked, bool)
    if not (len(t) == len(p) == len(m)):
        raise FeatcacheError("the predictions do not match the cache's test rows")
    hit = t == p

    def acc(sel):
        return float(hit[sel].mean()) if sel.any() else None

    return {"all": acc(np.ones_like(m)), "without": acc(~m), "leaked": acc(m)}


def pair_thumbnails(cache: Cache, pairs: list[dict], size: int = 64) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The images of each (test, training) pair, read back from the cache's source at ``size`` px.

    Args:
        cache: the cache the pairs came from.
        pairs: the ``pairs`` of :func:`near_duplicates` (all are read: pass a slice).
        size: thumbnail side in pixels.

    Returns:
        A list of (test image, training image) uint8 arrays, or None when the
        source cannot be reopened (made from in-memory arrays, moved or changed).
    """
    from .sources import reopen

    if not pairs:
        return []
    try:
        src = reopen(cache.source_address)
    except Exception:  # noqa: BLE001 - thumbnails are decoration; the counts stand without them
        return None
    by_id = {it.id: it for it in src.items}
    wanted = [p["test_id"] for p in pairs] + [p["train_id"] for p in pairs]
    if any(i not in by_id for i in wanted):
        return None
    from .decode import parse_background

    background = parse_background(cache.params.get("background", "white"))  # as the CNN saw them
    batch = src.read([by_id[i] for i in wanted], (size, size), background=background)
    if len(batch.items) != len(wanted):
        return None
    got = {it.id: im for it, im in zip(batch.items, batch.images)}
    return [(got[p["test_id"]], got[p["train_id"]]) for p in pairs]
