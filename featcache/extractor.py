"""The per-shard code path every engine runs: read (decode), map (the compiled CNN), hand over each shard.

* **reader** (:func:`read_batches`): a thread decodes batches with Pillow in
  a thread pool and puts them on a bounded queue, so memory stays flat
  whatever the dataset size;
* **mapper** (:class:`Extractor`): the calling thread runs the compiled
  extractor graph on each batch, padded to one fixed shape so it is traced
  once;
* each finished shard goes to ``write`` (a :class:`~featcache.store.CacheSink`
  behind a writer thread locally, the worker's own sink on Ray).

clip-retrieval's inference runner in spirit: reader, mapper and writer are
separate roles, and a shard is the unit of work.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np

from . import store
from .decode import parse_background
from .plan import Plan


class Extractor:
    """The extractor graph for one plan, run by the plan's runtime: ``__call__(uint8 batch) -> {name: float32}``.

    ``runtime`` is the runtime that runs (``keras`` or ``openvino``, see
    :mod:`featcache.runtimes`) and ``note`` the one line saying why it is not
    the one asked for, or None.
    """

    def __init__(self, plan: Plan):
        from .backbones.graph import build_extractor
        from .runtimes import make_runtime

        opts = plan.options
        self.plan = plan  # views read the recipe from it
        self.batch_size = int(opts.batch_size)
        input_size = tuple(plan.input_size)
        self.model, self.names = build_extractor(
            plan.backbone, input_size=input_size, image_size=plan.image_size, pooling=opts.pooling,
            outputs=opts.outputs, preprocess=opts.preprocess, compute_dtype=opts.compute_dtype)
        jit = {"auto": "auto", "true": True, "false": False}[opts.jit]
        self.model.compile(jit_compile=jit)
        identity = {k: v for k, v in plan.params.items() if k not in ("dtype", "shard_size", "compression")}
        identity["input_size"] = list(input_size)
        self.run, self.note = make_runtime(opts.runtime, self.model, self.names, self.batch_size, identity=identity,
                                           calibrate=self._calibration_images)
        self.runtime = self.run.name

    def _calibration_images(self, limit: int | None = None) -> np.ndarray:
        """The int8 calibration sample (the plan's ``calibration_ids``; its first ``limit``), decoded as
        extraction does."""
        plan = self.plan
        src = plan.calibration_source or plan.source
        by_id = {it.id: it for it in src.items}
        ids = plan.calibration_ids[:limit]
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise store.CacheError(f"the int8 graph was calibrated on {len(missing):,} image(s) no longer in the "
                                   f"source (such as {missing[0]!r}); pass --overwrite to calibrate on today's "
                                   "images and extract every image again")
        with ThreadPoolExecutor(default_decode_threads("openvino"), thread_name_prefix="featcache-decode") as pool:
            batch = src.read([by_id[i] for i in ids], plan.image_size, pool,
                             background=parse_background(plan.options.background))
        if not len(batch.items):
            raise store.CacheError("no image of the int8 calibration sample could be decoded")
        return batch.images

    def view(self, images: np.ndarray, ids: Sequence[str], view: int) -> dict[str, np.ndarray]:
        """Features of augmented view ``view`` of ``images`` (whose item ids are ``ids``).

        The images are augmented as they are shipped to the model (decoded at
        the model's size, or an array source's own), then go through the very
        graph the plain view does: a view whose transform is the identity is
        the plain view, so heads never learn a difference between the two.
        """
        from .augment import augment_images, parse_recipe

        size = tuple(images.shape[1:3])
        params = parse_recipe(self.plan.options.augment).params(ids, view, size)
        return self(augment_images(images, params))

    def output_info(self, dtype: str) -> dict:
        return {n: {"shape": [int(d) for d in self.model.output[n].shape[1:]], "dtype": dtype} for n in self.names}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.run(images)


class _Accumulator:
    """Collects one shard's rows batch by batch."""

    def __init__(self, index, item_range, has_splits):
        self.index, self.item_range, self.has_splits = index, item_range, has_splits
        self.features: dict[str, list] = {}
        self.labels, self.ids, self.splits, self.skipped = [], [], [], []
        self.alpha = 0
        self.digests: list[str] | None = []  # None once a batch came without them (a source that cannot hash)

    def add(self, feats: dict | None, batch) -> None:
        if batch is None:  # a view shard of a plain shard without train images: written empty
            return
        if feats is not None:
            for k, v in feats.items():
                self.features.setdefault(k, []).append(v)
        self.labels += [it.label for it in batch.items]
        self.ids += [it.id for it in batch.items]
        self.splits += [it.split or "" for it in batch.items]
        self.skipped += [(it.id, reason) for it, reason in batch.skipped]
        self.alpha += batch.alpha
        if batch.digests is None or self.digests is None:
            self.digests = None
        else:
            self.digests += batch.digests

    def finish(self, names, empty_shapes) -> store.ShardData:
        feats = {}
        for k in names:
            parts = self.features.get(k)
            feats[k] = np.concatenate(parts) if parts else np.zeros((0,) + tuple(empty_shapes[k]), np.float32)
        return store.ShardData(self.index, self.item_range, feats, np.asarray(self.labels, np.int64), self.ids,
                               self.splits if self.has_splits else None, self.skipped, self.alpha, self.digests)


def default_decode_threads(runtime: str) -> int:
    """Pillow decode threads when ``decode_threads`` is not set: sized against the runtime's own threads.

    Keras (TensorFlow) leaves cores idle between its ops, so cores + 2 decode
    threads fill them; OpenVINO keeps every core busy with its own threads, so
    one decode thread a core is enough to feed it (input wait stays ~1% of the
    run, docs/PERFORMANCE.md) without fighting it for the same cores.
    """
    cores = os.cpu_count() or 2
    return min(8, cores if runtime == "openvino" else cores + 2)


def read_batches(plan: Plan, indices: Sequence[int], executor) -> Iterable:
    """Reader: (shard index, item range, batch, last-of-shard) in order; a shard without items is one None batch."""
    opts = plan.options
    bs = opts.batch_size
    for index in indices:
        item_range, items = plan.shard_items(index)
        if not items:
            yield index, item_range, None, True
            continue
        for a in range(0, len(items), bs):
            chunk = items[a:a + bs]
            batch = plan.source.read(chunk, plan.image_size, executor, background=parse_background(opts.background))
            yield index, item_range, batch, a + bs >= len(items)


def _start_reader(plan: Plan, indices: Sequence[int], workers: int, q: queue.Queue, stop: threading.Event,
                  done: object) -> threading.Thread:
    """Start the reader thread: every batch onto ``q`` (until ``stop`` is set), then ``done`` or its exception."""
    def produce():
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="featcache-decode") as pool:
                for entry in read_batches(plan, indices, pool):
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
    return reader


