"""The names and numbering of a cache directory's files, and how text is stored in them (docs/FORMAT.md)."""

from __future__ import annotations

import h5py
import numpy as np


FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VIEW = "features.h5"
SHARDS = "shards"
LOCK = ".lock"
STORAGE_DTYPES = ("float16", "float32")
COMPRESSIONS = (None, "lzf", "gzip")
STRING_DTYPE = h5py.string_dtype("utf-8")


def encode_strings(values) -> np.ndarray:
    """Text for an HDF5 string dataset, losslessly: names that are not valid UTF-8 on disk
    (Python's surrogate escapes) go in as their original bytes."""
    return np.array([v.encode("utf-8", "surrogateescape") for v in values], dtype=object)


def decode_strings(values) -> list[str]:
    """The inverse of :func:`encode_strings`: bytes that are not UTF-8 come back as surrogate escapes."""
    return [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v) for v in values]


def shard_name(index: int) -> str:
    return f"{index:05d}.h5"


def generation_dir(generation: int) -> str:
    """Where generation ``generation``'s shards live: ``shards`` for 0 (every cache before growing), else ``shards/gN``."""
    return SHARDS if not generation else f"{SHARDS}/g{int(generation)}"


def shard_file(index: int, generation: int = 0) -> str:
    """A shard's path relative to the cache directory: the only path a manifest may name for it."""
    return f"{generation_dir(generation)}/{shard_name(index)}"


def base_shards(shard_size: int, n_items: int) -> int:
    """Shards of the plain view: every source item once (docs/FORMAT.md)."""
    return max(1, -(-int(n_items) // int(shard_size)))


def shard_item_range(index: int, shard_size: int, n_items: int) -> tuple[int, int]:
    """``[start, stop)`` of the source items shard ``index`` covers (docs/FORMAT.md).

    Shards past the plain view's hold augmented views: shard ``index`` covers the
    items of plain shard ``index % base_shards`` (its train items only).
    """
    start = (index % base_shards(shard_size, n_items)) * shard_size
    return start, min(start + shard_size, n_items)
