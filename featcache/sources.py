"""Image sources: folders, CSV manifests, in-memory arrays and named datasets.

A source lists :class:`Item` s in a deterministic order (each with a stable
id, an integer label, -1 when unlabeled, and a split name where the source
has one), reads batches of them as uint8 RGB arrays, and fingerprints itself
for the cache key. Sources know nothing about models or caches.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image
from .errors import DecodeError, FeatcacheWarning, SourceError, check_integer

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

    def read(self, items: Sequence[Item], size: tuple[int, int], executor: Executor | None = None) -> Batch:
        raise NotImplementedError

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
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


class FileSource(Source):
    """Items backed by image files on disk; decoded by Pillow in a thread pool."""

    kind = "files"

    def __init__(self, root: Path, paths: list[Path], items: list[Item], class_names: list[str],
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = root
        self.paths = paths  # parallel to items
        self.items = items
        self.class_names = class_names
        self.max_pixels = max_pixels

    def describe(self) -> str:
        return f"{self.kind}:{self.root}"

    def fingerprint(self) -> str:
        def lines():
            yield f"{self.kind}|{len(self.items)}"
            for it, p in zip(self.items, self.paths):
                try:
                    st = os.stat(p)
                    sig = f"{st.st_size}|{st.st_mtime_ns}"
                except OSError as exc:
                    sig = f"unreadable:{exc.errno}"
                yield f"{it.id}|{it.label}|{it.split}|{sig}"
        return _hash_lines(lines())

    def _decode(self, item: Item, size):
        try:
            return decode_image(self.paths[item.index], size, max_pixels=self.max_pixels), None
        except DecodeError as exc:
            return None, str(exc)

    def read(self, items, size, executor=None) -> Batch:
        mapper = executor.map if executor is not None else map
        results = list(mapper(lambda it: self._decode(it, size), items))
        ok_items, arrays, skipped = [], [], []
        for it, (arr, reason) in zip(items, results):
            if arr is None:
                skipped.append((it, reason))
            else:
                ok_items.append(it)
                arrays.append(arr)
        images = np.stack(arrays) if arrays else np.zeros((0, size[0], size[1], 3), np.uint8)
        return Batch(images, ok_items, skipped)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(directory: Path) -> list[Path]:
    """Image files under ``directory``, sorted, not following directory symlinks."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


class FolderSource(FileSource):
    """A folder of class sub-folders, optionally under train/ val/ test/ folders.

    ``root/<class>/<image>`` or ``root/<split>/<class>/<image>``; labels are
    the index of the class folder name in the sorted union of class names.
    Images directly in ``root`` (no class folder) are unlabeled (-1).
    """

    kind = "folder"

    def __init__(self, root: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS):
        root = Path(root)
        if not root.is_dir():
            raise SourceError(f"image folder {root} does not exist or is not a directory")
        subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        split_mode = bool(subdirs) and all(d.lower() in SPLIT_DIRS for d in subdirs)
        groups: list[tuple[str | None, Path]] = (
            [(SPLIT_DIRS[d.lower()], root / d) for d in subdirs] if split_mode else [(None, root)]
        )
        entries = []  # (split, class or None, path)
        for split, base in groups:
            for path in _walk_images(base):
                rel = path.relative_to(base).parts
                cls = rel[0] if len(rel) > 1 else None
                entries.append((split, cls, path))
        if not entries:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}")
        class_names = sorted({c for _, c, _ in entries if c is not None})
        index = {c: i for i, c in enumerate(class_names)}
        items, paths = [], []
        for i, (split, cls, path) in enumerate(entries):
            items.append(Item(i, path.relative_to(root).as_posix(), index[cls] if cls else -1, split))
            paths.append(path)
        super().__init__(root, paths, items, class_names, max_pixels)
        self.address = {"folder": str(root.resolve())}


