"""Shard files: writing one atomically, inspecting one found on disk, and what is wrong with a recorded one."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import CacheError
from ..files import fsync_dir, pause_point, sha256_path, temporary_name
from .layout import (COMPRESSIONS, FORMAT_VERSION, STORAGE_DTYPES, STRING_DTYPE, decode_strings, encode_strings,
                     generation_dir, shard_name)

#: a row's content digest on disk: the raw sha256 of the image's bytes (docs/FORMAT.md)
DIGEST_DTYPE = np.dtype("S32")
from .proof import ShardSpec, open_shard


def _chunk_rows(n_rows: int, row_bytes: int) -> int:
    return max(1, min(n_rows, (1 << 20) // max(row_bytes, 1)))


@dataclass
class ShardData:
    """The rows of one shard, ready to write."""

    index: int
    item_range: tuple[int, int]
    features: dict[str, np.ndarray]
    labels: np.ndarray
    ids: list[str]
    splits: list[str] | None
    skipped: list[tuple[str, str]]  # (id, reason)
    alpha: int = 0  # rows whose image had a pixel not opaque
    #: each row's content digest (sha256 hex of the file's or the array's bytes): what grow matches images by
    digests: list[str] | None = None


def write_shard(directory: Path, shard: ShardData, *, key: str, dtype: str = "float16",
                compression: str | None = None, generation: int = 0) -> dict:
    """Write one shard atomically and return its manifest record."""
    if dtype not in STORAGE_DTYPES:
        raise CacheError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    if compression not in COMPRESSIONS:
        raise CacheError(f"compression must be none, lzf or gzip, got {compression!r}")
    if shard.digests is not None and len(shard.digests) != len(shard.ids):
        raise CacheError(f"shard {shard.index} has {len(shard.digests)} digests for {len(shard.ids)} ids")
    where = generation_dir(generation)
    shard_dir = Path(directory) / where
    shard_dir.mkdir(parents=True, exist_ok=True)
    final = shard_dir / shard_name(shard.index)
    tmp = temporary_name(final)
    n = len(shard.ids)
    # The HDF5 file is built in memory and written with plain file I/O: a full
    # disk is then an ordinary OSError (HDF5 itself can crash on ENOSPC), and
    # the sha256 comes from the same bytes that are written.
    data = _shard_image(shard, key=key, dtype=dtype, compression=compression)
    digest = hashlib.sha256(data).hexdigest()
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        size = len(data)
        pause_point("before-rename:shard")
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(shard_dir)
    return {
        "index": shard.index, "file": f"{where}/{final.name}", "items": list(shard.item_range),
        "n_rows": n, "sha256": digest, "bytes": size, "mtime_ns": os.stat(final).st_mtime_ns,
        "skipped": [{"id": i, "reason": r} for i, r in shard.skipped],
        **({"alpha": int(shard.alpha)} if shard.alpha is not None else {}),
        **({"digests": True} if shard.digests is not None else {}),
    }


def _shard_image(shard: ShardData, *, key: str, dtype: str, compression: str | None) -> bytes:
    """The bytes of the shard file of ``shard``, built in memory (docs/FORMAT.md)."""
    n = len(shard.ids)
    image = io.BytesIO()
    with h5py.File(image, "w", libver=("earliest", "v110")) as f:
        f.attrs["featcache_format"] = FORMAT_VERSION
        f.attrs["cache_key"] = key
        f.attrs["shard_index"] = shard.index
        f.attrs["item_start"], f.attrs["item_stop"] = shard.item_range
        f.attrs["n_rows"] = n
        if shard.alpha is not None:  # a shard adopted after a kill keeps its count; None: not known (grown rows)
            f.attrs["alpha"] = int(shard.alpha)
        grp = f.create_group("features")
        for name, arr in shard.features.items():
            if arr.shape[0] != n:
                raise CacheError(f"output {name} has {arr.shape[0]} rows for {n} ids")
            values = arr.astype(dtype, copy=False)
            if dtype == "float16" and not np.isfinite(values).all() and np.isfinite(arr).all():
                raise CacheError(f"features of output {name!r} overflow float16 (max |x| = "
                                 f"{float(np.abs(arr).max()):.4g}); extract with --dtype float32")
            kwargs = {}
            if n > 0 and compression:  # uncompressed outputs stay contiguous: readers copy their bytes directly
                row_bytes = int(np.prod(arr.shape[1:])) * np.dtype(dtype).itemsize
                kwargs["chunks"] = (_chunk_rows(n, row_bytes),) + tuple(arr.shape[1:])
                kwargs["compression"] = compression
            grp.create_dataset(name, data=values, **kwargs)
        f.create_dataset("labels", data=np.asarray(shard.labels, np.int64).reshape(n))
        f.create_dataset("ids", data=encode_strings(shard.ids), dtype=STRING_DTYPE, shape=(n,))
        if shard.digests is not None:
            f.create_dataset("digests", data=np.array([bytes.fromhex(d) for d in shard.digests], DIGEST_DTYPE)
                             .reshape(n))
        if shard.splits is not None:
            f.create_dataset("split", data=np.array(shard.splits, dtype=object), dtype=STRING_DTYPE, shape=(n,))
        sk = f.create_group("skipped")
        m = len(shard.skipped)
        sk.create_dataset("ids", data=encode_strings([s[0] for s in shard.skipped]), dtype=STRING_DTYPE, shape=(m,))
        sk.create_dataset("reasons", data=encode_strings([s[1] for s in shard.skipped]), dtype=STRING_DTYPE,
                          shape=(m,))
        f.flush()
    return image.getvalue()


def inspect_shard(path: Path, key: str, index: int, item_range: tuple[int, int], generation: int = 0) -> dict:
    """Validate a shard found on disk (structure, key, range) and return its record.

    Raises :class:`CacheError` naming what is wrong.
    """
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("cache_key") != key:
                raise CacheError(f"{path.name} belongs to another cache (key {str(f.attrs.get('cache_key'))[:12]})")
            if int(f.attrs.get("shard_index", -1)) != index or \
                    (int(f.attrs["item_start"]), int(f.attrs["item_stop"])) != tuple(item_range):
                raise CacheError(f"{path.name} covers other items than shard {index}")
            n = int(f.attrs["n_rows"])
            for name in ("labels", "ids"):
                if f[name].shape != (n,):
                    raise CacheError(f"{path.name}: /{name} has shape {f[name].shape}, expected ({n},)")
            for name, ds in f["features"].items():
                if ds.shape[0] != n:
                    raise CacheError(f"{path.name}: /features/{name} has {ds.shape[0]} rows, expected {n}")
                if n:
                    ds[n - 1]  # read the last chunk: truncation shows here
            skipped = [{"id": i, "reason": r} for i, r in zip(decode_strings(f["skipped/ids"][:]),
                                                               decode_strings(f["skipped/reasons"][:]))]
            alpha = {"alpha": int(f.attrs["alpha"])} if "alpha" in f.attrs else {}  # absent: written before counts
            if "digests" in f:
                if f["digests"].shape != (n,) or f["digests"].dtype != DIGEST_DTYPE:
                    raise CacheError(f"{path.name}: /digests is not {n} sha256 digests")
                alpha["digests"] = True
    except CacheError:
        raise
    except Exception as exc:
        raise CacheError(f"{path.name} is not a readable shard: {exc}") from None
    return {"index": index, "file": f"{generation_dir(generation)}/{path.name}", "items": list(item_range), "n_rows": n,
            "sha256": sha256_path(path), "bytes": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns,
            "skipped": skipped, **alpha}


def shard_problems(directory: Path, record: dict, key: str, *, deep: bool = True,
                   spec: "ShardSpec | None" = None) -> list[str]:
    """What is wrong with one recorded shard ([] when it is fine); ``deep``: sha256 and the structure proof."""
    path = Path(directory) / record["file"]
    if not path.is_file():
        return [f"{record['file']}: missing"]
    size = path.stat().st_size
    if size != record["bytes"]:
        return [f"{record['file']}: size {size} bytes, manifest says {record['bytes']}"]
    if not deep:
        return []
    if sha256_path(path) != record["sha256"]:
        return [f"{record['file']}: sha256 differs from the manifest (corrupted on disk)"]
    try:
        if spec is None:
            inspect_shard(path, key, record["index"], tuple(record["items"]))
        else:
            open_shard(path, record, spec, force=True).close()
    except CacheError as exc:
        return [f"{record['file']}: {exc}"]
    return []
