"""The extraction engine: plan, then reader -> mapper -> writer, shard by shard.

* **plan**: resolve the backbone, fingerprint the source, compute the cache
  key, and compare with what the directory already holds.
* **reader**: a thread decodes batches with Pillow in a thread pool and puts
  them on a bounded queue (memory stays flat whatever the dataset size).
* **mapper**: the main thread runs the compiled extractor graph on each
  batch (padded to a fixed shape, so it is traced once).
* **writer**: a thread writes each finished shard atomically and updates
  the manifest; the rename of a shard is its completion marker.

A shard is the unit of work; :func:`extract_shards` is the per-shard code
path that any engine (local or distributed) runs.
"""

from __future__ import annotations

import collections
import errno
import math
import os
import queue
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from . import store
from .backbones import Backbone, resolve
from .backbones.graph import COMPUTE_DTYPES, POOLINGS
from .errors import BackboneError, CacheError, FeatcacheError, KeyMismatchError
from .sources import Source, open_source
from .versions import versions

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


# --------------------------------------------------------------------------- per-shard path


class Extractor:
    """The compiled extractor graph for one plan: ``__call__(uint8 batch) -> {name: float32}``."""

    def __init__(self, plan: Plan):
        from .backbones.graph import build_extractor

        opts = plan.options
        self.batch_size = int(opts.batch_size)
        self.model, self.names = build_extractor(
            plan.backbone, input_size=plan.input_size, image_size=plan.image_size, pooling=opts.pooling,
            outputs=opts.outputs, preprocess=opts.preprocess, compute_dtype=opts.compute_dtype)
        jit = opts.jit
        if isinstance(jit, str) and jit != "auto":
            jit = jit.lower() in ("1", "true", "yes", "on")
        self.model.compile(jit_compile=jit)

    def output_info(self, dtype: str) -> dict:
        return {n: {"shape": [int(d) for d in self.model.output[n].shape[1:]], "dtype": dtype} for n in self.names}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        n = images.shape[0]
        out: dict[str, list] = {k: [] for k in self.names}
        for a in range(0, n, self.batch_size):
            chunk = images[a:a + self.batch_size]
            m = chunk.shape[0]
            if m < self.batch_size:  # pad: one traced shape for every batch
                pad = np.zeros((self.batch_size - m,) + chunk.shape[1:], chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            res = self.model.predict_on_batch(chunk)
            for k in self.names:
                out[k].append(np.asarray(res[k], dtype=np.float32)[:m])
        return {k: np.concatenate(v) if v else np.zeros((0,), np.float32) for k, v in out.items()}


class _Accumulator:
    """Collects one shard's rows batch by batch."""

    def __init__(self, index, item_range, has_splits):
        self.index, self.item_range, self.has_splits = index, item_range, has_splits
        self.features: dict[str, list] = {}
        self.labels, self.ids, self.splits, self.skipped = [], [], [], []

    def add(self, feats: dict | None, batch) -> None:
        if feats is not None:
            for k, v in feats.items():
                self.features.setdefault(k, []).append(v)
        self.labels += [it.label for it in batch.items]
        self.ids += [it.id for it in batch.items]
        self.splits += [it.split or "" for it in batch.items]
        self.skipped += [(it.id, reason) for it, reason in batch.skipped]

    def finish(self, names, empty_shapes) -> store.ShardData:
        feats = {}
        for k in names:
            parts = self.features.get(k)
            feats[k] = np.concatenate(parts) if parts else np.zeros((0,) + tuple(empty_shapes[k]), np.float32)
        return store.ShardData(self.index, self.item_range, feats, np.asarray(self.labels, np.int64), self.ids,
                               self.splits if self.has_splits else None, self.skipped)


def iter_batches(plan: Plan, indices: Sequence[int], executor) -> Iterable:
    """Reader: (shard index, item range, batch, last-of-shard) in order."""
    bs = plan.options.batch_size
    for index in indices:
        item_range, items = plan.shard_items(index)
        if not items:
            continue
        for a in range(0, len(items), bs):
            chunk = items[a:a + bs]
            yield index, item_range, plan.source.read(chunk, plan.image_size, executor), a + bs >= len(items)


def extract_shards(plan: Plan, indices: Sequence[int], extractor: Extractor, write: Callable[[store.ShardData], None],
                   *, on_batch: Callable[[int], None] = lambda n: None, stats: dict | None = None) -> None:
    """Compute and hand to ``write`` every shard in ``indices``: the per-shard code path.

    Decoding runs ahead in a reader thread through a bounded queue of
    ``prefetch`` batches, overlapped with model execution here.
    """
    stats = stats if stats is not None else {}
    opts = plan.options
    workers = opts.decode_workers or min(8, (os.cpu_count() or 2) + 2)
    q: queue.Queue = queue.Queue(maxsize=opts.prefetch)
    stop = threading.Event()
    done = object()
    shapes = {k: v["shape"] for k, v in extractor.output_info(opts.dtype).items()}

    def produce():
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="featcache-decode") as pool:
                for entry in iter_batches(plan, indices, pool):
                    while not stop.is_set():
                        try:
                            q.put(entry, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            q.put(done)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    reader = threading.Thread(target=produce, name="featcache-reader", daemon=True)
    reader.start()
    acc = None
    try:
        while True:
            t0 = time.perf_counter()
            entry = q.get()
            stats["wait_s"] = stats.get("wait_s", 0.0) + time.perf_counter() - t0
            if entry is done:
                break
            if isinstance(entry, BaseException):
                raise entry
            index, item_range, batch, last = entry
            if acc is None or acc.index != index:
                acc = _Accumulator(index, item_range, plan.source.has_splits)
            t0 = time.perf_counter()
            feats = extractor(batch.images) if len(batch.items) else None
            took = time.perf_counter() - t0
            stats["model_s"] = stats.get("model_s", 0.0) + took
            if feats is not None and "first_batch_s" not in stats:  # includes tracing / XLA compilation
                stats["first_batch_s"], stats["first_batch_items"] = took, len(batch.items)
            acc.add(feats, batch)
            on_batch(len(batch.items) + len(batch.skipped))
            if last:
                write(acc.finish(extractor.names, shapes))
                acc = None
    finally:
        stop.set()
        reader.join(timeout=30)


# --------------------------------------------------------------------------- writer


class ShardWriter:
    """Writer thread: writes shards atomically and records each in the manifest."""

    def __init__(self, plan: Plan, manifest: dict, on_written: Callable[[dict], None] = lambda r: None):
        self.plan, self.manifest, self.on_written = plan, manifest, on_written
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.bytes = 0
        self.thread = threading.Thread(target=self._run, name="featcache-writer", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        while True:
            shard = self.q.get()
            if shard is None:
                return
            if self.error is not None:
                continue
            try:
                record = write_shard_checked(self.plan, shard)
                _disk_full_guard(self.plan, shard, lambda: record_shard(self.plan, self.manifest, record))
                self.bytes += record["bytes"]
                self.on_written(record)
            except BaseException as exc:
                self.error = exc

    def put(self, shard: store.ShardData):
        if self.error is not None:
            raise self.error
        self.q.put(shard)

    def close(self):
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def record_shard(plan: Plan, manifest: dict, record: dict) -> None:
    """Add a written shard to the manifest and save it: only the process holding the lock calls this."""
    manifest["shards"].append(record)
    manifest["shards"].sort(key=lambda s: s["index"])
    if not manifest["outputs"] and record["n_rows"]:  # engines that never built the model here
        manifest["outputs"] = _outputs_from_shards(plan, [record])
    store.write_manifest(plan.out, manifest)


def write_shard_checked(plan: Plan, shard: store.ShardData) -> dict:
    """Write one finished shard atomically (any process may): returns its manifest record."""
    return _disk_full_guard(plan, shard, lambda: store.write_shard(
        plan.out, shard, key=plan.key, dtype=plan.options.dtype, compression=plan.options.compression))


def _disk_full_guard(plan: Plan, shard: store.ShardData, write):
    """Run ``write``; a full disk becomes a clear error naming the directory and the bytes needed.

    HDF5 does not always report ENOSPC as such, so a failed write on a
    file system with less free space than the rest of the cache needs is
    treated as a full disk too.
    """
    try:
        return write()
    except OSError as exc:
        row = sum(int(np.prod(v.shape[1:])) for v in shard.features.values()) * np.dtype(plan.options.dtype).itemsize
        remaining = (len(plan.source) - shard.item_range[0]) * (row + 64) + 64 * 1024
        try:
            free = shutil.disk_usage(plan.out).free
        except OSError:
            free = None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < remaining):
            free_text = "unknown" if free is None else f"{free:,}"
            raise CacheError(f"disk full while writing {plan.out}: about {remaining:,} more bytes are needed for "
                             f"the remaining shards ({free_text} free). Shards already written are kept; free "
                             "space and run the same command again to finish.") from None
        raise


# --------------------------------------------------------------------------- runner


def _new_manifest(plan: Plan, shards: list[dict], old: dict | None) -> dict:
    src = plan.source
    return {
        "format_version": store.FORMAT_VERSION,
        "key": plan.key,
        "complete": False,
        "params": plan.params,
        "dataset": {
            "fingerprint": plan.fingerprint, "source": src.describe(), "n_items": len(src),
            "class_names": list(src.class_names), "has_splits": src.has_splits, "reopen": src.spec,
        },
        "outputs": (old or {}).get("outputs") or {},
        "backbone_ref": plan.backbone_ref,
        "n_shards": plan.n_shards,
        "shards": sorted(shards, key=lambda s: s["index"]),
        "created": (old or {}).get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _existing_shards(plan: Plan, old: dict | None, repair: bool) -> tuple[dict[int, dict], list[str]]:
    """Shards on disk that are valid for this plan; damaged ones of ours are deleted.

    A file is deleted only when featcache can prove it wrote it: a shard the
    manifest lists (its path is checked to be ``shards/NNNNN.h5`` when the
    manifest is read), or a shard file carrying featcache's attributes. A
    ``NNNNN.h5`` that is neither stops the run, untouched.
    """
    out, notes = plan.out, []
    done: dict[int, dict] = {}
    if old:
        for rec in old.get("shards", []):
            path = out / rec["file"]
            problems = store.shard_problems(out, rec, plan.key, deep=repair)
            if problems:
                notes += problems
                if not path.is_symlink():
                    path.unlink(missing_ok=True)
            else:
                done[rec["index"]] = rec
    shard_dir = out / store.SHARDS
    if shard_dir.is_dir():
        for p in sorted(shard_dir.glob("*.h5")):
            try:
                index = int(p.stem)
            except ValueError:
                continue
            if index in done:
                continue
            if store.shard_key(p) is None:
                raise CacheError(f"{p} is not a featcache shard, and featcache never deletes what it did not "
                                 "write: move it away, then run again")
            if index >= plan.n_shards:
                p.unlink()
                continue
            item_range, _ = plan.shard_items(index)
            try:
                done[index] = store.inspect_shard(p, plan.key, index, item_range)
            except CacheError as exc:
                notes.append(str(exc))
                p.unlink()
    return done, notes


def _outputs_from_shards(plan: Plan, records: list[dict]) -> dict:
    import h5py

    for rec in records:
        if rec["n_rows"]:
            with h5py.File(plan.out / rec["file"], "r") as f:
                return {n: {"shape": list(ds.shape[1:]), "dtype": str(ds.dtype)} for n, ds in f["features"].items()}
    return {}


def _finalize(plan: Plan, manifest: dict, timings: dict) -> dict:
    shards = sorted(manifest["shards"], key=lambda s: s["index"])
    row = 0
    for s in shards:
        s["rows"] = [row, row + s["n_rows"]]
        row += s["n_rows"]
    if not manifest["outputs"]:
        manifest["outputs"] = _outputs_from_shards(plan, shards)
    skipped = [dict(x) for s in shards for x in s["skipped"]]
    manifest.update({
        "shards": shards,
        "counts": {"items": len(plan.source), "rows": row, "skipped": len(skipped)},
        "skipped": skipped,
        "versions": versions(),
        "timings": timings,
    })
    if not manifest["outputs"] or (row == 0 and len(plan.source)):
        reasons = collections.Counter(x["reason"] for x in skipped).most_common(2)
        raise CacheError(f"every one of the {len(plan.source):,} images was skipped, so {plan.out} is left "
                         f"incomplete; most common reason: {reasons[0][0] if reasons else 'none'}"
                         + (f" ({reasons[0][1]:,} images)" if reasons else ""))
    store.write_view(plan.out, manifest)
    manifest["complete"] = True
    manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.write_manifest(plan.out, manifest)  # the completion marker: written last
    return manifest


@dataclass
class RunSummary:
    """What one ``extract`` call did (also printed by the CLI)."""

    out: Path
    key: str
    items: int
    rows: int
    skipped: int
    computed_shards: int
    reused_shards: int
    seconds: float
    images_per_s: float
    bytes_written: int
    noop: bool
    notes: list[str]


class LocalEngine:
    """This process computes the missing shards: reader thread, model here, writer thread."""

    name = "local"

    def compute(self, plan: Plan, todo: Sequence[int], manifest: dict, *,
                on_items: Callable[[int], None] = lambda n: None) -> dict:
        stats: dict = {"engine": self.name}
        t0 = time.perf_counter()
        extractor = Extractor(plan)
        stats["build_s"] = time.perf_counter() - t0
        manifest["outputs"] = extractor.output_info(plan.options.dtype)
        writer = ShardWriter(plan, manifest).start()
        try:
            extract_shards(plan, todo, extractor, writer.put, on_batch=on_items, stats=stats)
        finally:
            writer.close()
        stats["bytes"] = writer.bytes
        return stats


ENGINES = ("local", "ray")


def make_engine(name: str = "local", **options):
    """The engine that computes missing shards: ``local`` or ``ray`` (options: address, workers, gpus_per_worker)."""
    if name == "local":
        if any(v is not None for v in options.values()):
            raise FeatcacheError(f"{', '.join(k for k, v in options.items() if v is not None)} only apply to --engine ray")
        return LocalEngine()
    if name == "ray":
        from .ray_engine import RayEngine

        return RayEngine(**{k: v for k, v in options.items() if v is not None})
    raise FeatcacheError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


def run(plan: Plan, *, overwrite: bool = False, repair: bool = False, progress: bool = True,
        wait: float = 0.0, engine=None) -> tuple[store.Cache, RunSummary]:
    """Execute a plan: reuse what is valid, compute what is missing (with ``engine``), finalize.

    Whatever the engine, this process holds the lock and owns the manifest;
    engines only write shard files and hand back their records.
    """
    from numbers import Real

    from .console import ProgressBar

    if isinstance(wait, bool) or not isinstance(wait, Real) or not wait >= 0:  # NaN is not >= 0
        raise FeatcacheError(f"wait must be a number of seconds >= 0, got {wait!r}")
    t_start = time.perf_counter()
    out = plan.out
    if out.exists() and not out.is_dir():
        raise CacheError(f"--out {out} exists and is not a directory")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    try:
        lock = store.DirectoryLock(out, wait=wait).acquire()
    except store.ReadOnlyError as exc:
        return _run_read_only(plan, t_start, exc)
    try:
        store.remove_temporaries(out)
        try:
            old = store.read_manifest(out)
        except CacheError:
            if not overwrite:
                raise
            old = None  # clear_cache_files decides whether the file is ours to replace
        old, kept = _claim(plan, old, overwrite)
        notes = [f"not featcache's, left alone: {k}" for k in kept]
        done, problems = _existing_shards(plan, old, repair)
        if not problems and len(done) == plan.n_shards and _up_to_date(plan, old, check_shards=False):
            return _noop_summary(plan, t_start, notes + _refresh_class_names(plan, old))
        notes += [f"repaired: {p}" for p in problems]
        manifest = _new_manifest(plan, list(done.values()), old)
        if done or old is not None:  # a run that has written no shard does not claim the directory
            store.write_manifest(out, manifest)
        todo = [i for i in range(plan.n_shards) if i not in done]
        stats: dict = {}
        n_todo = sum(len(plan.shard_items(i)[1]) for i in todo)
        t_compute = time.perf_counter()
        if todo:
            engine = engine or LocalEngine()
            with ProgressBar(n_todo, f"extract {plan.backbone.name}", enabled=progress) as bar:
                stats = engine.compute(plan, todo, manifest, on_items=bar.advance)
        compute_s = time.perf_counter() - t_compute
        timings = {
            "seconds": round(time.perf_counter() - t_start, 3),
            "compute_seconds": round(compute_s, 3),
            "images_computed": n_todo,
            "images_per_s": round(n_todo / compute_s, 2) if n_todo and compute_s > 0 else None,
            "build_seconds": round(stats.get("build_s", 0.0), 3),
            "first_batch_seconds": round(stats.get("first_batch_s", 0.0), 3),
            "first_batch_items": stats.get("first_batch_items", 0),
            "model_seconds": round(stats.get("model_s", 0.0), 3),
            "input_wait_seconds": round(stats.get("wait_s", 0.0), 3),
            "engine": stats.get("engine", "local"),
            **{k: stats[k] for k in ("workers", "worker_restarts") if k in stats},
        }
        store.remove_temporaries(out)  # a worker killed mid-write (Ray) leaves one; no writer is left now
        manifest = _finalize(plan, manifest, timings)
    finally:
        unclaimed = not store.is_our_manifest(out / store.MANIFEST)
        lock.release(remove=unclaimed)
        if created and unclaimed:
            _remove_unclaimed(out)
    cache = store.open_cache(out)
    summary = RunSummary(out, plan.key, len(plan.source), len(cache), len(cache.skipped), len(todo), len(done),
                         time.perf_counter() - t_start, timings["images_per_s"] or 0.0,
                         int(stats.get("bytes", 0)), False, notes)
    return cache, summary


def _claim(plan: Plan, old: dict | None, overwrite: bool) -> tuple[dict | None, list[str]]:
    """Decide whether this run may write into ``plan.out``; returns (old manifest to build on, files left alone).

    The directory must be new, empty, or a featcache cache; ``overwrite``
    replaces a cache made with other settings but removes only files
    featcache can prove it wrote.
    """
    out, kept = plan.out, []
    if old is not None and old["key"] != plan.key and not overwrite:
        raise KeyMismatchError(out, store.key_differences(old, plan.params, plan.fingerprint))
    if overwrite:
        return None, store.clear_cache_files(out)
    if old is None:
        foreign = store.foreign_entries(out)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise CacheError(f"{out} is not empty and is not a featcache cache (it holds {shown}); "
                             "choose an empty or new --out directory")
        for p in sorted((out / store.SHARDS).glob("*.h5")) if (out / store.SHARDS).is_dir() else []:
            other = store.shard_key(p)
            if other is not None and other != plan.key:
                raise CacheError(f"{out} holds shards of another cache (key {other[:12]}) and no manifest; "
                                 "pass --overwrite to replace them")
    return old, kept


def _up_to_date(plan: Plan, old: dict | None, *, check_shards: bool = True) -> bool:
    """Whether the directory already holds this plan's complete cache (shard sizes checked, not hashes)."""
    return bool(old and old.get("complete") and old["key"] == plan.key
                and len(old.get("shards", [])) == plan.n_shards and (plan.out / store.VIEW).is_file()
                and not (check_shards and any(store.shard_problems(plan.out, rec, plan.key, deep=False)
                                              for rec in old["shards"])))


def _refresh_class_names(plan: Plan, old: dict) -> list[str]:
    """Class names are not in the key (the features do not depend on them): a rename updates the manifest."""
    names = list(plan.source.class_names)
    if old["dataset"].get("class_names") == names:
        return []
    before = old["dataset"].get("class_names")
    old["dataset"]["class_names"] = names
    store.write_manifest(plan.out, old)
    return [f"class names updated: {before} -> {names}"]


def _noop_summary(plan: Plan, t_start: float, notes: list[str]) -> tuple[store.Cache, RunSummary]:
    cache = store.open_cache(plan.out)
    return cache, RunSummary(plan.out, plan.key, len(plan.source), len(cache), len(cache.skipped), 0, plan.n_shards,
                             time.perf_counter() - t_start, 0.0, 0, True, notes)


def _run_read_only(plan: Plan, t_start: float, exc: store.ReadOnlyError) -> tuple[store.Cache, RunSummary]:
    """A cache on read-only media: an up-to-date one is a no-op; anything else says why it cannot go on."""
    old = store.read_manifest(plan.out)
    if _up_to_date(plan, old):
        if old["dataset"].get("class_names") != list(plan.source.class_names):
            raise CacheError(f"{exc}; the class names changed and cannot be recorded there")
        return _noop_summary(plan, t_start, [])
    state = "holds no cache" if old is None else ("holds a cache made with other settings"
                                                  if old["key"] != plan.key else "holds an unfinished cache")
    raise CacheError(f"{exc} and {state}; extract to a writable --out") from None


def _remove_unclaimed(out: Path) -> None:
    """Undo what a run that created ``out`` and never wrote a shard left: the empty folders."""
    for d in (out / store.SHARDS, out):
        try:
            d.rmdir()  # only if empty
        except OSError:
            pass


def extract(source, backbone: str | Backbone = DEFAULT_BACKBONE, out=None, *, weights="imagenet",
            layer: str | None = None, overwrite: bool = False, repair: bool = False, progress: bool = False,
            wait: float = 0.0, classes=None, limit: int | None = None, labels=None, allow_outside: bool = False,
            data_dir=None, return_summary: bool = False, engine: str = "local", ray_address: str | None = None,
            workers: int | None = None, gpus_per_worker: float | None = None, **options) -> store.Cache:
    """Extract features of ``source`` with a frozen ``backbone`` into the cache at ``out``.

    ``source`` is a folder, a CSV manifest, a dataset name such as
    ``"fashion_mnist:test"``, a uint8 array (with ``labels=``) or a Source.
    Options are those of :class:`ExtractOptions` (``image_size``, ``pooling``,
    ``outputs``, ``dtype``, ``compute_dtype``, ``batch_size``, ``shard_size``,
    ``compression``, ``jit``, ...). Re-running resumes; an identical finished
    run is a no-op. ``engine="ray"`` computes the shards on a Ray cluster
    (``ray_address``, ``workers``, ``gpus_per_worker``); the cache is the same.
    Returns the opened :class:`~featcache.store.Cache`.
    """
    if out is None:
        raise FeatcacheError("extract needs an output directory (out=...)")
    unknown = set(options) - set(ExtractOptions.__dataclass_fields__)
    if unknown:
        raise FeatcacheError(f"unknown extract option(s): {', '.join(sorted(unknown))}")
    src = open_source(source, labels=labels, allow_outside=allow_outside, data_dir=data_dir)
    if classes is not None or limit is not None:
        src = src.subset(classes=classes, limit=limit)
    runner = make_engine(engine, address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
    plan = make_plan(src, backbone, out, ExtractOptions(**options), weights=weights, layer=layer)
    cache, summary = run(plan, overwrite=overwrite, repair=repair, progress=progress, wait=wait, engine=runner)
    return (cache, summary) if return_summary else cache
