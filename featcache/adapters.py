"""A cache as the ecosystem's own input types: a ``keras.utils.PyDataset`` and a ``tf.data.Dataset``.

Stage two, beside the heads: both read a split's rows lazily from the shards
(one batch in memory, read through :meth:`Cache.read_rows`), in a fresh
random order every epoch, so ``model.fit`` never sees class-sorted batches.
Keras and TensorFlow are imported when an adapter is made, never before.

Unshuffled, rows come in source order (a folder source lists its images
class by class).
"""

from __future__ import annotations

import itertools

import numpy as np

from .errors import FeatcacheError, check_integer
from .splits import TEST_FRACTION, VAL_FRACTION
from .store import Cache, open_cache


class _SplitRows:
    """The rows of one split of a cache, cut into batches in a per-epoch order (shared by both adapters)."""

    def __init__(self, cache, split, output, batch_size, shuffle, seed, val_fraction, test_fraction):
        self.cache = cache if isinstance(cache, Cache) else open_cache(cache)
        self.output = self.cache.output_name(output)
        check_integer(batch_size, "batch_size")
        check_integer(seed, "seed", minimum=0)
        self.rows = self.cache.split_rows(split, val_fraction, test_fraction)
        if split is not None and not len(self.rows):
            raise FeatcacheError(f"{self.cache.path}: the {split} split has no labelled rows")
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.shape = tuple(self.cache.output_info(self.output)["shape"])

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.rows
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.rows)

    def batch(self, order: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        b = self.cache.read_rows(order[index * self.batch_size:(index + 1) * self.batch_size], self.output)
        return b.features.astype(np.float32), b.labels


_PYDATASET_CLASS = None


def _pydataset_class():
    """The ``keras.utils.PyDataset`` subclass, made at first use so that importing featcache stays Keras-free."""
    global _PYDATASET_CLASS
    if _PYDATASET_CLASS is None:
        import keras

        class CacheDataset(keras.utils.PyDataset):
            """Batches ``(features float32, labels int64)`` of one split, reshuffled after every epoch."""

            def __init__(self, rows: _SplitRows, **kwargs):
                super().__init__(**kwargs)
                self.rows = rows
                self.epoch = 0
                self._order = rows.order(0)

            @property
            def num_batches(self) -> int:
                return len(self.rows)

            def __len__(self) -> int:
                return len(self.rows)

            def __getitem__(self, index):
                return self.rows.batch(self._order, index)

            def on_epoch_end(self):
                self.epoch += 1
                self._order = self.rows.order(self.epoch)

        _PYDATASET_CLASS = CacheDataset
    return _PYDATASET_CLASS


def keras_dataset(cache, split: str | None = "train", *, batch_size: int = 32, shuffle: bool = True, seed: int = 0,
                  output: str | None = None, val_fraction: float = VAL_FRACTION,
                  test_fraction: float = TEST_FRACTION, **pydataset_kwargs):
    """One split of a cache as a ``keras.utils.PyDataset`` for ``model.fit``, read lazily from the shards.

    Args:
        cache: a :class:`~featcache.store.Cache` or its directory.
        split: ``"train"``, ``"val"`` or ``"test"`` (the labelled rows ``train``
            uses, see :meth:`Cache.split_masks`), or None for every row.
        batch_size: rows a batch (the last one smaller).
        shuffle: a new random order over the split's rows every epoch (seeded
            by ``seed`` and the epoch); False keeps source order.
        seed: the shuffle's seed.
        output: which stored output (default: the first).
        val_fraction, test_fraction: the hashed split's fractions.
        **pydataset_kwargs: ``workers``, ``use_multiprocessing``,
            ``max_queue_size`` of ``keras.utils.PyDataset``.

    Returns:
        A ``keras.utils.PyDataset`` of ``(X, y)`` batches: features as float32
        in their stored shape, labels as indices into ``cache.class_names``.

    Examples:
        >>> train = featcache.keras_dataset(cache, "train", batch_size=64)         # doctest: +SKIP
        >>> val = featcache.keras_dataset(cache, "val", shuffle=False)             # doctest: +SKIP
        >>> model.fit(train, validation_data=val, epochs=10)                       # doctest: +SKIP
    """
    rows = _SplitRows(cache, split, output, batch_size, shuffle, seed, val_fraction, test_fraction)
    return _pydataset_class()(rows, **pydataset_kwargs)


def tf_dataset(cache, split: str | None = "train", *, batch_size: int = 32, shuffle: bool = True, seed: int = 0,
               output: str | None = None, val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION,
               prefetch: int = 2):
    """One split of a cache as a ``tf.data.Dataset`` of ``(X, y)`` batches, read lazily from the shards.

    Each pass over the dataset (each epoch of ``model.fit``) draws a new order.

    Args:
        cache: a :class:`~featcache.store.Cache` or its directory.
        split: ``"train"``, ``"val"`` or ``"test"``, or None for every row.
        batch_size: rows a batch (the last one smaller).
        shuffle: a new random order every pass (seeded by ``seed`` and the pass);
            False keeps source order.
        seed: the shuffle's seed.
        output: which stored output (default: the first).
        val_fraction, test_fraction: the hashed split's fractions.
        prefetch: batches read ahead (``Dataset.prefetch``).

    Returns:
        A ``tf.data.Dataset`` yielding float32 features (stored shape) and int64 labels.

    Examples:
        >>> ds = featcache.tf_dataset(cache, "train", batch_size=64)   # doctest: +SKIP
        >>> model.fit(ds, epochs=10)                                   # doctest: +SKIP
    """
    import tensorflow as tf

    rows = _SplitRows(cache, split, output, batch_size, shuffle, seed, val_fraction, test_fraction)
    passes = itertools.count()

    def generate():
        order = rows.order(next(passes))
        for i in range(len(rows)):
            yield rows.batch(order, i)

    spec = (tf.TensorSpec((None,) + rows.shape, tf.float32), tf.TensorSpec((None,), tf.int64))
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(rows)))
    return ds.prefetch(prefetch) if prefetch else ds
