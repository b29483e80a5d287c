"""``pca:N`` as a pipeline step that also fits data with fewer than N rows or features."""

from __future__ import annotations

from sklearn.decomposition import PCA


class AtMostPCA(PCA):
    """PCA to ``n_components``, or to every dimension the data has when it has fewer rows or features.

    ``hist_gb``'s default ``pca:128`` must not fail on a 100-row cache; the
    fitted ``n_components_`` says how many were kept.

    Examples:
        >>> import numpy as np
        >>> AtMostPCA(n_components=128).fit(np.random.default_rng(0).normal(size=(12, 40))).n_components_
        12
    """

    def _fit(self, X):
        asked = self.n_components
        if isinstance(asked, int) and asked > min(X.shape):
            self.n_components = min(X.shape)
            try:
                return super()._fit(X)
            finally:
                self.n_components = asked
        return super()._fit(X)
