"""Stage one on a Ray cluster: the same shards, computed by actors on many machines.

The driver (the process that called ``extract``) keeps every duty it has with
the local engine: it holds the cache directory's lock, decides which shards
are missing, owns the manifest and writes the completion marker. Each Ray
worker is an actor that builds the backbone once, then takes whole shards:
for each one it runs :func:`featcache.extractor.extract_shards` (the per-shard
code path of the local engine) and writes the shard with the same
temporary-name-then-rename rule, into the cache directory, which must be on
storage every worker sees. It hands back only the shard's manifest record.

A worker that dies (killed, out of memory, node lost) has its shard handed to
a fresh worker, up to ``max_retries`` times (3): a shard is given up at its
worker's 4th death. Because shards, keys and records are the local engine's,
a cache built here equals one built locally row for row, and either engine
can resume the other's run.
"""

from __future__ import annotations

from collections import Counter, deque
from pathlib import Path
from typing import Callable, Sequence

from ..errors import FeatcacheError
from ..extractor import Extractor, extract_shards
from ..plan import Plan
from ..ray_cluster import connect, import_ray


class ShardWorker:
    """A Ray actor: builds the extractor once, then computes and writes whole shards."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.sink = plan.sink()  # writes only: the driver keeps the manifest
        self.extractor = Extractor(plan)

    def extract(self, index: int):
        """Compute and write shard ``index``; returns (record or None, items done, timings)."""
        shards: list = []
        stats: dict = {}
        extract_shards(self.plan, [index], self.extractor, shards.append, stats=stats)
        stats["runtime"], stats["note"] = self.extractor.runtime, self.extractor.note
        _, items = self.plan.shard_items(index)
        record = self.sink.write(shards[0]) if shards else None
        return record, len(items), stats


class RayEngine:
    """Computes the missing shards on Ray actors; the caller keeps the lock and the manifest."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, max_retries: int = 3):
        import_ray()  # fail before any work when Ray is missing
        if workers is not None and int(workers) <= 0:
            raise FeatcacheError(f"--workers must be a positive integer, got {workers!r}")
        if gpus_per_worker < 0 or cpus_per_worker <= 0:
            raise FeatcacheError("--gpus-per-worker must be >= 0 and cpus per worker > 0")
        self.address, self.workers = address, workers
        self.gpus_per_worker, self.cpus_per_worker = float(gpus_per_worker), float(cpus_per_worker)
        self.max_retries = int(max_retries)

    def _n_workers(self, ray, n_shards: int) -> int:
        if self.workers:
            n = int(self.workers)
        else:
            res = ray.cluster_resources()
            if self.gpus_per_worker:
                n = int(res.get("GPU", 0) // self.gpus_per_worker)
                if n == 0:
                    raise FeatcacheError(f"the Ray cluster has no GPUs ({res.get('GPU', 0)}) for "
                                         f"--gpus-per-worker {self.gpus_per_worker}")
            else:
                n = max(1, int(res.get("CPU", 1) // self.cpus_per_worker))
        return max(1, min(n, n_shards))

    def compute(self, plan: Plan, todo: Sequence[int], sink, *,
                on_items: Callable[[int], None] = lambda n: None) -> dict:
        ray = import_ray()
        started = connect(self.address)
        try:
            return self._compute(ray, plan, todo, sink, on_items)
        finally:
            if started:
                ray.shutdown()

    def _compute(self, ray, plan, todo, sink, on_items) -> dict:
        from ray.exceptions import RayActorError, RayTaskError

        actor_cls = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                               max_restarts=0)(ShardWorker)
        # workers write where the driver means: a relative --out would land in each worker's own cwd
        plan_ref = ray.put(plan.at(Path(plan.out).resolve()))
        n_workers = self._n_workers(ray, len(todo))
        idle = [actor_cls.remote(plan_ref) for _ in range(n_workers)]
        pending = deque(todo)
        running: dict = {}
        deaths: Counter = Counter()
        stats = {"engine": self.name, "workers": n_workers, "bytes": 0, "model_s": 0.0, "wait_s": 0.0,
                 "worker_restarts": 0, "notes": []}
        runtimes: set = set()
        try:
            while pending or running:
                while idle and pending:
                    actor, index = idle.pop(), pending.popleft()
                    running[actor.extract.remote(index)] = (actor, index)
                (ref,), _ = ray.wait(list(running), num_returns=1)
                actor, index = running.pop(ref)
                try:
                    record, n_items, shard_stats = ray.get(ref)
                except RayActorError as exc:  # the worker died: its shard goes to a fresh worker
                    deaths[index] += 1
                    if deaths[index] > self.max_retries:
                        raise FeatcacheError(f"shard {index} lost its Ray worker {deaths[index]} times; giving up "
                                             f"(last: {exc}). Shards already written are kept; run again to "
                                             "resume.") from None
                    stats["worker_restarts"] += 1
                    pending.appendleft(index)
                    idle.append(actor_cls.remote(plan_ref))
                    continue
                except RayTaskError as exc:  # an error inside the worker: the same error as locally
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, FeatcacheError):
                        raise cause from None
                    raise FeatcacheError(f"a Ray worker failed on shard {index}: {cause or exc}") from None
                if record is not None:
                    sink.commit(record)
                    stats["bytes"] += record["bytes"]
                stats["model_s"] += shard_stats.get("model_s", 0.0)
                stats["wait_s"] += shard_stats.get("wait_s", 0.0)
                runtimes.add(shard_stats.get("runtime"))
                if shard_stats.get("note") and shard_stats["note"] not in stats["notes"]:
                    stats["notes"].append(shard_stats["note"])
                on_items(n_items)
                idle.append(actor)
        finally:
            for actor, _ in running.values():
                ray.kill(actor)
            for actor in idle:
                ray.kill(actor)
        stats["runtime"] = ",".join(sorted(r for r in runtimes if r)) or None
        return stats
