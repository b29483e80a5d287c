"""The extractor graph: uint8 images in, named float32 feature arrays out.

``uint8 -> ImagePreprocess (cast, resize, normalise) -> backbone (cut at the
chosen layers) -> pooling -> float32``, all inside one Keras model, so it
runs under any Keras 3 backend and on any accelerator.
"""

from __future__ import annotations

import contextlib
import re

from ..errors import BackboneError
from .registry import Backbone

POOLINGS = ("avg", "max", "none")
COMPUTE_DTYPES = {"float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}

@contextlib.contextmanager
def dtype_policy(compute_dtype: str):
    """Build layers under a mixed-precision policy, then restore the old one."""
    import keras

    if compute_dtype not in COMPUTE_DTYPES:
        raise BackboneError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}")
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(COMPUTE_DTYPES[compute_dtype])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def output_name(text: str) -> str:
    """An HDF5-safe dataset name for a layer or pooling output."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _pick_layers(base, names):
    tensors = []
    for n in names:
        try:
            tensors.append(base.get_layer(n).output)
        except ValueError:
            sample = ", ".join(layer.name for layer in base.layers[-8:])
            raise BackboneError(f"{base.name} has no layer named {n!r} (its last layers: {sample})") from None
    return tensors


def build_extractor(backbone: Backbone, *, input_size: tuple[int, int], image_size: tuple[int, int],
                    pooling: str = "avg", outputs: list[str] | None = None, preprocess: str | None = None,
                    compute_dtype: str = "float32"):
    """Return ``(model, output_names)``; the model maps uint8 NHWC to a dict of float32 arrays."""
    import keras

    from .layers import preprocess as preprocess_layers

    if pooling not in POOLINGS:
        raise BackboneError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    with dtype_policy(compute_dtype):
        base = backbone.build(image_size)
        if outputs:
            names = [output_name(n) for n in outputs]
            feats = _pick_layers(base, outputs)
        elif backbone.layer:
            names = ["map" if pooling == "none" else pooling]
            feats = _pick_layers(base, [backbone.layer])
        else:
            names = ["map" if pooling == "none" else pooling]
            feats = [base.output]
        if len(set(names)) != len(names):
            raise BackboneError(f"output names must be unique, got {names}")
        trunk = base if feats == [base.output] else keras.Model(base.inputs, feats, name=f"{base.name}_cut")
        trunk.trainable = False
        images = keras.Input((input_size[0], input_size[1], 3), dtype="uint8", name="images")
        x = preprocess_layers(images, preprocess or backbone.spec.preprocess, image_size)
        ys = trunk(x, training=False)
        ys = ys if isinstance(ys, (list, tuple)) else [ys]
        result = {}
        for name, y in zip(names, ys):
            if len(y.shape) == 4 and pooling == "avg":
                y = keras.layers.GlobalAveragePooling2D(name=f"{name}_avgpool")(y)
            elif len(y.shape) == 4 and pooling == "max":
                y = keras.layers.GlobalMaxPooling2D(name=f"{name}_maxpool")(y)
            elif len(y.shape) == 3 and pooling in ("avg", "max"):
                pool = keras.layers.GlobalAveragePooling1D if pooling == "avg" else keras.layers.GlobalMaxPooling1D
                y = pool(name=f"{name}_pool")(y)
            result[name] = keras.layers.Activation("linear", dtype="float32", name=f"out_{name}")(y)
    model = keras.Model(images, result, name=f"featcache_{output_name(backbone.name)}")
    return model, names


def build_classifier(backbone: Backbone, image_size: tuple[int, int] | None = None):
    """The backbone's 1000-class ImageNet classifier, uint8 images in, probabilities out.

    For checks and for users who want ImageNet labels; class names come from
    :func:`featcache.backbones.torch_port.imagenet_classes`.
    """
    import keras

    from .layers import preprocess as preprocess_layers

    spec = backbone.spec
    if spec.top_builder is None:
        raise BackboneError(f"{spec.name} offers no ImageNet classifier top")
    size = image_size or (spec.default_size, spec.default_size)
    if backbone.weights is None:
        raise BackboneError("an ImageNet classifier needs weights (imagenet or a file), not none")
    if spec.origin == "keras.applications":
        top = spec.top_builder(backbone.weights)
        size = tuple(top.input_shape[1:3])
    else:
        top = spec.top_builder((size[0], size[1], 3), backbone.weights)
    images = keras.Input((size[0], size[1], 3), dtype="uint8", name="images")
    x = preprocess_layers(images, spec.preprocess, size)
    return keras.Model(images, top(x), name=f"{spec.name}_imagenet")
