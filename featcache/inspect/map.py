"""The 2-D map of the features: UMAP, or PCA on a cache too small for UMAP's neighbourhoods."""

from __future__ import annotations

import numpy as np

from ..errors import FeatcacheError
from .labels import INSTALL

#: below this many rows the map is PCA (UMAP's neighbour graph needs a few hundred points)
UMAP_MIN_ROWS = 300


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