class CsvSource(FileSource):
    """A CSV manifest with columns ``path,label[,split]``; paths relative to the CSV.

    Labels are integers, or class names mapped to integers in sorted order;
    an empty label means unlabeled (-1). Paths that leave the CSV's folder are
    refused unless ``allow_outside=True``.
    """

    kind = "csv"

    def __init__(self, csv_path: str | os.PathLike, *, allow_outside: bool = False,
                 class_names: Sequence[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        csv_path = Path(csv_path)
        try:
            raw = csv_path.read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read CSV manifest {csv_path}: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SourceError(f"{csv_path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
        reader = csv.DictReader(io.StringIO(text))
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        missing = [c for c in ("path", "label") if c not in fields]
        if missing:
            raise SourceError(f"{csv_path}: missing column(s) {', '.join(missing)}; "
                              f"the header must be path,label[,split] (found: {', '.join(fields) or 'nothing'})")
        reader.fieldnames = fields
        root = csv_path.parent.resolve()
        rows = []
        for lineno, row in enumerate(reader, start=2):
            rel = (row.get("path") or "").strip()
            if not rel:
                raise SourceError(f"{csv_path}, line {lineno}: empty path")
            lab = (row.get("label") or "").strip()
            for what, value in (("path", rel), ("label", lab)):
                if "\0" in value:  # HDF5 strings end at NUL: it would fail the cache's write, after the work
                    raise SourceError(f"{csv_path}, line {lineno}: the {what} {value!r} contains a NUL character")
            rows.append((lineno, rel, lab, (row.get("split") or "").strip() or None))
        if not rows:
            raise SourceError(f"{csv_path} lists no images")
        labels = [r[2] for r in rows if r[2] != ""]
        numeric = all(_is_int(v) for v in labels) and dense_labels({int(v) for v in labels})
        if class_names is not None:
            names = list(class_names)
        elif numeric:
            top = max((int(v) for v in labels), default=-1)
            names = [str(i) for i in range(top + 1)]
        else:  # names; numbers that are not small class indices (ids, years, 1000000000) sort as numbers
            names = sorted(set(labels), key=lambda v: (0, int(v), v) if _is_int(v) else (1, 0, v))
        lookup = {n: i for i, n in enumerate(names)}
        items, paths, seen = [], [], {}
        for i, (lineno, rel, lab, split) in enumerate(rows):
            path = (root / rel).resolve() if not os.path.isabs(rel) else Path(rel).resolve()
            if not allow_outside and not path.is_relative_to(root):
                raise SourceError(f"{csv_path}, line {lineno}: path {rel!r} points outside {root}; "
                                  "pass allow_outside=True (--allow-outside) if that is intended")
            if lab == "":
                label = -1
            elif numeric and class_names is None:
                label = int(lab)
                if label < 0:
                    raise SourceError(f"{csv_path}, line {lineno}: negative label {label}")
            elif lab in lookup:
                label = lookup[lab]
            else:
                raise SourceError(f"{csv_path}, line {lineno}: unknown label {lab!r}; "
                                  f"known labels: {', '.join(names)}")
            if split is not None:
                if split.lower() not in SPLIT_DIRS:
                    raise SourceError(f"{csv_path}, line {lineno}: unknown split {split!r} (use train, val or test)")
                split = SPLIT_DIRS[split.lower()]
            item_id = Path(rel).as_posix()
            for key in (item_id, same_file_key(path)):  # one image twice, by .., a symlink or a case change
                if key in seen:
                    first, first_rel = seen[key]
                    raise SourceError(f"{csv_path}, line {lineno}: duplicate path {rel!r} is the same image as "
                                      f"{first_rel!r} on line {first}")
                seen[key] = (lineno, rel)
            items.append(Item(i, item_id, label, split))
            paths.append(path)
        check_class_names(names, str(csv_path))
        super().__init__(root, paths, items, names, max_pixels)
        self.csv_path = csv_path
        self.address = {"csv": str(csv_path.resolve()), "allow_outside": allow_outside,
                     "class_names": list(class_names) if class_names is not None else None}

    def describe(self) -> str:
        return f"csv:{self.csv_path}"


def same_file_key(path: Path) -> tuple:
    """What two paths of one image share: the file's device and inode (symlinks, hard links, a case-insensitive
    filesystem's other spelling), else, for a file that is not there, its resolved and case-folded path."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.normcase(os.path.realpath(path)))
    return ("file", st.st_dev, st.st_ino)


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



class ArraySource(Source):
    """In-memory uint8 images ``N x H x W [x C]`` (grey becomes RGB) with labels."""

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
            splits = [_split_name(v) for v in splits]
            if len(splits) != n:
                raise SourceError(f"{n} images but {len(splits)} split names")
        if ids is not None and len(set(ids)) != n:
            raise SourceError("array ids must be unique, one per image")
        width = len(str(n - 1))
        self.images = images
        self.labels = labels
        self.name = name
        self.items = [
            Item(i, ids[i] if ids is not None else f"{name}/{i:0{width}d}", int(labels[i]),
                 splits[i] if splits is not None else None)
            for i in range(n)
        ]
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

    def read(self, items, size=None, executor=None) -> Batch:
        idx = np.fromiter((it.index for it in items), np.int64, len(items))
        imgs = self.images[idx]
        if imgs.shape[-1] == 1:
            imgs = np.repeat(imgs, 3, axis=-1)
        elif imgs.shape[-1] == 4:
            imgs = imgs[..., :3]
        return Batch(np.ascontiguousarray(imgs), list(items), [])


def stratified_sample(items: Sequence[Item], n: int, seed: int) -> list[Item]:
    """``n`` of ``items`` drawn without replacement, each (split, label) group in proportion, in source order.

    scikit-learn's ``resample(..., stratify=)`` allocates the group sizes
    (largest remainders, ties broken by ``seed``) and draws within each group.
    """
    if n >= len(items):
        return list(items)
    from sklearn.utils import resample

    strata = np.array([f"{it.split}|{it.label}" for it in items])
    picked = resample(np.arange(len(items)), replace=False, n_samples=n, stratify=strata, random_state=seed)
    return [items[i] for i in np.sort(picked)]


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

    def read(self, items, size, executor=None) -> Batch:
        parent_items = [self._parent_items[it.index] for it in items]
        batch = self.parent.read(parent_items, size, executor)
        back = {p.index: it for p, it in zip(parent_items, items)}
        return Batch(batch.images, [back[p.index] for p in batch.items],
                     [(back[p.index], r) for p, r in batch.skipped])


class FileListSource(FileSource):
    """Image files named one by one (unlabeled); ids are the paths as given."""

    kind = "files"

    def __init__(self, paths, max_pixels: int = DEFAULT_MAX_PIXELS):
        paths = [Path(p) for p in paths]
        if not paths:
            raise SourceError("no image files given")
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise SourceError(f"no such file(s): {', '.join(missing[:5])}")
        ids = [p.as_posix() for p in paths]
        if len(set(ids)) != len(ids):
            raise SourceError("the same image file is named twice")
        items = [Item(i, ids[i], -1, None) for i in range(len(paths))]
        super().__init__(Path("."), [p.resolve() for p in paths], items, [], max_pixels)

    def describe(self) -> str:
        return f"files:{len(self.items)}"


def load_dataset(name: str, data_dir=None) -> ArraySource:
    """A named dataset (``fashion_mnist:test``, ``cifar10``, ...) as an array source that can be reopened."""
    from . import datasets

    src = ArraySource(**datasets.load_arrays(name, data_dir=data_dir), name=name)
    src.address = {"dataset": name, "data_dir": None if data_dir is None else str(data_dir)}
    return src


def reopen(address: dict | None) -> Source:
    """Open a source again from the ``address`` a cache's manifest recorded (``Cache.source_address``)."""
    if not address:
        raise SourceError("this cache was made from in-memory arrays; its source cannot be reopened")
    if "folder" in address:
        return FolderSource(address["folder"])
    if "csv" in address:
        return CsvSource(address["csv"], allow_outside=address.get("allow_outside", False),
                         class_names=address.get("class_names"))
    if "dataset" in address:
        return load_dataset(address["dataset"], data_dir=address.get("data_dir"))
    if "subset" in address:
        parent = reopen(address["subset"])
        if "limit_seed" not in address:  # written before limit became a sample: it meant the first N
            return parent.subset(classes=address.get("classes"), first=address.get("limit"))
        with warnings.catch_warnings():  # said when the cache was made
            warnings.simplefilter("ignore", SubsetWarning)
            return parent.subset(classes=address.get("classes"), limit=address.get("limit"),
                                 first=address.get("first"), limit_seed=address["limit_seed"])
    raise SourceError(f"unknown source address {address!r}")


def open_source(source, *, allow_outside: bool = False, labels=None, class_names=None, splits=None,
                max_pixels: int = DEFAULT_MAX_PIXELS, data_dir: str | os.PathLike | None = None) -> Source:
    """Turn what a user passed into a :class:`Source`.

    ``source`` may be a Source, a folder path, a ``.csv`` path, a named dataset
    such as ``"fashion_mnist:test"``, or a uint8 array (with ``labels``,
    ``class_names`` and ``splits``, which only an array takes).
    """
    if isinstance(source, np.ndarray):
        return ArraySource(source, labels, class_names=class_names, splits=splits)
    given = [n for n, v in (("labels", labels), ("class_names", class_names), ("splits", splits)) if v is not None]
    if given:
        raise SourceError(f"{', '.join(given)} go with an array of images; a folder, CSV or dataset names its own")
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        path = Path(text)
        if path.is_dir():
            return FolderSource(path, max_pixels=max_pixels)
        if path.suffix.lower() == ".csv":
            if not path.exists():
                raise SourceError(f"CSV manifest {path} does not exist")
            return CsvSource(path, allow_outside=allow_outside, max_pixels=max_pixels)
        from . import datasets

        if datasets.is_dataset_name(text):
            return load_dataset(text, data_dir=data_dir)
        raise SourceError(
            f"{text!r} is not a folder, a .csv manifest or a dataset name "
            f"(known datasets: {', '.join(datasets.names())}, each with :train or :test)"
        )
    raise SourceError(f"cannot use {type(source).__name__} as an image source")
