"""The pieces every image source shares: items, batches, the base class and subsets."""

from __future__ import annotations

import hashlib
import itertools
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import FeatcacheWarning, SourceError, check_integer

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
#: the seed of ``limit``'s stratified sample (``--limit-seed``), declared once
LIMIT_SEED = 0


class SubsetWarning(FeatcacheWarning):
    """A subset (``limit``, ``first``) left out every image of some class the source has."""


@dataclass(frozen=True)
class Item:
    """One image of a source: ``index`` is its position in the source."""

    index: int
    id: str
    label: int
    split: str | None = None


@dataclass
class Batch:
    """What a source returns for a list of items: decoded rows and skips."""

    images: np.ndarray  # (n_ok, H, W, 3) uint8
    items: list[Item]  # the n_ok items, in order
    skipped: list[tuple[Item, str]]  # (item, reason)
    alpha: int = 0  # decoded images that had a pixel not opaque (composited on the background)
    #: sha256 hex of each decoded item's bytes (the file's, or the array's), parallel to ``items``
    digests: list[str] | None = None


class Source:
    """Base class. Subclasses set ``items``, ``class_names`` and ``kind``."""

    kind = "source"
    items: list[Item]
    class_names: list[str]
    #: (height, width) of every image for array sources; None for files,
    #: which are decoded straight to the model's input size.
    native_size: tuple[int, int] | None = None
    #: how to open this source again (recorded in the manifest; None for in-memory arrays)
    address: dict | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_splits(self) -> bool:
        return any(it.split is not None for it in self.items)

    def describe(self) -> str:
        return self.kind

    def fingerprint(self) -> str:
        raise NotImplementedError

    def read(self, items: Sequence[Item], size: tuple[int, int], executor: Executor | None = None, *,
             background: tuple[int, int, int] = (255, 255, 255)) -> Batch:
        """Decode ``items`` at ``size``, transparent images composited on ``background`` (r, g, b)."""
        raise NotImplementedError

    def digests(self, items: Sequence[Item], executor: Executor | None = None) -> list[str | None]:
        """The content digest of each item, as :meth:`read` records it (None: unreadable): what grow matches by."""
        raise NotImplementedError

    def had_alpha(self, items: Sequence[Item], executor: Executor | None = None, *,
                  background=(255, 255, 255)) -> list[bool]:
        """Whether each item's image has a pixel that is not opaque (decoded again, resized to almost nothing).

        What a grow asks of the rows whose shard's ``alpha`` count does not say (it counts a shard, not a row).
        """
        mapper = executor.map if executor is not None else map
        return list(mapper(lambda it: self.read([it], (8, 8), background=background).alpha > 0, items))

    def subset(self, *, classes: Sequence[int] | None = None, limit: int | None = None, first: int | None = None,
               limit_seed: int = LIMIT_SEED) -> "Source":
        """A view of this source: some labels, and a seeded stratified sample of ``limit`` items or the ``first``.

        Args:
            classes: keep only items with these labels.
            limit: keep a sample of this many items, stratified by label (and by
                split where the source has splits), drawn with ``limit_seed``;
                the sample keeps source order.
            first: keep the first this many items in source order instead
                (a class-folder source lists its images class by class, so
                this can drop whole classes).
            limit_seed: the seed of ``limit``'s sample.

        Returns:
            A :class:`SubsetSource`; it warns (:class:`SubsetWarning`) when
            ``limit`` or ``first`` leaves out every image of a class.

        Examples:
            >>> src = ArraySource(np.zeros((6, 4, 4), np.uint8), [0, 0, 0, 1, 1, 1])
            >>> [it.label for it in src.subset(limit=2).items]
            [0, 1]
        """
        return SubsetSource(self, classes=classes, limit=limit, first=first, limit_seed=limit_seed)


