"""Reading a cache's augmented views: the part of :class:`~featcache.store.Cache` that maps rows to their views."""

from __future__ import annotations

import numpy as np

from ..errors import CacheError
from .layout import decode_strings
from .rows import ShardInfo


class AugmentedViews:
    """What :class:`~featcache.store.Cache` offers about its stored augmented views (its state is the Cache's)."""

    @property
    def views(self) -> int:
        """Augmented views stored per training image (0: the plain view only); see :meth:`views_of`.

        An unfinished cache (opened with ``allow_partial``) offers none: its views may lack shards.
        """
        return int(self.manifest.get("views", 0)) if self.complete else 0

    @property
    def augment(self) -> str | None:
        """The recipe of the stored views (``featcache.augment``), or None when there are none."""
        return self.manifest.get("augment") if self.views else None

    def view_shards(self, view: int) -> list[ShardInfo]:
        """The shards of augmented view ``view`` (1 ... :attr:`views`), in the order of :attr:`shards`.

        Shard ``j`` of a view holds the train-split images of the plain shard
        ``j``, in source order; its ``rows`` number the view's own rows.
        """
        if not 1 <= int(view) <= self.views:
            raise CacheError(f"{self.path} has views 1 to {self.views}, not {view!r}")
        return list(self._view_shards.get(int(view), []))

    def view_ids(self, view: int) -> list[str]:
        """The item ids of every row of augmented view ``view``, in its row order."""
        view = int(view)
        if view not in self._view_columns:
            ids: list[str] = []
            for shard in self.view_shards(view):
                with self._open(shard) as f:
                    ids.extend(decode_strings(f["ids"][:]))
            self._view_columns[view] = {"ids": ids, "position": {i: r for r, i in enumerate(ids)}}
        return list(self._view_columns[view]["ids"])

    def view_positions(self, view: int, rows) -> np.ndarray:
        """For each of the cache's ``rows``, the row of augmented view ``view`` showing the same image (-1: none).

        Only train-split images have views, so a val or test row is always -1.
        """
        self.view_ids(view)
        position = self._view_columns[int(view)]["position"]
        ids = self._columns()["ids"]
        return np.array([position.get(ids[int(r)], -1) for r in np.asarray(rows).reshape(-1)], np.int64)

    def views_of(self, rows, output: str | None = None, views: int | None = None) -> np.ndarray:
        """The augmented views of the cache's ``rows``: an array ``(K, len(rows), *shape)`` (storage dtype).

        ``K`` is ``views`` (default: every stored view, :attr:`views`). A row
        without views (a val or test image) gets its own plain features in
        each, so stacking the result with the plain rows never adds a view of
        an image outside the train split.

        Examples:
            >>> X, y = cache.split("train")                                        # doctest: +SKIP
            >>> V = cache.views_of(cache.split_rows("train"))                      # doctest: +SKIP
            >>> X_all, y_all = np.concatenate([X, *V]), np.tile(y, 1 + len(V))     # doctest: +SKIP
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        k = self.views if views is None else int(views)
        if not 0 <= k <= self.views:
            raise CacheError(f"{self.path} holds {self.views} views, not {views!r}")
        name = self.output_name(output)
        info = self.output_info(name)
        size = k * len(rows) * int(np.prod(info["shape"])) * np.dtype(info["dtype"]).itemsize
        if self.max_load_bytes is not None and size > self.max_load_bytes:
            raise CacheError(f"loading {k} views of {len(rows):,} rows would take {size:,} bytes, over this cache's "
                             f"limit of {self.max_load_bytes:,}; stream them (train --stream)")
        out = np.empty((k, len(rows)) + tuple(info["shape"]), info["dtype"])
        positions = [self.view_positions(v, rows) for v in range(1, k + 1)]
        missing_any = np.zeros(len(rows), bool)
        for pos in positions:
            missing_any |= pos < 0
        plain = self.read_rows(rows[missing_any], name).features if missing_any.any() else None
        where = np.cumsum(missing_any) - 1  # a row's place among the plain rows read
        for v, pos in enumerate(positions, start=1):
            missing = pos < 0
            if missing.any():
                out[v - 1][missing] = plain[where[missing]]
            if (~missing).any():
                out[v - 1][~missing] = self._read_view_rows(v, pos[~missing], name)
        return out

    def read_view_rows(self, view: int, positions, output: str | None = None) -> np.ndarray:
        """Rows ``positions`` of augmented view ``view`` (its own row numbers, see :meth:`view_positions`)."""
        if not 1 <= int(view) <= self.views:
            raise CacheError(f"{self.path} has views 1 to {self.views}, not {view!r}")
        return self._read_view_rows(int(view), np.asarray(positions, np.int64).reshape(-1), self.output_name(output))

    def _read_view_rows(self, view: int, positions: np.ndarray, name: str) -> np.ndarray:
        shards = self.view_shards(view)
        info = self.output_info(name)
        out = np.empty((len(positions),) + tuple(info["shape"]), info["dtype"])
        starts = np.array([sh.rows[0] for sh in shards] + [shards[-1].rows[1] if shards else 0], np.int64)
        owner = np.searchsorted(starts, positions, side="right") - 1
        for b in np.unique(owner):
            shard = shards[int(b)]
            sel = np.flatnonzero(owner == b)
            out[sel] = self.read_shard_features(shard, name)[positions[sel] - shard.rows[0]]
        return out
