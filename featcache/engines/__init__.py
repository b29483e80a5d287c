"""Engines compute a plan's missing shards; the runner picks one at the top.

Every engine runs the same per-shard path (:mod:`featcache.extractor`) and
writes through the same :class:`~featcache.store.CacheSink`; the caller keeps
the directory's lock and the manifest. ``local`` computes in this process,
``ray`` on a Ray cluster (loaded only when asked for).
"""

from __future__ import annotations

from ..errors import FeatcacheError
from .local import LocalEngine

ENGINES = ("local", "ray")


def make_engine(name: str = "local", **options):
    """The engine that computes missing shards: ``local`` or ``ray`` (options: address, workers, gpus_per_worker)."""
    if name == "local":
        if any(v is not None for v in options.values()):
            raise FeatcacheError(f"{', '.join(k for k, v in options.items() if v is not None)} only apply to --engine ray")
        return LocalEngine()
    if name == "ray":
        from .ray import RayEngine

        return RayEngine(**{k: v for k, v in options.items() if v is not None})
    raise FeatcacheError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
