"""Cached features out to other tools: one self-contained ``.npz``, ``.parquet`` or ``.h5`` file.

Stage two, beside the heads. An export holds one stored output's features
(their storage dtype and shape, bit for bit), the ids, the labels, the class
names and the split of every row (the split ``train`` uses; "" for unlabelled
rows), with a ``featcache_export`` record (format, cache key, output, shape,
class and split names) that proves the file is featcache's: an existing
``out`` is replaced only when it carries that record, atomically, and
anything else is refused untouched. Rows are in source order.

Unlike the cache's ``features.h5`` (virtual datasets over the shards), an
export is one file that reads the same wherever it is copied.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .errors import FeatcacheError
from .files import atomic_save, remove_stale_temporaries
from .splits import SPLIT_NAMES, TEST_FRACTION, VAL_FRACTION
from .store import Cache, decode_strings, encode_strings, open_cache

FORMAT_VERSION = 1
MARK = "featcache_export"
SUFFIXES = {".npz": "npz", ".parquet": "parquet", ".h5": "h5", ".hdf5": "h5"}


def _format(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise FeatcacheError(f"cannot tell the export format of {path.name}: name it .npz, .parquet or .h5")
    return fmt


def _read_mark(path: Path) -> dict | None:
    """The ``featcache_export`` record of a file, or None when it has none (or is no such file at all)."""
    try:
        fmt = _format(path)
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as data:
                text = str(data[MARK][()]) if MARK in data.files else None
        elif fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                text = f.attrs.get(MARK)
                text = text.decode() if isinstance(text, bytes) else text
        else:
            import pyarrow.parquet as pq

            meta = pq.read_schema(path).metadata or {}
            text = meta.get(MARK.encode(), b"").decode() or None
        mark = json.loads(text) if text else None
    except Exception:  # unreadable, another program's file, not the format its name says: not ours
        return None
    return mark if isinstance(mark, dict) and mark.get("format") == FORMAT_VERSION else None


def is_our_export(path) -> bool:
    """Whether ``path`` is a feature export featcache wrote (so it may be replaced)."""
    path = Path(path)
    return path.is_file() and not path.is_symlink() and _read_mark(path) is not None


def check_export_target(out) -> Path:
    """``out`` as a Path, or a one-line error when it is not new and not an earlier featcache export."""
    out = Path(out)
    _format(out)
    if out.is_symlink() or (os.path.lexists(out) and not is_our_export(out)):
        raise FeatcacheError(f"{out} exists and is not a featcache feature export; choose a new file name "
                             "(featcache replaces only files it wrote)")
    if not out.parent.is_dir():
        raise FeatcacheError(f"the folder of {out} does not exist")
    return out


def export_features(cache, out, *, output: str | None = None, val_fraction: float = VAL_FRACTION,
                    test_fraction: float = TEST_FRACTION) -> Path:
    """Write one output of a cache, with ids, labels, class names and splits, to a self-contained file.

    The format follows ``out``'s suffix: ``.npz`` (numpy), ``.parquet`` (pyarrow;
    ``pip install 'featcache[parquet]'``) or ``.h5``/``.hdf5`` (h5py). Features
    keep their storage dtype and shape, bit for bit; rows are in source order.

    * ``.npz``: arrays ``features``, ``labels``, ``ids``, ``split``,
      ``class_names`` and ``featcache_export`` (the JSON record).
    * ``.h5``: datasets ``features``, ``labels``, ``ids``, ``split``; attributes
      ``class_names``, ``split_names`` and ``featcache_export``.
    * ``.parquet``: columns ``id``, ``label``, ``class_name``, ``split`` and
      ``features`` (a fixed-size list of the flattened row; the record's
      ``shape`` restores it); the record is in the schema metadata.

    Args:
        cache: a :class:`~featcache.store.Cache` or its directory.
        out: the file to write: new, or an earlier featcache export (replaced
            atomically); anything else is refused untouched.
        output: which stored output (default: the first).
        val_fraction, test_fraction: the hashed split's fractions (as in ``train``).

    Returns:
        The path written.

    Examples:
        >>> featcache.export_features("caches/fm", "fm.parquet")   # doctest: +SKIP
        >>> data = featcache.load_features("fm.parquet")           # doctest: +SKIP
        >>> X, y = data["features"], data["labels"]                # doctest: +SKIP
    """
    out = check_export_target(out)
    fmt = _format(out)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise FeatcacheError("a .parquet export needs pyarrow: pip install 'featcache[parquet]'") from None
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    output = cache.output_name(output)
    info = cache.output_info(output)
    X = cache.features(output)
    labels = cache.labels()
    ids = cache.ids()
    split = np.full(len(labels), "", dtype=object)
    for name, mask in cache.split_masks(val_fraction=val_fraction, test_fraction=test_fraction).items():
        split[mask] = name
    mark = {"format": FORMAT_VERSION, "cache_key": cache.key, "output": output, "shape": info["shape"],
            "dtype": info["dtype"], "rows": len(labels), "class_names": cache.class_names,
            "split_names": list(SPLIT_NAMES), "val_fraction": val_fraction, "test_fraction": test_fraction,
            "backbone": cache.params.get("backbone"), "source": cache.source}
    text = json.dumps(mark, ensure_ascii=False)
    writers = {"npz": _write_npz, "h5": _write_h5, "parquet": _write_parquet}
    remove_stale_temporaries(out)  # what killed exports to this name left behind
    try:
        atomic_save(out, lambda tmp: writers[fmt](tmp, X, labels, ids, split, cache.class_names, text), out.suffix)
    except OSError as exc:
        raise _write_error(out, exc, X.nbytes + labels.nbytes + sum(len(i) + len(s) for i, s in zip(ids, split)))
    return out


def _write_error(out: Path, exc: OSError, need: int) -> FeatcacheError:
    """A failed write as one line; a full disk names the bytes needed (writers do not all report ENOSPC as such)."""
    try:
        free = shutil.disk_usage(out.parent).free
    except OSError:
        free = None
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc) or free is not None and free < need:
        shown = "unknown" if free is None else f"{free:,}"
        return FeatcacheError(f"disk full while writing {out}: about {need:,} bytes are needed ({shown} free); "
                              "nothing was written: free space and run it again")
    return FeatcacheError(f"cannot write {out}: {exc.strerror or exc}")


def _write_npz(path, X, labels, ids, split, class_names, text):
    with open(path, "wb") as f:  # a file object: numpy never renames it
        np.savez(f, features=X, labels=labels, ids=np.array(ids, dtype=str), split=split.astype(str),
                 class_names=np.array(class_names, dtype=str), **{MARK: np.array(text)})


def _write_h5(path, X, labels, ids, split, class_names, text):
    import h5py

    strings = h5py.string_dtype("utf-8")
    image = io.BytesIO()  # built in memory, written with plain file I/O: HDF5 itself can crash on a full disk
    with h5py.File(image, "w") as f:
        f.create_dataset("features", data=X)
        f.create_dataset("labels", data=labels)
        f.create_dataset("ids", data=encode_strings(ids), dtype=strings)
        f.create_dataset("split", data=encode_strings(split.tolist()), dtype=strings)
        f.attrs.create("class_names", encode_strings(class_names), dtype=strings)
        f.attrs.create("split_names", encode_strings(SPLIT_NAMES), dtype=strings)
        f.attrs[MARK] = text
    with open(path, "wb") as f:
        f.write(image.getbuffer())


def _write_parquet(path, X, labels, ids, split, class_names, text):
    import pyarrow as pa
    import pyarrow.parquet as pq

    width = int(np.prod(X.shape[1:]))
    flat = pa.array(np.ascontiguousarray(X).reshape(-1))
    features = pa.FixedSizeListArray.from_arrays(flat, width)
    names = [class_names[i] if 0 <= i < len(class_names) else None for i in labels.tolist()]
    id_bytes = [i.encode("utf-8", "surrogateescape") for i in ids]
    try:
        id_column = pa.array([b.decode("utf-8") for b in id_bytes], pa.string())
    except UnicodeDecodeError:  # a file name that is not UTF-8 on disk: its exact bytes
        id_column = pa.array(id_bytes, pa.binary())
    table = pa.table({"id": id_column, "label": pa.array(labels, pa.int64()), "class_name": pa.array(names, pa.string()),
                      "split": pa.array(split.tolist(), pa.string()), "features": features},
                     metadata={MARK: text})
    pq.write_table(table, path)


def load_features(path) -> dict:
    """Read a feature export back: the inverse of :func:`export_features`, for any of its formats.

    Args:
        path: a ``.npz``, ``.parquet`` or ``.h5`` file featcache exported.

    Returns:
        ``{"features", "labels", "ids", "split", "class_names", "record"}``:
        numpy arrays for features (stored dtype and shape) and labels, lists
        of text for ids, split and class names, and the ``featcache_export``
        record.

    Examples:
        >>> data = featcache.load_features("fm.npz")   # doctest: +SKIP
        >>> train = data["split"] == "train"           # doctest: +SKIP
    """
    path = Path(path)
    fmt = _format(path)
    record = _read_mark(path) if path.is_file() else None
    if record is None:
        raise FeatcacheError(f"{path} is not a featcache feature export")
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as d:
            out = {"features": d["features"], "labels": d["labels"], "ids": d["ids"].tolist(),
                   "split": d["split"].tolist(), "class_names": d["class_names"].tolist()}
    elif fmt == "h5":
        import h5py

        with h5py.File(path, "r") as f:
            out = {"features": f["features"][()], "labels": f["labels"][()], "ids": decode_strings(f["ids"][()]),
                   "split": decode_strings(f["split"][()]), "class_names": decode_strings(f.attrs["class_names"])}
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        features = table.column("features").combine_chunks()
        flat = features.values.to_numpy(zero_copy_only=False)
        ids = table.column("id").to_pylist()
        out = {"features": flat.astype(record["dtype"], copy=False).reshape([len(table)] + list(record["shape"])),
               "labels": table.column("label").to_numpy(), "split": table.column("split").to_pylist(),
               "ids": [i.decode("utf-8", "surrogateescape") if isinstance(i, bytes) else i for i in ids],
               "class_names": list(record["class_names"])}
    out["record"] = record
    return out