def _map_batch(plan: Plan, extractor: Extractor, index: int, batch, stats: dict) -> dict | None:
    """Mapper: one batch's features (of the view shard ``index`` holds), or None without images; timed in ``stats``."""
    t0 = time.perf_counter()
    view = plan.view_of(index)
    if batch is None or not len(batch.items):
        feats = None
    elif view:
        feats = extractor.view(batch.images, [it.id for it in batch.items], view)
    else:
        feats = extractor(batch.images)
    took = time.perf_counter() - t0
    stats["model_s"] = stats.get("model_s", 0.0) + took
    if feats is not None and "first_batch_s" not in stats:  # includes tracing / XLA compilation
        stats["first_batch_s"], stats["first_batch_items"] = took, len(batch.items)
    return feats


def extract_shards(plan: Plan, indices: Sequence[int], extractor: Extractor, write: Callable[[store.ShardData], None],
                   *, on_batch: Callable[[int], None] = lambda n: None, stats: dict | None = None) -> None:
    """Compute and hand to ``write`` every shard in ``indices``: the per-shard code path.

    Decoding runs ahead in a reader thread through a bounded queue of
    ``prefetch`` batches, overlapped with model execution here.
    """
    stats = stats if stats is not None else {}
    opts = plan.options
    workers = opts.decode_threads or default_decode_threads(extractor.runtime)
    q: queue.Queue = queue.Queue(maxsize=opts.prefetch)
    stop = threading.Event()
    done = object()
    shapes = {k: v["shape"] for k, v in extractor.output_info(opts.dtype).items()}
    reader = _start_reader(plan, indices, workers, q, stop, done)
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
            acc.add(_map_batch(plan, extractor, index, batch, stats), batch)
            if batch is not None:
                on_batch(len(batch.items) + len(batch.skipped))
            if last:
                write(acc.finish(extractor.names, shapes))
                acc = None
    finally:
        stop.set()
        reader.join(timeout=30)
