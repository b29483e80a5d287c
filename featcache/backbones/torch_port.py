"""Helpers shared by the ports of PyTorch ImageNet models to Keras.

Layout conversion (PyTorch OIHW kernels to Keras HWIO), batch-norm and dense
assignment by name, and the converted-weights cache: the first build reads
the ``.pth`` with the restricted reader and saves a Keras weights file under
``$FEATCACHE_HOME/weights`` (default ``~/.cache/featcache/weights``), keyed by
the source file's sha256, so later builds skip the conversion. It is a
derived cache entry (:mod:`featcache.derived`): a record of the file's
sha256, written after it, is checked before each load, and a damaged or
replaced file is converted again from the ``.pth``, with one line saying so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import BackboneError
from ..derived import Entry
from ..files import atomic_save, sha256_path
from ..homes import featcache_home
from .pth import load_state_dict

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.json")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in the models' output order (shipped; no download)."""
    return json.loads(CLASSES_FILE.read_text())


def check_sha(path: str | os.PathLike, prefix: str) -> str:
    digest = sha256_path(path)
    if not digest.startswith(prefix):
        raise BackboneError(f"{path} has sha256 {digest[:16]}…, expected one starting with {prefix}: "
                            "the file is damaged or not the expected weights")
    return digest


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """(out, in, kh, kw) -> (kh, kw, in, out)."""
    return np.transpose(w, (2, 3, 1, 0))


def depthwise_kernel(w: np.ndarray) -> np.ndarray:
    """(channels, 1, kh, kw) -> (kh, kw, channels, 1)."""
    return np.transpose(w, (2, 3, 0, 1))


class WeightAssigner:
    """Assigns state-dict tensors to named Keras layers and checks every tensor is used."""

    def __init__(self, model, state_dict: dict, path: str):
        self.model, self.sd, self.path = model, state_dict, path
        self.used: set[str] = set()

    def _get(self, key: str) -> np.ndarray:
        try:
            value = self.sd[key]
        except KeyError:
            raise BackboneError(f"{self.path} has no tensor {key!r}: not the expected architecture") from None
        self.used.add(key)
        return value

    def _set(self, layer_name: str, arrays: list[np.ndarray]) -> None:
        layer = self.model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [a.shape for a in arrays]
        if expected != got:
            raise BackboneError(f"{self.path}: shapes {got} do not fit layer {layer_name} {expected}")
        layer.set_weights([a.astype(np.float32) for a in arrays])

    def conv(self, layer_name: str, key: str, depthwise: bool = False, bias: bool = False) -> None:
        w = self._get(f"{key}.weight")
        arrays = [depthwise_kernel(w) if depthwise else conv_kernel(w)]
        if bias:
            arrays.append(self._get(f"{key}.bias"))
        self._set(layer_name, arrays)

    def bn(self, layer_name: str, key: str) -> None:
        self._set(layer_name, [self._get(f"{key}.{n}") for n in ("weight", "bias", "running_mean", "running_var")])
        self.used.add(f"{key}.num_batches_tracked")

    def dense(self, layer_name: str, key: str) -> None:
        self._set(layer_name, [self._get(f"{key}.weight").T, self._get(f"{key}.bias")])

    def finish(self) -> None:
        unused = sorted(set(self.sd) - self.used)
        if unused:
            raise BackboneError(f"{self.path}: {len(unused)} tensors were not used (e.g. {unused[:3]}): "
                                "not the expected architecture")


