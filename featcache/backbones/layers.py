"""The in-graph preprocessing: uint8 pixels to the backbone's normalised input.

Built only from Keras' own layers (Rescaling, Resizing, Normalization,
Dense), so extractor graphs and exported end-to-end models load with plain
``keras.models.load_model`` in a process that never imported featcache. The
input side ships uint8; the cast, resize and normalisation run on the
accelerator. :func:`normalize` is the reference the layers are tested against
(and it is tested against keras.applications' ``preprocess_input``).
"""

from __future__ import annotations

import numpy as np

from ..errors import BackboneError

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESS_MODES = {
    # keras.applications' own modes, as in imagenet_utils.preprocess_input
    "tf": "x / 127.5 - 1",
    "torch": "(x / 255 - ImageNet mean) / ImageNet std",
    "caffe": "RGB -> BGR, minus the ImageNet mean pixel",
    # models that normalise inside themselves (EfficientNet, ConvNeXt, MobileNetV3, user models)
    "none": "raw 0..255 floats",
    "unit": "x / 255",
    "lite": "(x - 127) / 128 (EfficientNet-Lite)",
}
_AFFINE = {"tf": (1 / 127.5, -1.0), "unit": (1 / 255.0, 0.0), "lite": (1 / 128.0, -127.0 / 128.0), "none": (1.0, 0.0),
           "torch": (1.0, 0.0), "caffe": (1.0, 0.0)}


def check_mode(mode: str) -> str:
    if mode not in PREPROCESS_MODES:
        raise BackboneError(f"unknown preprocessing mode {mode!r}; known: {', '.join(PREPROCESS_MODES)}")
    return mode


def normalize(x, mode: str):
    """Reference normalisation of a float NHWC array or tensor (0..255 pixels)."""
    from keras import ops

    check_mode(mode)
    if mode == "torch":
        mean = ops.convert_to_tensor(_IMAGENET_MEAN, dtype="float32")
        std = ops.convert_to_tensor(_IMAGENET_STD, dtype="float32")
        return (x / 255.0 - mean) / std
    if mode == "caffe":
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype="float32")
    scale, offset = _AFFINE[mode]
    return x * scale + offset


def preprocess(images, mode: str, image_size: tuple[int, int] | None):
    """Apply cast, resize and ``mode`` to a uint8 NHWC Keras tensor with built-in layers."""
    from keras import layers

    check_mode(mode)
    scale, offset = _AFFINE[mode]
    x = layers.Rescaling(scale, offset, name="preprocess_scale")(images)  # also the uint8 -> float cast
    h, w = images.shape[1], images.shape[2]
    if image_size is not None and (h, w) != tuple(image_size):
        shrink = h is None or w is None or h > image_size[0] or w > image_size[1]
        x = layers.Resizing(image_size[0], image_size[1], interpolation="bilinear", antialias=bool(shrink),
                            name="preprocess_resize")(x)
    if mode == "torch":
        mean = [255.0 * m for m in _IMAGENET_MEAN]
        var = [(255.0 * s) ** 2 for s in _IMAGENET_STD]
        x = layers.Normalization(mean=mean, variance=var, name="preprocess_normalize")(x)
    elif mode == "caffe":
        flip = layers.Dense(3, name="preprocess_bgr", trainable=False)
        x = flip(x)
        flip.set_weights([np.eye(3, dtype=np.float32)[::-1].copy(), -np.asarray(_CAFFE_MEAN_BGR, np.float32)])
    return x
