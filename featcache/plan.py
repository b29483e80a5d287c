"""Planning an extraction: its options, and what it will produce, where, under which cache key.

A :class:`Plan` is computed without building any model: the backbone is
resolved (its weights identified), the source is fingerprinted and the cache
key is the sha256 of every parameter that shapes the features plus that
fingerprint. The no-op re-run and every refusal therefore happen before
Keras is touched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import store
from .backbones import Backbone, resolve
from .backbones.graph import COMPUTE_DTYPES, POOLINGS
from .backbones.layers import PREPROCESS_MODES
from .decode import DEFAULT_BACKGROUND, background_hex, parse_background
from .augment import DEFAULT_RECIPE, MAX_VIEWS, parse_recipe
from .errors import BackboneError, FeatcacheError, is_integer
from .params import Param, check
from .precision import PRECISIONS, calibration_sample, check_supported, record_of
from .runtimes import RUNTIMES
from .sources import Source
from .splits import assign_splits

DEFAULT_BACKBONE = "efficientnet_lite0"
#: the largest model input side; CNNs are trained at 224-600 px, and 4096 px is already 64 MB a float image
MAX_IMAGE_SIDE = 4096
#: pixels in one batch of model input (batch x height x width): 64 Mpx is 768 MB as float32 before any layer
MAX_BATCH_PIXELS = 64 * 1024 * 1024


#: one extraction setting, declared once: ``ExtractOptions`` takes its default from it, ``featcache extract``
#: builds its flag from it (``--image-size`` for ``image_size``), pipeline files type-check their ``[[extract]]``
#: key against it, and :meth:`ExtractOptions.check` enforces its choices and bounds
Setting = Param


#: every extraction setting that is not the source or the backbone, in the order ``--help`` shows them
SETTINGS: tuple[Setting, ...] = (
    Setting("image_size", None, "model input size in pixels (default: the backbone's)", int, minimum=1),
    Setting("pooling", "avg", "pool each stored feature map", choices=POOLINGS),
    Setting("outputs", None, "layer names to store (comma-separated), each pooled; default: the backbone's last",
            many=True, min_items=1),
    Setting("preprocess", None, "override the backbone's input normalisation", choices=tuple(PREPROCESS_MODES)),
    Setting("dtype", "float16", "storage dtype", choices=store.STORAGE_DTYPES),
    Setting("compute_dtype", "float32", "compute precision (float16/bfloat16: mixed precision)",
            choices=tuple(COMPUTE_DTYPES)),
    Setting("batch_size", 64, "images per model call", int, minimum=1),
    Setting("shard_size", None, "source items per shard (default: from the dataset size, about 32 shards of 64 "
            "to 1024 items; a cache keeps the size it was made with)", int, minimum=1),
    Setting("compression", "none", "shard compression", choices=("none", "lzf", "gzip")),
    Setting("precision", "f32", "inference precision of the openvino runtime: f32, bf16 (CPUs with AVX512-BF16 or "
            "AMX), int8 (NNCF post-training quantization, calibrated on a seeded sample of 300 of the source's "
            "images); featcache backbones lists what this CPU runs; part of the cache key", choices=PRECISIONS),
    Setting("runtime", "auto", "what runs the CNN: auto (openvino on a CPU when installed, else keras), keras, "
            "openvino; not part of the cache key", choices=RUNTIMES),
    Setting("jit", "auto", "jit compilation of the extractor", choices=("auto", "true", "false"), bools=True),
    Setting("decode_threads", None, "Pillow decode threads (default: cores + 2, at most 8; cores with openvino)", int,
            minimum=1),
    Setting("prefetch", 4, "decoded batches queued ahead of the model", int, minimum=1),
    Setting("views", 0, "augmented views stored per training image, beside the plain one (val and test rows keep "
            "the plain one only); raising it later computes only the new views; not part of the cache key", int,
            minimum=0),
    Setting("augment", None, "the views' recipe, e.g. 'flip,crop=0.6,rotate=10,contrast=0.2,brightness=0.1,seed=0' "
            f"(default: {DEFAULT_RECIPE}); part of the cache key"),
    Setting("background", DEFAULT_BACKGROUND, "colour transparent images are composited on before the CNN: a name "
            "(white, black, ...) or #rrggbb; part of the cache key"),
)
SETTING = {s.name: s for s in SETTINGS}


def _default(name: str):
    return field(default=SETTING[name].default)


@dataclass
class ExtractOptions:
    """Everything about an extraction that is not the source or the backbone.

    Each field is declared once, in :data:`SETTINGS` (default, choices,
    bounds, help); see ``featcache extract --help`` for what each one does.

    Examples:
        >>> ExtractOptions(image_size=96, pooling="max").check()
    """

    image_size: int | tuple[int, int] | None = _default("image_size")
    pooling: str = _default("pooling")
    outputs: list[str] | None = _default("outputs")
    preprocess: str | None = _default("preprocess")
    dtype: str = _default("dtype")
    compute_dtype: str = _default("compute_dtype")
    batch_size: int = _default("batch_size")
    shard_size: int = _default("shard_size")
    compression: str | None = _default("compression")
    precision: str = _default("precision")
    runtime: str = _default("runtime")
    jit: bool | str = _default("jit")
    decode_threads: int | None = _default("decode_threads")
    prefetch: int = _default("prefetch")
    views: int = _default("views")
    augment: str | None = _default("augment")
    background: str = _default("background")

    def __post_init__(self):
        if self.compression is None:  # the Python API's None is the command line's "none"
            self.compression = "none"
        if isinstance(self.jit, bool):
            self.jit = "true" if self.jit else "false"

    @property
    def shard_compression(self) -> str | None:
        """The HDF5 filter for the shards (None: contiguous, uncompressed)."""
        return None if self.compression == "none" else self.compression

    def check(self) -> None:
        """Refuse a bad option before any work, naming it (the CLI, pipelines and the Python API all come here)."""
        check(SETTINGS, {s.name: getattr(self, s.name) for s in SETTINGS if s.name != "image_size"})  # its own below
        size = self.image_size
        if size is not None and not (is_integer(size) and size > 0 or (
                isinstance(size, (tuple, list)) and len(size) == 2 and all(is_integer(v) and v > 0 for v in size))):
            raise FeatcacheError(f"image size must be a positive integer (or a pair of them), got {size!r}")
        if not is_integer(self.views) or not 0 <= self.views <= MAX_VIEWS:
            raise FeatcacheError(f"views must be an integer from 0 to {MAX_VIEWS}, got {self.views!r}")
        parse_recipe(self.augment)  # a bad recipe is refused even before views are asked for
        parse_background(self.background)
        if self.precision != "f32" and self.compute_dtype != "float32":
            raise FeatcacheError(f"--precision {self.precision} and --compute-dtype {self.compute_dtype} are two "
                                 "reduced precisions: choose one (--precision for openvino, --compute-dtype for keras)")
        check_supported(self.precision, self.runtime)


@dataclass
class Plan:
    """What an extraction will produce and where: computed without building any model."""

    source: Source
    backbone: Backbone
    options: ExtractOptions
    out: Path | None
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    params: dict
    fingerprint: str
    key: str
    #: how to rebuild the backbone later (predict, export): not part of the key
    backbone_ref: dict = field(default_factory=dict)
    #: which items get augmented views (default: the labelled train items); a grow's staging run names its own
    view_items: np.ndarray | None = None
    #: int8: the ids of the images its graph is calibrated on, and the source that holds them (None: ``source``)
    calibration_ids: tuple[str, ...] | None = None
    calibration_source: Source | None = None
    #: shards of the plain view (every item); shards ``n_base * v`` to ``n_base * (v + 1) - 1`` hold view ``v``
    n_base: int = field(init=False)
    n_shards: int = field(init=False)

    def __post_init__(self):
        self.n_base = max(1, math.ceil(len(self.source) / self.options.shard_size))
        self.n_shards = self.n_base * (1 + int(self.options.views))

    @property
    def views(self) -> int:
        return int(self.options.views)

    def with_views(self, views: int) -> "Plan":
        """The same plan with ``views`` augmented views (the cache key does not change)."""
        return dataclasses.replace(self, options=dataclasses.replace(self.options, views=int(views)))

    def with_calibration(self, ids: tuple[str, ...], source: Source | None = None) -> "Plan":
        """The same int8 plan with its graph calibrated on the images ``ids`` (of ``source``, default this
        plan's): a grow keeps the graph its cache was made with, and so its key."""
        params = {**self.params, "calibration": record_of(ids)}
        return dataclasses.replace(self, params=params, key=store.cache_key(params, self.fingerprint),
                                   calibration_ids=tuple(ids), calibration_source=source)

    def view_of(self, index: int) -> int:
        """The view shard ``index`` holds: 0 for the plain view, 1 ... K for the augmented ones."""
        return index // self.n_base

    @property
    def view_mask(self) -> np.ndarray:
        """Whether each source item gets augmented views (when the plan asks for any)."""
        return self._train_items

    @functools.cached_property
    def _train_items(self) -> np.ndarray:
        """Whether each source item is a labelled train item under the default split: the items views are for."""
        if self.view_items is not None:
            return np.asarray(self.view_items, bool)
        items = self.source.items
        labels = [-1 if it.label is None else it.label for it in items]  # the same splits as Cache.split_masks
        names = assign_splits([it.id for it in items], [it.split for it in items] if self.source.has_splits else None,
                              labels=labels)
        return (names == "train") & np.array([it.label is not None and it.label >= 0 for it in items], bool)

    def at(self, out) -> "Plan":
        """The same plan writing to ``out`` (a plan made with ``out=None`` is placed once its key is known)."""
        return dataclasses.replace(self, out=Path(out))

    def sink(self) -> store.CacheSink:
        """Where this plan's shards are written (a fresh one, without a manifest, for each process)."""
        return store.CacheSink(self.out, key=self.key, dtype=self.options.dtype,
                               compression=self.options.shard_compression, n_items=len(self.source))

    def shard_items(self, index: int):
        """``(item range, items)`` of shard ``index``: a view shard holds the train items of its plain shard."""
        start, stop = store.shard_item_range(index, self.options.shard_size, len(self.source))
        items = self.source.items[start:stop]
        if self.view_of(index):
            keep = self._train_items[start:stop]
            items = [it for it, k in zip(items, keep) if k]
        return (start, stop), items


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


#: an automatic shard size: about 32 shards, so a kill loses at most ~1/32 of the run (the issue's 1.1x); at least
#: 64 items, so a shard's file and manifest write stay small beside its compute; at most 1024, a few seconds at CPU
#: speeds (about 80 images/s) and under 1,000 shards for a million images
AUTO_SHARDS, AUTO_SHARD_MIN, AUTO_SHARD_MAX = 32, 64, 1024


def auto_shard_size(n_items: int) -> int:
    """The shard size for ``n_items`` when none is asked for: ``ceil(n / 32)`` up to a power of two, in 64..1024."""
    want = max(1, -(-int(n_items) // AUTO_SHARDS))
    return min(AUTO_SHARD_MAX, max(AUTO_SHARD_MIN, 1 << (want - 1).bit_length()))


def resolve_shard_size(asked: int | None, n_items: int, out, params: dict, fingerprint: str) -> int:
    """``asked``, else the size of the cache at ``out`` when this plan is that cache, else :func:`auto_shard_size`.

    A cache keeps its shard size on re-runs and resumes: one made with ``--shard-size`` or before sizes were
    automatic (4096) is recognised by its key, so the default never recomputes it.
    """
    if asked is not None:
        return int(asked)
    try:
        old = store.read_manifest(out) if out is not None else None
    except FeatcacheError:
        old = None  # the run itself says what is wrong with it
    size = ((old or {}).get("params") or {}).get("shard_size")
    if is_integer(size) and store.cache_key({**params, "shard_size": size}, fingerprint) == old["key"]:
        return int(size)
    return auto_shard_size(n_items)


def _add_precision(params: dict, precision: str, source, calibration) -> tuple:
    """Record ``precision`` in ``params`` (absent for f32, as the defaults are) and, for int8, the calibration
    sample its graph is made from; returns that sample's ``(ids, source)`` (``(None, None)`` for f32 and bf16)."""
    if precision == "f32":
        return None, None
    params["precision"] = precision
    if precision != "int8":
        return None, None
    if calibration is None:
        params["calibration"], ids = calibration_sample(source.items)
        return ids, None
    params["calibration"] = record_of(calibration[0])
    return tuple(calibration[0]), calibration[1]


def make_plan(source, backbone: str | Backbone, out, options: ExtractOptions, *, weights="imagenet",
              layer: str | None = None, calibration: tuple[tuple[str, ...], Source] | None = None) -> Plan:
    """The plan of extracting ``source`` with ``backbone`` into ``out``.

    ``calibration`` (int8): ``(ids, source)``, the images an existing graph was calibrated on, which a
    grow keeps (else a seeded sample of ``source``, :func:`~featcache.precision.calibration_sample`).
    """
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
        "shard_size": None,  # resolved below, once the fingerprint is known
        "compression": options.shard_compression,
    }
    recipe = parse_recipe(options.augment).text
    if recipe != parse_recipe(DEFAULT_RECIPE).text:  # absent for the default: caches made before views keep their key
        params["augment"] = recipe
    if background_hex(options.background) != background_hex(DEFAULT_BACKGROUND):  # absent for the default, likewise
        params["background"] = background_hex(options.background)
    cal_ids, cal_source = _add_precision(params, options.precision, source, calibration)
    fingerprint = source.fingerprint()
    params["shard_size"] = resolve_shard_size(options.shard_size, len(source), out, params, fingerprint)
    options = dataclasses.replace(options, shard_size=params["shard_size"])
    return Plan(source, backbone, options, None if out is None else Path(out), image_size, input_size, params,
                fingerprint, store.cache_key(params, fingerprint), ref, calibration_ids=cal_ids,
                calibration_source=cal_source)
