"""Helpers shared by the ports of PyTorch ImageNet models to Keras.

Layout conversion (PyTorch OIHW kernels to Keras HWIO), batch-norm and dense
assignment by name, and the converted-weights cache: the first build reads
the ``.pth`` with the restricted reader and saves a Keras weights file under
``$FEATCACHE_HOME/weights`` (default ``~/.cache/featcache/weights``), keyed by
the source file's sha256, so later builds skip the conversion.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import BackboneError
from .pth import load_state_dict
from .registry import sha256_file

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.json")


def featcache_home() -> Path:
    return Path(os.environ.get("FEATCACHE_HOME", Path.home() / ".cache" / "featcache"))


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in the models' output order (shipped; no download)."""
    return json.loads(CLASSES_FILE.read_text())


def check_sha(path: str | os.PathLike, prefix: str) -> str:
    digest = sha256_file(path)
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
    """Give ``model`` (the full classifier) the weights of ``pth_path``, via the conversion cache."""
    cached = featcache_home() / "weights" / f"{model.name}-{sha256[:16]}.weights.h5"
    if cache and cached.is_file():
        try:
            model.load_weights(cached)
            return
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt below
            cached.unlink(missing_ok=True)
    sd = load_state_dict(pth_path)
    assigner = WeightAssigner(model, sd, pth_path)
    assign(assigner)
    assigner.finish()
    if cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.stem}.tmp-{os.getpid()}.weights.h5")
            model.save_weights(tmp)
            os.replace(tmp, cached)
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
