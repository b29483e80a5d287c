"""The versions of what produced a cache or a model, recorded beside it: one helper for both.

A leaf module: reading package metadata imports none of the packages, except
Keras when its backend is asked for (it is already loaded wherever a model was
built).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

#: recorded in a cache's manifest: what computed the features
EXTRACTION_PACKAGES = ("featcache", "keras", "tensorflow", "jax", "torch", "h5py", "numpy", "pillow")
#: recorded in a model card: what fitted and pickled the head
HEAD_PACKAGES = ("featcache", "scikit-learn", "keras", "numpy")


def versions(packages=EXTRACTION_PACKAGES, *, backend: bool = True) -> dict:
    """``{package: version}`` for the installed ``packages``, plus python and (``backend``) Keras' backend."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    if backend:
        try:
            import keras

            out["backend"] = keras.backend.backend()
        except Exception:  # noqa: BLE001 - recording only
            out["backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    return out
