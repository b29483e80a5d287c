"""The local engine: this process computes the missing shards.

The reader thread decodes, the model runs here, and a writer thread hands
each finished shard to the cache's sink (written atomically, then committed
to the manifest), so writing overlaps the next shard's compute.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Sequence

from .. import store
from ..extractor import Extractor, extract_shards
from ..plan import Plan


class ShardWriter:
    """Writer thread: each shard written by the sink, then committed to its manifest."""

    def __init__(self, sink: store.CacheSink):
        self.sink = sink
        # one shard waiting: writing is quick beside compute, and each uncommitted shard is work a kill loses
        self.q: queue.Queue = queue.Queue(maxsize=1)
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
                record = self.sink.write(shard)
                self.sink.commit(record, shard)
                self.bytes += record["bytes"]
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


class LocalEngine:
    """This process computes the missing shards: reader thread, model here, writer thread."""

    name = "local"

    def compute(self, plan: Plan, todo: Sequence[int], sink: store.CacheSink, *,
                on_items: Callable[[int], None] = lambda n: None) -> dict:
        stats: dict = {"engine": self.name}
        t0 = time.perf_counter()
        extractor = Extractor(plan)
        stats["build_s"] = time.perf_counter() - t0
        stats["runtime"] = extractor.runtime
        stats["notes"] = [extractor.note] if extractor.note else []
        sink.set_outputs(extractor.output_info(plan.options.dtype))
        writer = ShardWriter(sink).start()
        try:
            extract_shards(plan, todo, extractor, writer.put, on_batch=on_items, stats=stats)
        finally:
            writer.close()
        stats["bytes"] = writer.bytes
        return stats
