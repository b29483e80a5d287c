"""Planning an extraction: its options, and what it will produce, where, under which cache key.

A :class:`Plan` is computed without building any model: the backbone is
resolved (its weights identified), the source is fingerprinted and the cache
key is the sha256 of every parameter that shapes the features plus that
fingerprint. The no-op re-run and every refusal therefore happen before
Keras is touched.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import store
from .backbones import Backbone, resolve
from .backbones.graph import COMPUTE_DTYPES, POOLINGS
from .errors import BackboneError, FeatcacheError
from .sources import Source

DEFAULT_BACKBONE = "efficientnet_lite0"
#: the largest model input side; CNNs are trained at 224-600 px, and 4096 px is already 64 MB a float image
MAX_IMAGE_SIDE = 4096
#: pixels in one batch of model input (batch x height x width): 64 Mpx is 768 MB as float32 before any layer
MAX_BATCH_PIXELS = 64 * 1024 * 1024


@dataclass
class ExtractOptions:
    """Everything about an extraction that is not the source or the backbone."""

    image_size: int | tuple[int, int] | None = None
    pooling: str = "avg"
    outputs: list[str] | None = None
    preprocess: str | None = None
    dtype: str = "float16"
    compute_dtype: str = "float32"
    batch_size: int = 64
    shard_size: int = 4096
    compression: str | None = None
    jit: bool | str = "auto"
    decode_workers: int | None = None
    prefetch: int = 4

    def check(self) -> None:
        """Refuse a bad option before any work, naming it (the CLI and the Python API both come here)."""
        from numbers import Integral

        def positive_int(value) -> bool:
            return isinstance(value, Integral) and not isinstance(value, bool) and value > 0

        if self.pooling not in POOLINGS:
            raise FeatcacheError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.dtype not in store.STORAGE_DTYPES:
            raise FeatcacheError(f"dtype must be float16 or float32, got {self.dtype!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise FeatcacheError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")
        if self.compression not in store.COMPRESSIONS:
            raise FeatcacheError(f"compression must be lzf or gzip (or none), got {self.compression!r}")
        for name in ("batch_size", "shard_size", "prefetch"):
            if not positive_int(getattr(self, name)):
                raise FeatcacheError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.decode_workers is not None and not positive_int(self.decode_workers):
            raise FeatcacheError(f"decode threads must be a positive integer, got {self.decode_workers!r}")
        if not (isinstance(self.jit, bool) or self.jit in ("auto", "true", "false")):
            raise FeatcacheError(f"jit must be auto, true or false, got {self.jit!r}")
        size = self.image_size
        if size is not None and not (positive_int(size) or (
                isinstance(size, (tuple, list)) and len(size) == 2 and all(positive_int(v) for v in size))):
            raise FeatcacheError(f"image size must be a positive integer (or a pair of them), got {size!r}")


@dataclass
class Plan:
    """What an extraction will produce and where: computed without building any model."""

    source: Source
    backbone: Backbone
    options: ExtractOptions
    out: Path
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    params: dict
    fingerprint: str
    key: str
    #: how to rebuild the backbone later (predict, export): not part of the key
    backbone_ref: dict = field(default_factory=dict)
    n_shards: int = field(init=False)

    def __post_init__(self):
        self.n_shards = max(1, math.ceil(len(self.source) / self.options.shard_size))

    def sink(self) -> store.CacheSink:
        """Where this plan's shards are written (a fresh one, without a manifest, for each process)."""
        return store.CacheSink(self.out, key=self.key, dtype=self.options.dtype,
                               compression=self.options.compression, n_items=len(self.source))

    def shard_items(self, index: int):
        size = self.options.shard_size
        start = index * size
        stop = min(start + size, len(self.source))
        return (start, stop), self.source.items[start:stop]


def _size_pair(value, default: int) -> tuple[int, int]:
    if value is None:
        value = default
    if isinstance(value, (tuple, list)):
        h, w = (int(v) for v in value)
    else:
        h = w = int(value)
    if h <= 0 or w <= 0:
        raise FeatcacheError(f"image size must be positive, got {value!r}")
    if max(h, w) > MAX_IMAGE_SIDE:
        raise FeatcacheError(f"image size {h}x{w} is over featcache's limit of {MAX_IMAGE_SIDE} pixels a side")
    return h, w


def make_plan(source, backbone: str | Backbone, out, options: ExtractOptions, *, weights="imagenet",
              layer: str | None = None) -> Plan:
    options.check()
    ref = {"backbone": os.fspath(backbone) if not isinstance(backbone, Backbone) else backbone.name,
           "weights": None if weights is None else os.fspath(weights), "layer": layer}
    if not isinstance(backbone, Backbone):
        if ref["backbone"].endswith((".keras", ".h5")):
            ref["backbone"] = str(Path(ref["backbone"]).resolve())
        if ref["weights"] not in (None, "imagenet", "none"):
            ref["weights"] = str(Path(ref["weights"]).resolve())
        backbone = resolve(backbone, weights=weights, layer=layer)
    spec = backbone.spec
    if options.image_size is None and not spec.default_size:
        raise BackboneError(f"cannot tell the input size of {spec.name}; pass --image-size")
    image_size = _size_pair(options.image_size, spec.default_size)
    input_size = source.native_size or image_size
    batch_pixels = int(options.batch_size) * max(image_size[0] * image_size[1], input_size[0] * input_size[1])
    if batch_pixels > MAX_BATCH_PIXELS:
        raise FeatcacheError(f"a batch of {options.batch_size} images at {image_size[0]}x{image_size[1]} is "
                             f"{batch_pixels / 2**20:,.0f} Mpx, over the {MAX_BATCH_PIXELS // 2**20} Mpx a batch may "
                             "hold; lower --batch-size or --image-size")
    params = {
        "backbone": spec.name,
        "origin": spec.origin,
        "weights": backbone.identity(),
        "layer": backbone.layer,
        "image_size": list(image_size),
        "input_size": list(input_size),
        "resize": "in-graph bilinear" if source.native_size else "pillow bilinear (draft JPEG)",
        "preprocess": options.preprocess or spec.preprocess,
        "pooling": options.pooling,
        "outputs": list(options.outputs) if options.outputs else None,
        "dtype": options.dtype,
        "compute_dtype": options.compute_dtype,
        "shard_size": int(options.shard_size),
        "compression": options.compression,
    }
    fingerprint = source.fingerprint()
    return Plan(source, backbone, options, Path(out), image_size, input_size, params, fingerprint,
                store.cache_key(params, fingerprint), ref)
