"""Keras layers that live inside every extractor graph.

:class:`ImagePreprocess` takes uint8 pixels and does the cast, the resize and
the backbone's normalisation inside the model, so the input side ships only
uint8 and the accelerator does the arithmetic. It is serializable, so an
exported end-to-end model loads with plain ``keras.models.load_model``.
"""

from __future__ import annotations

import keras
from keras import ops

#: name -> (scale, offset per channel, swap RGB to BGR); out = x * scale + offset
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
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


def normalize(x, mode: str):
    """Apply one of :data:`PREPROCESS_MODES` to a float32 NHWC tensor."""
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        mean = ops.convert_to_tensor(_IMAGENET_MEAN, dtype="float32")
        std = ops.convert_to_tensor(_IMAGENET_STD, dtype="float32")
        return (x / 255.0 - mean) / std
    if mode == "caffe":
        x = ops.flip(x, axis=-1)
        return x - ops.convert_to_tensor((103.939, 116.779, 123.68), dtype="float32")
    if mode == "unit":
        return x / 255.0
    if mode == "lite":
        return (x - 127.0) / 128.0
    if mode == "none":
        return x
    raise ValueError(f"unknown preprocessing mode {mode!r}; known: {', '.join(PREPROCESS_MODES)}")


@keras.saving.register_keras_serializable(package="featcache")
class ImagePreprocess(keras.layers.Layer):
    """uint8 NHWC images -> resized, normalised floats in the layer's compute dtype."""

    def __init__(self, size=None, mode="none", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; known: {', '.join(PREPROCESS_MODES)}")
        self.size = tuple(size) if size is not None else None
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.size is not None:
            h, w = images.shape[1], images.shape[2]
            if (h, w) != self.size:
                shrink = h is None or w is None or h > self.size[0] or w > self.size[1]
                x = ops.image.resize(x, self.size, interpolation="bilinear", antialias=bool(shrink))
        return ops.cast(normalize(x, self.mode), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        if self.size is None:
            return input_shape
        return (input_shape[0], self.size[0], self.size[1], input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "mode": self.mode}
