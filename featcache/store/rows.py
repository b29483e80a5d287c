"""What a reader of a cache gets: a batch of rows, and one shard's place among the cache's rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class FeatureBatch:
    """A batch streamed from a cache: features, labels, ids and split names."""

    features: np.ndarray
    labels: np.ndarray
    ids: list[str]
    splits: list[str] | None


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a cache, as a reader needs it: where it is and which rows it holds."""

    index: int
    path: Path
    #: ``[start, stop)`` of its rows in the cache's row order
    rows: tuple[int, int]
    #: ``[start, stop)`` of the source items it covers (skipped items included)
    items: tuple[int, int]

    @property
    def n_rows(self) -> int:
        return self.rows[1] - self.rows[0]
