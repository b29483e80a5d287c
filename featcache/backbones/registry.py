"""The backbone registry: names to specs, and (name, weights, layer) to a buildable backbone.

A :class:`BackboneSpec` is metadata plus a builder; a :class:`Backbone` is a
spec with its weights resolved, whose :meth:`Backbone.identity` goes into the
cache key. Nothing here imports Keras at module level, so listing backbones
and computing cache keys (the no-op re-run path) stay fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import BackboneError
from ..files import sha256_path

WEIGHTS_CHOICES = ("imagenet", "none")


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


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
    identity_: dict = field(default_factory=dict)
    layer: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def identity(self) -> dict:
        return dict(self.identity_)

    def build(self, image_size: tuple[int, int]):
        """The Keras model from normalised floats to the chosen feature map."""
        from .graph import seeded_init

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
            seeded_init(model, seed=int(self.identity_.get("seed", 0)))
        return model


def resolve(name: str | os.PathLike, weights: str | os.PathLike | None = "imagenet", layer: str | None = None) -> Backbone:
    """Resolve a backbone name (or ``.keras`` file) and a weights choice."""
    text = os.fspath(name)
    if text.endswith((".keras", ".h5")):
        from .custom import resolve_model_file

        return resolve_model_file(text, layer=layer)
    spec = get_spec(text)
    w = "none" if weights is None else os.fspath(weights)
    if w == "none":
        return Backbone(spec, None, {"kind": "random", "init": "featcache-seeded-v1", "seed": 0}, layer)
    if w == "imagenet":
        ident = spec.imagenet_identity() if spec.imagenet_identity else {"kind": "imagenet", "source": spec.origin}
        return Backbone(spec, "imagenet", ident, layer)
    path = Path(w)
    if not path.is_file():
        raise BackboneError(f"weights must be 'imagenet', 'none' or an existing file; {w!r} is none of these")
    return Backbone(spec, str(path.resolve()), {"kind": "file", "file": path.name, "sha256": sha256_path(path)}, layer)