def _hash_lines(lines) -> str:
    """sha256 of the lines, each ended by a newline; hashed a few thousand lines at a time."""
    h = hashlib.sha256()
    lines = iter(lines)
    while chunk := list(itertools.islice(lines, 4096)):
        h.update(("\n".join(chunk) + "\n").encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def check_class_names(names, where: str) -> None:
    """Refuse, before any work, a class name HDF5 cannot store (a NUL ends its strings) or one not a string."""
    for name in names:
        if not isinstance(name, str):
            raise SourceError(f"{where}: class names must be strings, got {type(name).__name__} {name!r:.40}")
        if "\0" in name:
            raise SourceError(f"{where}: the class name {name!r:.60} contains a NUL character")


def dense_labels(values: set[int]) -> bool:
    """Whether integer labels are class indices 0..K-1 with few gaps, so K names can be made for them.

    Never allocates per possible label: a label of 1000000000 is a name, not
    the last of a billion classes.
    """
    return not values or max(values) < max(2 * len(values), 1024)


def _is_int(v: str) -> bool:
    try:
        int(v)
        return True
    except ValueError:
        return False


def stratified_sample(items: Sequence[Item], n: int, seed: int) -> list[Item]:
    """``n`` of ``items`` drawn without replacement, each (split, label) group in proportion, in source order.

    The same rows as scikit-learn's ``resample(np.arange(len(items)), replace=False, n_samples=n,
    stratify=strata, random_state=seed)``: the group sizes by largest remainders (ties broken by
    ``seed``), then a draw within each group, the same RandomState calls in the same order.
    """
    if n >= len(items):
        return list(items)
    # by hand, not sklearn.utils.resample: importing scikit-learn would dominate a no-op run's startup
    rng = np.random.RandomState(seed)
    strata = np.array([f"{it.split}|{it.label}" for it in items])
    _, group = np.unique(strata, return_inverse=True)
    counts = np.bincount(group)
    members = np.split(np.argsort(group, kind="mergesort"), np.cumsum(counts)[:-1])
    sizes = _largest_remainders(counts, n, rng)
    picked = [rng.choice(members[g], sizes[g], replace=False) for g in range(len(counts))]
    # resample's final permutation is left out: it draws after every row is chosen, and the rows are sorted
    return [items[i] for i in np.sort(np.concatenate(picked))]


def _largest_remainders(counts: np.ndarray, n: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of each group's ``counts`` a sample of ``n`` takes: scikit-learn's ``_approximate_mode``."""
    continuous = counts / counts.sum() * n
    floored = np.floor(continuous)
    need = int(n - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.unique(remainder)[::-1]:
            (tied,) = np.where(remainder == value)
            add = min(len(tied), need)
            floored[rng.choice(tied, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


class SubsetSource(Source):
    """Items of ``parent`` whose label is in ``classes``, then a stratified sample of ``limit`` or the ``first``."""

    def __init__(self, parent: Source, *, classes=None, limit=None, first=None, limit_seed: int = LIMIT_SEED):
        for name, value in (("limit", limit), ("first", first)):
            if value is not None:
                check_integer(value, name, error=SourceError)
        if limit is not None and first is not None:
            raise SourceError("pass limit (a stratified sample) or first (the first N items), not both")
        check_integer(limit_seed, "limit_seed", minimum=0, error=SourceError)
        keep = parent.items
        if classes is not None:
            wanted = {int(c) for c in classes}
            unknown = wanted - set(range(len(parent.class_names)))
            if unknown and parent.class_names:
                raise SourceError(f"class filter names unknown label(s) {sorted(unknown)}; "
                                  f"the source has labels 0..{len(parent.class_names) - 1}")
            keep = [it for it in keep if it.label in wanted]
        before = keep
        if limit is not None:
            keep = stratified_sample(keep, int(limit), int(limit_seed))
        elif first is not None:
            keep = keep[:first]
        if not keep:
            raise SourceError("the class filter and limit leave no images")
        self.parent = parent
        self.classes = sorted({int(c) for c in classes}) if classes is not None else None
        self.limit = None if limit is None else int(limit)
        self.first = None if first is None else int(first)
        self.limit_seed = int(limit_seed)
        self.kind = parent.kind
        self.items = [Item(i, it.id, it.label, it.split) for i, it in enumerate(keep)]
        self._parent_items = keep
        self.class_names = parent.class_names
        self.native_size = parent.native_size
        self.dropped_classes = sorted({it.label for it in before if it.label >= 0} - {it.label for it in keep})
        if self.dropped_classes:
            names = [self.class_names[c] if c < len(self.class_names) else str(c) for c in self.dropped_classes]
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            how = f"first={self.first}" if self.first is not None else f"limit={self.limit}"
            warnings.warn(f"{how} keeps {len(keep)} images and no image of {len(names)} class(es): {shown}; "
                          "raise it to keep every class", SubsetWarning, stacklevel=3)
        self.address = None if parent.address is None else {
            "subset": parent.address, "classes": self.classes, "limit": self.limit, "first": self.first,
            "limit_seed": self.limit_seed}

    def describe(self) -> str:
        extra = []
        if self.classes is not None:
            extra.append("classes=" + ",".join(map(str, self.classes)))
        if self.limit is not None:
            extra.append(f"limit={self.limit}")
            if self.limit_seed != LIMIT_SEED:
                extra.append(f"limit_seed={self.limit_seed}")
        if self.first is not None:
            extra.append(f"first={self.first}")
        return f"{self.parent.describe()}[{';'.join(extra)}]"

    def fingerprint(self) -> str:
        # the ids say which items: a sample and a prefix that keep the same items have the same features
        return _hash_lines([self.parent.fingerprint(), self.describe(),
                            *(it.id for it in self.items)])

    def read(self, items, size, executor=None, **kwargs) -> Batch:
        return _read_mapped(self.parent, [self._parent_items[it.index] for it in items], items, size, executor,
                            **kwargs)

    def digests(self, items, executor=None) -> list[str | None]:
        return self.parent.digests([self._parent_items[it.index] for it in items], executor)


def _read_mapped(parent: Source, parent_items: list[Item], items: list[Item], size, executor, **kwargs) -> Batch:
    """``parent``'s batch of ``parent_items``, told as the ``items`` they stand for."""
    batch = parent.read(parent_items, size, executor, **kwargs)
    back = {p.index: it for p, it in zip(parent_items, items)}
    return Batch(batch.images, [back[p.index] for p in batch.items], [(back[p.index], r) for p, r in batch.skipped],
                 batch.alpha, batch.digests)


class PickedSource(Source):
    """Some items of ``parent``, in its order: the new images a grow extracts (not reopened, not fingerprinted by path)."""

    def __init__(self, parent: Source, picked: Sequence[Item]):
        self.parent, self._parent_items = parent, list(picked)
        self.kind, self.class_names, self.native_size = parent.kind, parent.class_names, parent.native_size
        self.items = [Item(i, it.id, it.label, it.split) for i, it in enumerate(self._parent_items)]

    def describe(self) -> str:
        return f"{self.parent.describe()}[{len(self.items)} new]"

    def fingerprint(self) -> str:
        return _hash_lines([self.parent.fingerprint(), *(it.id for it in self.items)])

    def read(self, items, size, executor=None, **kwargs) -> Batch:
        return _read_mapped(self.parent, [self._parent_items[it.index] for it in items], items, size, executor,
                            **kwargs)

    def digests(self, items, executor=None) -> list[str | None]:
        return self.parent.digests([self._parent_items[it.index] for it in items], executor)
