"""The backbone registry: names to specs, and (name, weights, layer) to a buildable backbone.

A :class:`BackboneSpec` is metadata plus a builder; a :class:`Backbone` is a
spec with its weights resolved, whose :meth:`Backbone.identity` goes into the
cache key. Nothing here imports Keras at module level, so listing backbones
and computing cache keys (the no-op re-run path) stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import BackboneError
from ..homes import keras_home

WEIGHTS_CHOICES = ("imagenet", "none")


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone is, before any weights are loaded.

    ``builder(input_shape, weights)`` returns a Keras model from normalised
    float images to the last feature map (no top, no pooling); ``weights`` is
    ``None`` (random), ``"imagenet"`` or a local file path.
    """

    name: str
    default_size: int
    feature_dim: int | None
    preprocess: str
    builder: Callable
    origin: str = "keras.applications"
    min_size: int = 32
    #: file names under ~/.keras/models whose presence means "imagenet" needs no download
    cache_files: tuple[str, ...] = ()
    #: True when the ImageNet weights ship with an installed package (no network)
    offline: bool = False
    #: returns the identity of the ImageNet weights for the cache key
    imagenet_identity: Callable[[], dict] | None = None
    #: builds the 1000-class ImageNet classifier (for checks and labels), if offered
    top_builder: Callable | None = None
    description: str = ""

    def download_status(self) -> str:
        """'offline', 'cached' or 'download' for ImageNet weights."""
        if self.offline:
            return "offline"
        if any((keras_home() / "models" / f).is_file() for f in self.cache_files):
            return "cached"
        return "download"


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise BackboneError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_specs() -> list[BackboneSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackboneError(
            f"unknown backbone {name!r}; run `featcache backbones` for the list, "
            "or pass the path of a .keras model file"
        ) from None


@dataclass
class Backbone:
    """A spec with resolved weights (and optionally a layer to cut at)."""

    spec: BackboneSpec
    weights: str | None  # None = random init, "imagenet", or a file path
    #: what identifies the weights in the cache key (kind, sha256, seed, ...)
    weights_identity: dict = field(default_factory=dict)
    layer: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def identity(self) -> dict:
        return dict(self.weights_identity)

    def build(self, image_size: tuple[int, int]):
        """The Keras model from normalised floats to the chosen feature map."""
        h, w = image_size
        if min(h, w) < self.spec.min_size:
            raise BackboneError(f"{self.name} needs images of at least {self.spec.min_size} px, got {h}x{w}")
        try:
            model = self.spec.builder((h, w, 3), self.weights)
        except BackboneError:
            raise
        except Exception as exc:
            raise BackboneError(f"cannot build {self.name} with weights={self.weights or 'none'}: {exc}") from exc
        if self.weights is None:
            seeded_init(model, seed=int(self.weights_identity.get("seed", 0)))
        return model


_ONES = ("gamma", "moving_variance", "variance")
_ZEROS = ("beta", "moving_mean", "bias", "mean")


def seeded_init(model, seed: int = 0) -> None:
    """Give a random-weights model the same weights under every backend.

    Keras' initialisers draw from backend-specific generators, so
    ``weights=None`` would differ between TensorFlow and JAX and between
    runs. This overwrites kernels with He-uniform draws from NumPy's PCG64
    and batch-norm statistics with their neutral values, in weight order.
    """
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape = tuple(var.shape)
        leaf = var.path.rsplit("/", 1)[-1]
        if leaf in _ONES:
            value = np.ones(shape, np.float32)
        elif leaf in _ZEROS or leaf == "count":
            value = np.zeros(shape, np.float32)
        elif len(shape) >= 2:
            if len(shape) == 4 and shape[-1] == 1 and shape[-2] > 1:  # depthwise (kh, kw, in, 1)
                fan_in = int(np.prod(shape[:-2]))
            else:
                fan_in = int(np.prod(shape[:-1]))
            limit = np.sqrt(6.0 / max(fan_in, 1))
            value = rng.uniform(-limit, limit, size=shape).astype(np.float32)
        else:
            continue  # constants set by the layer itself (layer scale, etc.)
        var.assign(value.astype(var.dtype))
