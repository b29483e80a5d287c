"""A user's own Keras model file as a backbone, cut at a named layer.

This is how a CNN trained on a source domain becomes the feature extractor
for a target domain. The file is loaded with Keras' safe mode on (no
arbitrary Python from lambdas), and its sha256 is part of the cache key.
The model receives float pixels in 0..255 unless ``preprocess`` says
otherwise, so put any rescaling inside the model.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ..errors import BackboneError
from ..files import sha256_path
from .registry import Backbone, BackboneSpec


def _input_size_from_archive(path: Path) -> tuple[int, int] | None:
    """Read the input (height, width) from a .keras archive's config, without Keras."""
    try:
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, RecursionError):
        return None
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "InputLayer":
                shape = node.get("config", {}).get("batch_shape") or node.get("config", {}).get("batch_input_shape")
                if shape and len(shape) == 4 and shape[1] and shape[2]:
                    return int(shape[1]), int(shape[2])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def load_model_file(path: str):
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise BackboneError(f"cannot load Keras model {path}: {exc}") from exc


def resolve_model_file(path: str, layer: str | None = None) -> Backbone:
    p = Path(path)
    if not p.is_file():
        raise BackboneError(f"model file {path} does not exist")
    if p.suffix == ".keras" and not zipfile.is_zipfile(p):
        raise BackboneError(f"{path} is not a .keras archive (it is not a zip file)")
    size = _input_size_from_archive(p) if p.suffix == ".keras" else None
    resolved = str(p.resolve())

    def build(input_shape, weights):
        model = load_model_file(resolved)
        shape = tuple(model.input_shape[1:3]) if len(model.input_shape) == 4 else None
        if shape and all(shape) and shape != tuple(input_shape[:2]):
            raise BackboneError(f"{p.name} takes {shape[0]}x{shape[1]} images; "
                                f"drop --image-size or set it to {shape[0]}")
        if len(model.input_shape) != 4 or model.input_shape[-1] != 3:
            raise BackboneError(f"{p.name} must take N x H x W x 3 images, it takes {model.input_shape}")
        return model

    spec = BackboneSpec(
        name=p.name, default_size=size[0] if size else 0, feature_dim=None, preprocess="none", builder=build,
        origin="keras model file", min_size=1, offline=True, description=f"user model {resolved}",
    )
    ident = {"kind": "keras_file", "file": p.name, "sha256": sha256_path(p)}
    return Backbone(spec, resolved, ident, layer)
