"""The 2-D map of the features: UMAP, or PCA on a cache too small for UMAP's neighbourhoods."""

from __future__ import annotations

import numpy as np

from ..errors import FeatcacheError
from .labels import INSTALL

#: below this many rows the map is PCA (UMAP's neighbour graph needs a few hundred points)
UMAP_MIN_ROWS = 300


def sample_rows(n: int, flagged, limit: int, seed: int = 0) -> np.ndarray:
    """The rows the map draws: all of them up to ``limit``; beyond, every flagged row and a seeded sample of the rest."""
    if n <= limit:
        return np.arange(n)
    first = np.asarray(sorted(flagged), np.int64)[:limit]
    rest = np.setdiff1d(np.arange(n), first)
    pick = np.random.default_rng(seed).choice(rest, limit - len(first), replace=False)
    return np.sort(np.concatenate([first, pick]))


def embed(U: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the unit rows ``U`` and the method's name ("umap" or "pca")."""
    if len(U) < UMAP_MIN_ROWS:
        from sklearn.decomposition import PCA

        if len(U) < 3:
            return np.zeros((len(U), 2)), "pca"
        return PCA(n_components=2, random_state=seed).fit_transform(U), "pca"
    try:
        from umap import UMAP
    except ImportError:
        raise FeatcacheError(f"the 2-D map needs umap-learn: {INSTALL} (or --no-map)") from None
    return UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(U), "umap"
