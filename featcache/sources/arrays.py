"""In-memory image arrays as a source."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from ..decode import composite_array
from ..errors import SourceError
from .base import SPLIT_DIRS, Batch, Item, Source, _hash_lines, check_class_names, dense_labels


def _label_indices(labels, class_names) -> tuple[np.ndarray, Sequence[str] | None]:
    """Array labels as class indices: integers stay, names (strings) become indices into ``class_names``
    (their sorted set when none is given); an empty name or None is unlabeled (-1)."""
    raw = np.asarray(labels, dtype=object if not isinstance(labels, np.ndarray) else None).reshape(-1)
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64), class_names
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise SourceError("array labels must be class indices or class names, got fractional numbers")
        return raw.astype(np.int64), class_names
    if raw.dtype.kind == "b":
        raise SourceError("array labels must be class indices or class names, got booleans")
    values = raw.tolist()
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, np.int64), class_names
    if not all(v is None or isinstance(v, (str, np.str_)) for v in values):
        kinds = sorted({type(v).__name__ for v in values})
        raise SourceError(f"array labels must be all class indices or all class names, got {', '.join(kinds)}")
    given = [str(v) for v in values if v not in (None, "")]
    names = list(class_names) if class_names is not None else sorted(set(given))
    lookup = {str(c): i for i, c in enumerate(names)}
    unknown = sorted(set(given) - set(lookup))
    if unknown:
        raise SourceError(f"label(s) {', '.join(map(repr, unknown[:5]))} not in class_names "
                          f"({', '.join(map(str, names[:10]))})")
    return np.array([-1 if v in (None, "") else lookup[str(v)] for v in values], np.int64), names


def _split_name(value) -> str | None:
    """One split name of an array source: train, val (valid, validation) or test; None or '' for none."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, np.str_)) or str(value).lower() not in SPLIT_DIRS:
        raise SourceError(f"unknown split {value!r} (use train, val or test)")
    return SPLIT_DIRS[str(value).lower()]


def _split_names(values) -> list[str | None]:
    """:func:`_split_name` of each value, each distinct name looked up once (a dataset repeats a few names)."""
    known: dict = {}
    names = []
    for value in values:
        try:
            names.append(known[value])
        except (KeyError, TypeError):
            name = _split_name(value)
            if isinstance(value, str) or value is None:
                known[value] = name
            names.append(name)
    return names



class ArraySource(Source):
    """In-memory uint8 images ``N x H x W [x C]`` (grey becomes RGB, RGBA is composited on the background)."""

    kind = "array"

    def __init__(self, images: np.ndarray, labels: Sequence[int] | None = None, *,
                 splits: Sequence[str] | None = None, ids: Sequence[str] | None = None,
                 class_names: Sequence[str] | None = None, name: str = "array"):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise SourceError(f"array images must be uint8, got {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise SourceError(f"array images must be N x H x W [x 1|3|4], got shape {images.shape}")
        n = images.shape[0]
        if n == 0:
            raise SourceError("array source is empty")
        if labels is not None:
            labels, class_names = _label_indices(labels, class_names)
        else:
            labels = np.full(n, -1, np.int64)
        if labels.shape[0] != n:
            raise SourceError(f"{n} images but {labels.shape[0]} labels")
        if splits is not None:
            splits = _split_names(splits)
            if len(splits) != n:
                raise SourceError(f"{n} images but {len(splits)} split names")
        if ids is not None and len(set(ids)) != n:
            raise SourceError("array ids must be unique, one per image")
        width = len(str(n - 1))
        self.images = images
        self.labels = labels
        self.name = name
        if ids is None:
            ids = [f"{name}/{i:0{width}d}" for i in range(n)]
        self.items = list(map(Item, range(n), ids, labels.tolist(), splits if splits is not None else [None] * n))
        present = set(np.unique(labels[labels >= 0]).tolist())
        if class_names is None and not dense_labels(present):
            raise SourceError(f"array labels must be class indices 0..K-1 (got {len(present)} distinct values up to "
                              f"{max(present)}); map them to 0..{len(present) - 1} or pass class_names")
        top = int(labels.max()) if n else -1
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(top + 1)]
        check_class_names(self.class_names, f"array source {name!r}")
        self.native_size = (images.shape[1], images.shape[2])

    def describe(self) -> str:
        return f"{self.kind}:{self.name}"

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.kind}|{self.images.shape}".encode())
        h.update(np.ascontiguousarray(self.images).data)
        h.update(np.ascontiguousarray(self.labels).data)
        h.update(_hash_lines(f"{it.id}|{it.split}" for it in self.items).encode())
        return h.hexdigest()

    def digests(self, items, executor=None) -> list[str | None]:
        return [_array_digest(self.images[it.index]) for it in items]

    def read(self, items, size=None, executor=None, *, background=(255, 255, 255)) -> Batch:
        idx = np.fromiter((it.index for it in items), np.int64, len(items))
        imgs = self.images[idx]
        digests = [_array_digest(im) for im in imgs]
        alpha = 0
        if imgs.shape[-1] == 1:
            imgs = np.repeat(imgs, 3, axis=-1)
        elif imgs.shape[-1] == 4:
            imgs, alpha = composite_array(imgs, background)
        return Batch(np.ascontiguousarray(imgs), list(items), [], alpha, digests)


def _array_digest(image: np.ndarray) -> str:
    """sha256 of one image's shape and bytes: the same image in another array source has the same digest."""
    h = hashlib.sha256(f"{image.shape}|".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()