def load_ported_weights(model, pth_path: str, sha256: str, assign, *, cache: bool = True) -> None:
    """Give ``model`` (the full classifier) the weights of ``pth_path``, via the checked conversion cache."""
    name = f"{model.name}-{sha256[:16]}.weights.h5"
    entry = Entry(featcache_home() / "weights", [name], f"{name}.record.json", what="the converted weights")
    if cache:
        record, reason = entry.check()
        if record is not None and record.get("source_sha256") != sha256:
            record, reason = None, "its record names another source file"
        if record is not None:
            try:
                model.load_weights(entry.paths()[0])
                return
            except Exception as exc:  # noqa: BLE001 - an entry Keras cannot read is rebuilt below
                reason = f"Keras cannot load it ({exc.__class__.__name__})"
        if reason:
            try:
                entry.discard(reason, f"converting {Path(pth_path).name} again")
            except OSError:
                cache = False  # a read-only home: convert, and keep nothing
    sd = load_state_dict(pth_path)
    assigner = WeightAssigner(model, sd, pth_path)
    assign(assigner)
    assigner.finish()
    if cache:
        try:
            entry.folder.mkdir(parents=True, exist_ok=True)
            atomic_save(entry.paths()[0], model.save_weights, ".weights.h5")
            entry.seal({"source_sha256": sha256})
        except OSError:
            pass  # a read-only home only costs the conversion next time


def resolve_weights_arg(weights, default_path) -> tuple[str | None, str]:
    """Map a builder's ``weights`` argument to (path, kind): kind is pth, keras or none."""
    if weights is None:
        return None, "none"
    if weights == "imagenet":
        return default_path(), "pth"
    if str(weights).endswith((".pth", ".pt")):
        return str(weights), "pth"
    return str(weights), "keras"


def inverted_residual(x, name: str, cin: int, cout: int, expand: int, kernel: int, stride: int, eps: float,
                      symmetric_pad: bool):
    """MobileNetV2-style block: [1x1 expand] -> depthwise -> 1x1 project [+ skip], ReLU6.

    ``symmetric_pad`` pads explicitly then convolves 'valid' (PyTorch's
    padding=k//2); otherwise 'same' padding, TensorFlow's asymmetric rule.
    """
    from keras import layers

    shortcut = x
    if expand != 1:
        x = layers.Conv2D(cin * expand, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = layers.BatchNormalization(epsilon=eps, name=f"{name}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu")(x)
    if symmetric_pad:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="valid" if symmetric_pad else "same", use_bias=False,
                               name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=eps, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(cout, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = layers.BatchNormalization(epsilon=eps, name=f"{name}_project_bn")(x)
    if stride == 1 and cin == cout:
        x = layers.Add(name=f"{name}_add")([x, shortcut])
    return x


def assign_inverted_residual(a, name: str, expand: int, expand_key, dw_key, dw_bn_key, project_key,
                             project_bn_key, expand_bn_key=None) -> None:
    if expand != 1:
        a.conv(f"{name}_expand_conv", expand_key)
        a.bn(f"{name}_expand_bn", expand_bn_key)
    a.conv(f"{name}_dwconv", dw_key, depthwise=True)
    a.bn(f"{name}_dw_bn", dw_bn_key)
    a.conv(f"{name}_project_conv", project_key)
    a.bn(f"{name}_project_bn", project_bn_key)


def head_and_top(x, eps: float, features: int = 1280, classes: int = 1000, dropout: float = 0.2):
    """1x1 conv to ``features`` (the feature map, ``head_relu``), then the ImageNet classifier."""
    from keras import layers

    x = layers.Conv2D(features, 1, use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(epsilon=eps, name="head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(classes, activation="softmax", name="predictions")(x)


def ported_builders(name: str, full_model, assign, default_pth, sha_prefix: str):
    """The registry's ``(classifier, build)`` pair for a ported model.

    ``weights`` is None (random), "imagenet" (the shipped .pth, whose sha256
    must start with ``sha_prefix``), another .pth, or a Keras weights file.
    """

    def classifier(input_shape=(224, 224, 3), weights="imagenet"):
        model = full_model(input_shape)
        path, kind = resolve_weights_arg(weights, default_pth)
        if kind == "pth":
            sha = check_sha(path, sha_prefix if weights == "imagenet" else "")
            load_ported_weights(model, path, sha, assign)
        elif kind == "keras":
            model.load_weights(path)
        return model

    def build(input_shape, weights):
        import keras

        full = classifier(input_shape, weights)
        return keras.Model(full.input, full.get_layer("head_relu").output, name=f"{name}_features")

    return classifier, build
