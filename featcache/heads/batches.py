"""Training batches for Keras heads: from arrays in memory, or streamed from a cache.

Both sources share one batch order (:func:`epoch_order`): each epoch permutes
the blocks (shards), then the rows within each block, then cuts batches from
that stream. A streamed run (:class:`CacheRows`) therefore sees exactly the
batches an in-memory run sees, while holding only one shard in memory.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def epoch_order(block_sizes: Sequence[int], seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Global row order for one epoch: blocks permuted, rows permuted within each block."""
    offsets = np.concatenate([[0], np.cumsum(block_sizes)]).astype(np.int64)
    if not shuffle:
        return np.arange(offsets[-1])
    rng = np.random.default_rng([int(seed), int(epoch)])
    parts = []
    for b in rng.permutation(len(block_sizes)):
        parts.append(offsets[b] + rng.permutation(int(block_sizes[b])))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def batches_in_order(take, y, order: np.ndarray, batch_size: int, sample_weight=None):
    """Yield ``(X, y, sample_weight)`` batches in ``order``; ``take(idx)`` returns feature rows."""
    for a in range(0, len(order), batch_size):
        idx = order[a:a + batch_size]
        yield take(idx), y[idx], None if sample_weight is None else sample_weight[idx]


class CacheRows:
    """Rows of a cache selected per shard (e.g. the train split), read one shard at a time."""

    def __init__(self, cache, mask: np.ndarray, output: str | None = None):
        self.cache = cache
        self.output = cache.output_name(output)
        self.shards = cache.shards
        self.local: list[np.ndarray] = [np.flatnonzero(mask[s.rows[0]:s.rows[1]]) for s in self.shards]
        self.block_sizes = [len(ix) for ix in self.local]
        self.global_rows = np.flatnonzero(mask) if len(mask) else np.zeros(0, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.block_sizes)]).astype(np.int64)
        self._loaded: tuple[int, np.ndarray] | None = None

    def block(self, b: int) -> np.ndarray:
        """The selected rows of shard ``b`` as float32 (2-D), keeping one shard in memory."""
        if self._loaded is None or self._loaded[0] != b:
            data = self.cache.read_shard_features(self.shards[b], self.output)
            data = data[self.local[b]].reshape(len(self.local[b]), -1).astype(np.float32)
            self._loaded = (b, data)
        return self._loaded[1]

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Rows at selection positions (sorted by block as batches from epoch_order are)."""
        blocks = np.searchsorted(self.offsets, positions, side="right") - 1
        out = None
        for b in dict.fromkeys(blocks.tolist()):
            sel = blocks == b
            rows = self.block(b)[positions[sel] - self.offsets[b]]
            if out is None:
                out = np.empty((len(positions), rows.shape[1]), np.float32)
            out[sel] = rows
        return out if out is not None else np.zeros((0, 0), np.float32)

    def iter_blocks(self):
        for b in range(len(self.shards)):
            if self.block_sizes[b]:
                yield b, self.block(b)


class ViewRows(CacheRows):
    """The same selected rows as ``plain`` (a :class:`CacheRows`), shown as augmented view ``view``.

    Block ``b`` is view ``view``'s shard of plain shard ``b``; a selected row
    whose image has no such view (not in the train split when the views were
    extracted) reads as its plain row. Positions are ``plain``'s, so a batch
    can mix views row by row.
    """

    def __init__(self, plain: CacheRows, view: int):
        self.cache, self.output, self.plain = plain.cache, plain.output, plain
        by_plain = {s.items: s for s in plain.cache.view_shards(view)}  # a view's shard covers its plain shard's items
        self.shards = [by_plain[s.items] for s in plain.shards]
        pos = plain.cache.view_positions(view, plain.global_rows)
        self.local = []
        for b, shard in enumerate(self.shards):
            part = pos[plain.offsets[b]:plain.offsets[b + 1]]
            inside = (part >= shard.rows[0]) & (part < shard.rows[1])
            self.local.append(np.where(inside, part - shard.rows[0], -1))
        self.block_sizes, self.global_rows, self.offsets = plain.block_sizes, plain.global_rows, plain.offsets
        self._loaded = None

    def block(self, b: int) -> np.ndarray:
        if self._loaded is None or self._loaded[0] != b:
            local = self.local[b]
            have = local >= 0
            data = self.cache.read_shard_features(self.shards[b], self.output) if have.any() else None
            out = np.empty((len(local), self.plain.block(b).shape[1]), np.float32)
            if have.any():
                out[have] = data[local[have]].reshape(int(have.sum()), -1)
            if not have.all():
                out[~have] = self.plain.block(b)[~have]
            self._loaded = (b, out)
        return self._loaded[1]
