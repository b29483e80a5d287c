"""Near-duplicate groups (connected components at a cosine threshold, in blocks) and exact duplicates by digest."""

from __future__ import annotations

import numpy as np

#: the bound on each block of similarities (float32): never an n x n matrix
WORK_BYTES = 128 * 1024 * 1024


def unit_rows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32).reshape(len(X), -1)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def near_pairs(U: np.ndarray, threshold: float, work_bytes: int = WORK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j with cosine >= ``threshold``, one block of rows at a time."""
    step = max(1, work_bytes // (4 * max(len(U), 1)))
    left, right = [], []
    for a in range(0, len(U), step):
        sim = U[a:a + step] @ U.T
        i, j = np.nonzero(sim >= threshold - 1e-6)  # float32 rounding: an exact copy can score 0.9999999
        i = i + a
        keep = i < j
        left.append(i[keep])
        right.append(j[keep])
    return (np.concatenate(left), np.concatenate(right)) if left else (np.zeros(0, int), np.zeros(0, int))


def _components(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, comp = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    sizes = np.bincount(comp)
    return [np.flatnonzero(comp == c) for c in np.flatnonzero(sizes > 1)]


def duplicate_groups(U: np.ndarray, digests: list[str] | None, labels: np.ndarray, splits: list[str],
                     threshold: float) -> list[dict]:
    """Exact groups (same digest) and near groups (components at ``threshold``): cross-class groups first.

    Each group: ``{"kind", "rows", "cross_class", "cross_split", "cosine"}``; a near group
    is the component, so it holds its exact copies too.
    """
    groups = []
    if digests is not None:
        by = {}
        for r, d in enumerate(digests):
            by.setdefault(d, []).append(r)
        groups += [{"kind": "exact", "rows": np.array(rs)} for rs in by.values() if len(rs) > 1]
    i, j = near_pairs(U, threshold)
    groups += [{"kind": "near", "rows": rs} for rs in _components(len(U), i, j)]
    for g in groups:
        rs = g["rows"]
        given = {int(labels[r]) for r in rs if labels[r] >= 0}
        g["cross_class"] = len(given) > 1
        g["cross_split"] = len({splits[r] for r in rs}) > 1
        sub = U[rs]
        g["cosine"] = float((sub @ sub.T).min()) if len(rs) <= 512 else float(threshold)
    return sorted(groups, key=lambda g: (not g["cross_class"], g["kind"] != "exact", -len(g["rows"])))
