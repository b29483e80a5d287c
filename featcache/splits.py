"""Train/val/test splits of a cache's rows.

The source's own splits are used where the cache has a train split; rows
without one (and a missing val or test split, carved out of train) are
assigned by a hash of the item id, so an item
never moves between train, val and test when the dataset grows. The hash is
independent of the label, so each class is split in the same proportions in
expectation (stratified by construction, with no dependence on the others).

A leaf utility (it imports nothing of featcache's but ``errors``), so the
store can hand out splits (``Cache.split``) and every stage agrees on them.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .errors import FeatcacheError

SALT = "featcache-split-v1"
#: the split names, in the order they are reported
SPLIT_NAMES = ("train", "val", "test")
#: the hashed split's default fractions of rows whose source named no split
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2


def hash_unit(item_id: str, salt: str = SALT) -> float:
    """A stable number in [0, 1) for an id."""
    digest = hashlib.sha256(f"{salt}:{item_id}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign_splits(ids, source_splits=None, *, val_fraction: float = VAL_FRACTION,
                  test_fraction: float = TEST_FRACTION, labels=None) -> np.ndarray:
    """Split name ("train", "val" or "test") per row.

    Args:
        ids: the item id of each row.
        source_splits: the source's split per row (None or "" where it named none), or None.
        val_fraction, test_fraction: the hashed fractions where the source gave no split.
        labels: the class of each row (negative: unlabelled), or None. With
            them, a class whose hashed rows all land in val or test keeps one
            (its highest hash) in train; every other row keeps its hashed split.

    Returns:
        An object array of split names, one per row.

    Examples:
        >>> assign_splits(["a", "b"]).tolist()  # doctest: +SKIP
        ['train', 'test']
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise FeatcacheError(f"val and test fractions must be in [0, 1) and sum below 1, got {val_fraction}, {test_fraction}")
    u = np.array([hash_unit(i) for i in ids])
    out = np.where(u < test_fraction, "test", np.where(u < test_fraction + val_fraction, "val", "train")).astype(object)
    if source_splits is None:
        return _train_keeps_every_class(out, np.ones(len(out), bool), u, labels)
    given = np.array([s or "" for s in source_splits], dtype=object)
    has = set(given.tolist()) - {""}
    if "train" not in has:
        # a source that is all one split (e.g. fashion_mnist:test) is split by the hash
        return _train_keeps_every_class(out, np.ones(len(out), bool), u, labels)
    result = np.where(given != "", given, out).astype(object)
    if "val" not in has and "train" in has:
        # carve validation rows out of the source's train split, by the same hash
        v = u < val_fraction / max(1e-9, 1 - (0 if "test" in has else test_fraction))
        result = np.where((given == "train") & v, "val", result)
    if "test" not in has and "train" in has:
        result = np.where((given == "train") & (u >= 1 - test_fraction), "test", result)
    hashed = (given == "") | (given == "train")  # the rows whose split the hash chose (or carved out of train)
    return _train_keeps_every_class(result, hashed, u, labels)


def _train_keeps_every_class(names: np.ndarray, hashed: np.ndarray, u: np.ndarray, labels) -> np.ndarray:
    """``names`` with, for each class that has hashed rows but no train row, its highest-hash one moved to
    train: a rare class is then learnable, and a class that already has a train row moves nothing."""
    if labels is None:
        return names
    labels = np.asarray(labels)
    if labels.shape != names.shape:
        raise FeatcacheError(f"{len(names)} ids but {len(labels)} labels")
    names = names.copy()
    in_train = set(labels[names == "train"].tolist())
    for c in np.unique(labels[(labels >= 0) & hashed]).tolist():
        if c not in in_train:
            rows = np.flatnonzero((labels == c) & hashed)
            names[rows[np.argmax(u[rows])]] = "train"
    return names
