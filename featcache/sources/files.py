"""Sources backed by image files: class folders, CSV manifests and files named one by one."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image
from ..errors import DecodeError, SourceError
from .base import SPLIT_DIRS, Batch, Item, Source, _hash_lines, _is_int, check_class_names, dense_labels


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

    def _decode(self, item: Item, size, background, alpha: list):
        """(array, None, digest) or (None, reason, None): the bytes hashed are the bytes decoded."""
        path = self.paths[item.index]
        try:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise DecodeError(f"cannot read file: {exc.strerror or exc}") from None
            arr = decode_image(path, size, max_pixels=self.max_pixels, background=background, report=alpha, data=data)
            return arr, None, hashlib.sha256(data).hexdigest()
        except DecodeError as exc:
            return None, str(exc), None

    def read(self, items, size, executor=None, *, background=(255, 255, 255)) -> Batch:
        mapper = executor.map if executor is not None else map
        alpha: list = []  # list.append is atomic: the decode threads share it
        results = list(mapper(lambda it: self._decode(it, size, background, alpha), items))
        ok_items, arrays, skipped, digests = [], [], [], []
        for it, (arr, reason, digest) in zip(items, results):
            if arr is None:
                skipped.append((it, reason))
            else:
                ok_items.append(it)
                arrays.append(arr)
                digests.append(digest)
        images = np.stack(arrays) if arrays else np.zeros((0, size[0], size[1], 3), np.uint8)
        return Batch(images, ok_items, skipped, len(alpha), digests)

    def digests(self, items, executor=None) -> list[str | None]:
        mapper = executor.map if executor is not None else map
        return list(mapper(lambda it: _file_digest(self.paths[it.index]), items))


def _file_digest(path: Path) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None  # unreadable now: grow extracts it again, and the read records why it is skipped


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


def _read_rows(csv_path: Path) -> list[tuple[int, str, str, str | None]]:
    """The manifest's rows as (line number, path, label, split or None), checked for the header and NULs."""
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
    return rows


def _manifest_class_names(labels: list[str], class_names: Sequence[str] | None) -> tuple[list[str], bool]:
    """The class names of a manifest's labels, and whether its labels are class indices."""
    numeric = all(_is_int(v) for v in labels) and dense_labels({int(v) for v in labels})
    if class_names is not None:
        return list(class_names), numeric
    if numeric:
        top = max((int(v) for v in labels), default=-1)
        return [str(i) for i in range(top + 1)], numeric
    # names; numbers that are not small class indices (ids, years, 1000000000) sort as numbers
    return sorted(set(labels), key=lambda v: (0, int(v), v) if _is_int(v) else (1, 0, v)), numeric


def _row_label(where: str, lab: str, indices: bool, lookup: dict[str, int], names: list[str]) -> int:
    """One row's label as a class index; ``indices`` when the labels are the indices themselves."""
    if lab == "":
        return -1
    if indices:
        label = int(lab)
        if label < 0:
            raise SourceError(f"{where}: negative label {label}")
        return label
    if lab in lookup:
        return lookup[lab]
    raise SourceError(f"{where}: unknown label {lab!r}; known labels: {', '.join(names)}")


def _row_split(where: str, split: str | None) -> str | None:
    """One row's split name, normalised (valid, validation -> val)."""
    if split is None:
        return None
    if split.lower() not in SPLIT_DIRS:
        raise SourceError(f"{where}: unknown split {split!r} (use train, val or test)")
    return SPLIT_DIRS[split.lower()]


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
        rows = _read_rows(csv_path)
        root = csv_path.parent.resolve()
        names, numeric = _manifest_class_names([r[2] for r in rows if r[2] != ""], class_names)
        items, paths = self._items(csv_path, root, rows, names, numeric and class_names is None, allow_outside)
        check_class_names(names, str(csv_path))
        super().__init__(root, paths, items, names, max_pixels)
        self.csv_path = csv_path
        self.address = {"csv": str(csv_path.resolve()), "allow_outside": allow_outside,
                     "class_names": list(class_names) if class_names is not None else None}

    @staticmethod
    def _items(csv_path: Path, root: Path, rows, names: list[str], indices: bool,
               allow_outside: bool) -> tuple[list[Item], list[Path]]:
        """The manifest's items and their resolved paths, each row checked where it is, in order."""
        lookup = {n: i for i, n in enumerate(names)}
        items, paths, seen = [], [], {}
        for i, (lineno, rel, lab, split) in enumerate(rows):
            where = f"{csv_path}, line {lineno}"
            path = (root / rel).resolve() if not os.path.isabs(rel) else Path(rel).resolve()
            if not allow_outside and not path.is_relative_to(root):
                raise SourceError(f"{where}: path {rel!r} points outside {root}; "
                                  "pass allow_outside=True (--allow-outside) if that is intended")
            label = _row_label(where, lab, indices, lookup, names)
            split = _row_split(where, split)
            item_id = Path(rel).as_posix()
            for key in (item_id, same_file_key(path)):  # one image twice, by .., a symlink or a case change
                if key in seen:
                    first, first_rel = seen[key]
                    raise SourceError(f"{where}: duplicate path {rel!r} is the same image as "
                                      f"{first_rel!r} on line {first}")
                seen[key] = (lineno, rel)
            items.append(Item(i, item_id, label, split))
            paths.append(path)
        return items, paths

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
