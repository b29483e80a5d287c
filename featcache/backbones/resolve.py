"""Resolving what a user named into a :class:`Backbone`: a registry name or a ``.keras`` file, and a weights choice.

The policy above the types: registry entries and user model files are two
kinds of backbone, and this is the one place that tells them apart.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BackboneError
from ..files import sha256_path
from .custom import resolve_model_file
from .registry import Backbone, get_spec


def resolve(name: str | os.PathLike, weights: str | os.PathLike | None = "imagenet", layer: str | None = None) -> Backbone:
    """Resolve a backbone name (or ``.keras`` file) and a weights choice."""
    text = os.fspath(name)
    if text.endswith((".keras", ".h5")):
        return resolve_model_file(text, layer=layer)
    spec = get_spec(text)
    w = "none" if weights is None else os.fspath(weights)
    if w == "none":
        return Backbone(spec, None, {"kind": "random", "init": "featcache-seeded-v1", "seed": 0}, layer)
    if w == "imagenet":
        ident = spec.imagenet_identity() if spec.imagenet_identity else {"kind": "imagenet", "source": spec.origin}
        return Backbone(spec, "imagenet", ident, layer)
    path = Path(w)
    if not path.is_file():
        raise BackboneError(f"weights must be 'imagenet', 'none' or an existing file; {w!r} is none of these")
    return Backbone(spec, str(path.resolve()), {"kind": "file", "file": path.name, "sha256": sha256_path(path)}, layer)
