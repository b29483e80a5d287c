"""The one door to a shard's bytes: proving a shard file plain (no links, external storage or virtual datasets)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import CacheError


#: HDF5 filters a shard may use: deflate (gzip), shuffle, fletcher32, lzf
_FILTERS = {1, 2, 3, 32000}
#: shards proven plain in this process: (file identity, record, spec), so a shard is walked once, not per read
_PROVEN: set[tuple] = set()


@dataclass(frozen=True)
class ShardSpec:
    """What every shard of one cache must hold, from its manifest: key, outputs, splits, class count."""

    key: str
    outputs: tuple  # ((name, shape, dtype), ...)
    has_splits: bool
    n_classes: int

    @classmethod
    def of(cls, manifest: dict, key: str | None = None) -> "ShardSpec":
        outputs = tuple((n, tuple(v["shape"]), v["dtype"]) for n, v in manifest["outputs"].items())
        return cls(key or manifest["key"], outputs, bool(manifest["dataset"].get("has_splits")),
                   len(manifest["dataset"].get("class_names") or []))


def check_members(group, allowed: set, required: set) -> None:
    """``group`` holds hard links only, named within ``allowed`` and including ``required``."""
    names = set(group)
    if names - allowed or required - names:
        raise CacheError(f"{group.name} holds {sorted(names)}, a featcache shard holds {sorted(required)}")
    for name in names:
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise CacheError(f"{group.name.rstrip('/')}/{name} is a {type(link).__name__}; featcache writes none")


def _storage_problem(ds) -> str | None:
    """Why ``ds``'s bytes may not be this file's own, or None."""
    plist = ds.id.get_create_plist()
    if plist.get_external_count():
        return "uses external storage (its bytes are another file's)"
    if plist.get_layout() not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
        return "is a virtual dataset (its rows are other files')"
    if any(plist.get_filter(i)[0] not in _FILTERS for i in range(plist.get_nfilters())):
        return "uses an HDF5 filter featcache never writes"
    return None


def _check_dataset(ds, shape: tuple, dtype) -> None:
    """``ds`` is a dataset of this file's own bytes, of ``shape`` and ``dtype`` (``str``: UTF-8 text)."""
    if not isinstance(ds, h5py.Dataset):
        raise CacheError(f"{ds.name} is not a dataset")
    problem = _storage_problem(ds)
    if problem:
        raise CacheError(f"{ds.name} {problem}")
    if ds.shape != shape:
        raise CacheError(f"{ds.name} has shape {ds.shape}, the manifest says {shape}")
    if (h5py.check_string_dtype(ds.dtype) is None) if dtype is str else ds.dtype != dtype:
        raise CacheError(f"{ds.name} has dtype {ds.dtype}, the manifest says {getattr(dtype, '__name__', dtype)}")


def _prove_structure(f: h5py.File, record: dict, spec: ShardSpec) -> None:
    """Raise :class:`CacheError` unless ``f`` is a plain featcache shard of ``record`` (see docs/FORMAT.md)."""
    n, index = record["n_rows"], record["index"]
    if f.attrs.get("cache_key") != spec.key:
        raise CacheError(f"it belongs to another cache (key {str(f.attrs.get('cache_key'))[:12]})")
    if (int(f.attrs.get("shard_index", -1)), int(f.attrs.get("n_rows", -1))) != (index, n) or \
            [int(f.attrs.get("item_start", -1)), int(f.attrs.get("item_stop", -1))] != record["items"]:
        raise CacheError(f"its attributes describe other rows than the manifest's shard {index}")
    check_members(f, {"features", "labels", "ids", "split", "skipped", "digests"},
                   {"features", "labels", "ids", "skipped"} | ({"split"} if spec.has_splits else set())
                   | ({"digests"} if record.get("digests") else set()))
    names = {name for name, _, _ in spec.outputs}
    for group in (f["features"], f["skipped"]):
        if not isinstance(group, h5py.Group):
            raise CacheError(f"{group.name} is not a group")
    check_members(f["features"], names, names)
    check_members(f["skipped"], {"ids", "reasons"}, {"ids", "reasons"})
    for name, shape, dtype in spec.outputs:
        _check_dataset(f["features"][name], (n,) + shape, np.dtype(dtype))
    _check_dataset(f["labels"], (n,), np.dtype(np.int64))
    if "digests" in f:
        _check_dataset(f["digests"], (n,), np.dtype("S32"))
    for name in ("ids", "split"):
        if name in f:
            _check_dataset(f[name], (n,), str)
    m = f["skipped/ids"].shape
    _check_dataset(f["skipped/ids"], m if len(m) == 1 else (0,), str)
    _check_dataset(f["skipped/reasons"], m, str)
    labels = f["labels"][:]
    bad = labels[(labels < -1) | (labels >= spec.n_classes)]
    if len(bad):
        raise CacheError(f"label {int(bad[0])} is outside 0..{spec.n_classes - 1} (its {spec.n_classes} classes; "
                         "-1: unlabelled)")


def open_shard(path: Path, record: dict, spec: ShardSpec, *, force: bool = False) -> h5py.File:
    """The one door to a shard's bytes: the open file, once proven a plain featcache shard of ``record``.

    Cheap on every open (its size against the manifest); the structure proof
    (no external storage, virtual dataset or link; the declared datasets,
    shapes, dtypes, rows, key and label range) runs once per process for each
    file identity, or every time with ``force`` (verify).
    """
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise CacheError(f"shard {path} is missing; re-run the extraction to repair the cache") from None
    if not stat.S_ISREG(st.st_mode):
        raise CacheError(f"shard {path} is a link or not a file; featcache writes neither: run `featcache verify`")
    if st.st_size != record["bytes"]:
        raise CacheError(f"shard {path} has {st.st_size:,} bytes, the manifest says {record['bytes']:,} "
                         "(damaged, or being repaired): run `featcache verify`")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CacheError(f"shard {path} cannot be read ({exc}); run `featcache verify`") from None
    try:
        now = os.fstat(f.id.get_vfd_handle())  # the file HDF5 opened, whatever the name points at since
        identity = (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns)
        if identity[:3] != (st.st_dev, st.st_ino, st.st_size):
            raise CacheError(f"shard {path} changed while it was opened; try again")
        proof = (identity, record["index"], record["n_rows"], tuple(record["items"]), spec)
        if force or proof not in _PROVEN:
            try:
                _prove_structure(f, record, spec)
            except CacheError as exc:
                raise CacheError(f"shard {path} is not a plain shard of this cache: {exc}; nothing was read "
                                 "(run `featcache extract ... --repair` or `featcache verify`)") from None
            except Exception as exc:  # noqa: BLE001 - whatever HDF5 makes of a forged file
                raise CacheError(f"shard {path} is not a readable shard ({exc}); run `featcache verify`") from None
            _PROVEN.add(proof)
    except BaseException:
        f.close()
        raise
    return f
