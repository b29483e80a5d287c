"""The cache store: HDF5 shards, the manifest, the one-file view, the lock, and reading.

This module owns the on-disk contract described in docs/FORMAT.md. Writes
are atomic (temporary name, flush, fsync, rename, fsync of the directory),
so a shard or manifest is either complete or absent; a shard's rename is its
completion marker, and ``manifest.json`` with ``"complete": true`` is written
last. It knows nothing about models or images.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .errors import CacheError, LockedError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VIEW = "features.h5"
SHARDS = "shards"
LOCK = ".lock"
STORAGE_DTYPES = ("float16", "float32")
COMPRESSIONS = (None, "lzf", "gzip")
_STR = h5py.string_dtype("utf-8")


# --------------------------------------------------------------------------- keys


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cache_key(params: dict, fingerprint: str) -> str:
    """sha256 over the canonical parameter set and the dataset fingerprint."""
    return hashlib.sha256(canonical_json({"params": params, "dataset": fingerprint}).encode()).hexdigest()


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def key_differences(old_manifest: dict, params: dict, fingerprint: str) -> dict:
    """{parameter: (old, new)} for everything that makes two cache keys differ."""
    old = _flatten(old_manifest.get("params", {}))
    new = _flatten(params)
    diffs = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    old_fp = old_manifest.get("dataset", {}).get("fingerprint")
    if old_fp != fingerprint:
        diffs["dataset"] = (f"fingerprint {str(old_fp)[:12]}", f"fingerprint {fingerprint[:12]} (images changed)")
    return diffs


# --------------------------------------------------------------------------- atomic files


def pause_point(name: str) -> None:
    """Fault-injection point for the kill tests: with ``FEATCACHE_PAUSE_AT=name`` the
    process announces itself (``FEATCACHE_PAUSE_FILE``) and waits here to be killed.

    Lets a test SIGKILL a run at an exact moment (a shard's temporary file written
    but not renamed, a manifest half way); a no-op otherwise.
    """
    if os.environ.get("FEATCACHE_PAUSE_AT") != name:
        return
    marker = os.environ.get("FEATCACHE_PAUSE_FILE")
    if marker:
        Path(marker).write_text(f"{name} {os.getpid()}\n")
    time.sleep(float(os.environ.get("FEATCACHE_PAUSE_SECONDS", "60")))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        pause_point(f"before-rename:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sha256_path(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise CacheError(f"{path} is not valid JSON ({exc}); run `featcache extract ... --overwrite` to rebuild") from None
    if not isinstance(manifest, dict) or "key" not in manifest:
        raise CacheError(f"{path} is not a featcache manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CacheError(f"{path} has format version {manifest['format_version']}; "
                         f"this featcache reads up to {FORMAT_VERSION}: upgrade featcache")
    return manifest


def write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_bytes(Path(directory) / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())


# --------------------------------------------------------------------------- lock


class DirectoryLock:
    """An exclusive ``flock`` on ``DIR/.lock``: one writer per cache directory.

    The kernel drops the lock when its process dies, SIGKILL included, so a
    lock file left by a killed run is stale by construction and is taken over.
    """

    def __init__(self, directory: Path, *, wait: float = 0.0):
        self.path = Path(directory) / LOCK
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
                    os.close(fd)
                    raise LockedError(f"another featcache process ({holder}) is writing {self.path.parent}; "
                                      "wait for it to finish (or pass --wait SECONDS)") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# --------------------------------------------------------------------------- shards


def shard_name(index: int) -> str:
    return f"{index:05d}.h5"


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


def write_shard(directory: Path, shard: ShardData, *, key: str, dtype: str = "float16",
                compression: str | None = None) -> dict:
    """Write one shard atomically and return its manifest record."""
    if dtype not in STORAGE_DTYPES:
        raise CacheError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    if compression not in COMPRESSIONS:
        raise CacheError(f"compression must be none, lzf or gzip, got {compression!r}")
    shard_dir = Path(directory) / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    final = shard_dir / shard_name(shard.index)
    tmp = shard_dir / f".{final.name}.tmp-{os.getpid()}"
    n = len(shard.ids)
    # The HDF5 file is built in memory and written with plain file I/O: a full
    # disk is then an ordinary OSError (HDF5 itself can crash on ENOSPC), and
    # the sha256 comes from the same bytes that are written.
    image = io.BytesIO()
    with h5py.File(image, "w", libver=("earliest", "v110")) as f:
        f.attrs["featcache_format"] = FORMAT_VERSION
        f.attrs["cache_key"] = key
        f.attrs["shard_index"] = shard.index
        f.attrs["item_start"], f.attrs["item_stop"] = shard.item_range
        f.attrs["n_rows"] = n
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
        f.create_dataset("ids", data=np.array(shard.ids, dtype=object), dtype=_STR, shape=(n,))
        if shard.splits is not None:
            f.create_dataset("split", data=np.array(shard.splits, dtype=object), dtype=_STR, shape=(n,))
        sk = f.create_group("skipped")
        m = len(shard.skipped)
        sk.create_dataset("ids", data=np.array([s[0] for s in shard.skipped], dtype=object), dtype=_STR, shape=(m,))
        sk.create_dataset("reasons", data=np.array([s[1] for s in shard.skipped], dtype=object), dtype=_STR,
                          shape=(m,))
        f.flush()
    data = image.getvalue()
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
        "index": shard.index, "file": f"{SHARDS}/{final.name}", "items": list(shard.item_range),
        "n_rows": n, "sha256": digest, "bytes": size,
        "skipped": [{"id": i, "reason": r} for i, r in shard.skipped],
    }


def inspect_shard(path: Path, key: str, index: int, item_range: tuple[int, int]) -> dict:
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
            skipped = [{"id": i.decode() if isinstance(i, bytes) else i, "reason": r.decode() if isinstance(r, bytes) else r}
                       for i, r in zip(f["skipped/ids"][:], f["skipped/reasons"][:])]
    except CacheError:
        raise
    except Exception as exc:
        raise CacheError(f"{path.name} is not a readable shard: {exc}") from None
    return {"index": index, "file": f"{SHARDS}/{path.name}", "items": list(item_range), "n_rows": n,
            "sha256": sha256_path(path), "bytes": path.stat().st_size, "skipped": skipped}


def shard_problems(directory: Path, record: dict, key: str, *, deep: bool = True) -> list[str]:
    """What is wrong with one recorded shard ([] when it is fine)."""
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
        inspect_shard(path, key, record["index"], tuple(record["items"]))
    except CacheError as exc:
        return [f"{record['file']}: {exc}"]
    return []


def write_view(directory: Path, manifest: dict) -> None:
    """Write features.h5: virtual datasets that stitch every shard, in row order."""
    directory = Path(directory)
    shards = sorted(manifest["shards"], key=lambda s: s["index"])
    total = sum(s["n_rows"] for s in shards)
    image = io.BytesIO()  # built in memory, written atomically like the manifest
    with h5py.File(image, "w", libver=("earliest", "v110")) as out:
        out.attrs["featcache_format"] = FORMAT_VERSION
        out.attrs["cache_key"] = manifest["key"]
        out.attrs["n_rows"] = total
        names = [f"features/{n}" for n in manifest["outputs"]] + ["labels", "ids"]
        if manifest["dataset"].get("has_splits"):
            names.append("split")
        for name in names:
            if name.startswith("features/"):
                info = manifest["outputs"][name.split("/", 1)[1]]
                shape, dtype = tuple(info["shape"]), info["dtype"]
            else:
                shape, dtype = (), (np.int64 if name == "labels" else _STR)
            layout = h5py.VirtualLayout(shape=(total,) + shape, dtype=dtype)
            row = 0
            for s in shards:
                n = s["n_rows"]
                if n:
                    layout[row:row + n] = h5py.VirtualSource(s["file"], name, shape=(n,) + shape)
                row += n
            out.create_virtual_dataset(name, layout)
    atomic_write_bytes(directory / VIEW, image.getvalue())


def clear_cache_files(directory: Path) -> None:
    """Remove featcache's own files from ``directory`` (never anything else)."""
    directory = Path(directory)
    for name in (MANIFEST, VIEW):
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / SHARDS, ignore_errors=True)


def remove_temporaries(directory: Path) -> int:
    """Delete temporary files left by killed writers; return how many."""
    count = 0
    for d in (Path(directory), Path(directory) / SHARDS):
        if d.is_dir():
            for p in d.iterdir():
                if p.name.startswith(".") and ".tmp-" in p.name:
                    p.unlink(missing_ok=True)
                    count += 1
    return count


# --------------------------------------------------------------------------- reading


def _decode_strings(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


@dataclass
class FeatureBatch:
    """A batch streamed from a cache: features, labels, ids and split names."""

    features: np.ndarray
    labels: np.ndarray
    ids: list[str]
    splits: list[str] | None


class Cache:
    """A feature cache directory opened for reading.

    Rows come in source order (skipped items left out). Only shards listed in
    the manifest are read, so a reader never sees a half-written shard.
    """

    def __init__(self, path: str | os.PathLike, *, allow_partial: bool = False, max_load_bytes: int | None = None):
        self.path = Path(path)
        self.max_load_bytes = max_load_bytes
        manifest = read_manifest(self.path)
        if manifest is None:
            raise CacheError(f"{self.path} is not a featcache cache (no {MANIFEST}); create one with `featcache extract`")
        if not manifest.get("complete") and not allow_partial:
            done = len(manifest.get("shards", []))
            raise CacheError(f"{self.path} is incomplete ({done} of {manifest.get('n_shards', '?')} shards); "
                             "re-run the same `featcache extract` command to finish it")
        self.manifest = manifest
        self._shards = sorted(manifest.get("shards", []), key=lambda s: s["index"])
        self._row_columns: dict | None = None

    # -- metadata
    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def params(self) -> dict:
        return self.manifest["params"]

    @property
    def outputs(self) -> list[str]:
        return list(self.manifest["outputs"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["dataset"].get("class_names", []))

    def class_name(self, label: int) -> str:
        """The name of ``label``, or the label itself as text when the source gave no name for it."""
        names = self.class_names
        return names[label] if 0 <= label < len(names) else str(label)

    @property
    def skipped(self) -> list[dict]:
        return [s for shard in self._shards for s in shard["skipped"]]

    def __len__(self) -> int:
        return sum(s["n_rows"] for s in self._shards)

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, rows={len(self)}, backbone={self.params.get('backbone')!r}, key={self.key[:12]})"

    def _output(self, output: str | None) -> str:
        if output is None:
            return self.outputs[0]
        if output not in self.manifest["outputs"]:
            raise CacheError(f"{self.path} has no output {output!r}; it has {', '.join(self.outputs)}")
        return output

    def _open(self, shard: dict):
        path = self.path / shard["file"]
        try:
            return h5py.File(path, "r")
        except FileNotFoundError:
            raise CacheError(f"shard {path} is missing; re-run the extraction to repair the cache") from None
        except OSError as exc:
            raise CacheError(f"shard {path} cannot be read ({exc}); run `featcache verify {self.path}`") from None

    # -- whole arrays
    def features(self, output: str | None = None) -> np.ndarray:
        """All rows of one output as one numpy array (in the storage dtype)."""
        name = self._output(output)
        info = self.manifest["outputs"][name]
        size = len(self) * int(np.prod(info["shape"])) * np.dtype(info["dtype"]).itemsize
        if self.max_load_bytes is not None and size > self.max_load_bytes:
            raise CacheError(f"loading {name} would take {size:,} bytes, over this cache's limit of "
                             f"{self.max_load_bytes:,}; stream it with iter_batches() (train --stream)")
        out = np.empty((len(self),) + tuple(info["shape"]), dtype=info["dtype"])
        row = 0
        for shard in self._shards:
            n = shard["n_rows"]
            if n:
                with self._open(shard) as f:
                    _read_into(f["features"][name], self.path / shard["file"], out[row:row + n])
            row += n
        return out

    def _columns(self) -> dict:
        """Labels, ids and splits of every row, read in one pass over the shards and kept."""
        if self._row_columns is None:
            has_splits = bool(self.manifest["dataset"].get("has_splits"))
            labels, ids, splits = [], [], []
            for shard in self._shards:
                with self._open(shard) as f:
                    labels.append(f["labels"][:])
                    ids.extend(_decode_strings(f["ids"][:]))
                    if has_splits:
                        splits.extend(_decode_strings(f["split"][:]))
            self._row_columns = {
                "labels": np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
                "ids": ids,
                "split": splits if has_splits else None,
            }
        return self._row_columns

    def labels(self) -> np.ndarray:
        return self._columns()["labels"].copy()

    def ids(self) -> list[str]:
        return list(self._columns()["ids"])

    def splits(self) -> list[str] | None:
        """Split name per row, or None when the source had no splits."""
        split = self._columns()["split"]
        return None if split is None else list(split)

    # -- streaming
    def iter_batches(self, batch_size: int = 1024, output: str | None = None) -> Iterator[FeatureBatch]:
        """Stream rows shard by shard in batches of ``batch_size`` (last one smaller).

        Memory stays at about one shard plus one batch, whatever the cache size.
        """
        if batch_size <= 0:
            raise CacheError(f"batch_size must be positive, got {batch_size}")
        name = self._output(output)
        has_splits = bool(self.manifest["dataset"].get("has_splits"))
        pending: list[FeatureBatch] = []
        pending_rows = 0
        for shard in self._shards:
            if not shard["n_rows"]:
                continue
            with self._open(shard) as f:
                part = FeatureBatch(f["features"][name][:], f["labels"][:].astype(np.int64),
                                    _decode_strings(f["ids"][:]),
                                    _decode_strings(f["split"][:]) if has_splits else None)
            pending.append(part)
            pending_rows += len(part.ids)
            while pending_rows >= batch_size:
                merged = _merge(pending)
                yield _slice(merged, 0, batch_size)
                rest = _slice(merged, batch_size, len(merged.ids))
                pending, pending_rows = ([rest], len(rest.ids)) if len(rest.ids) else ([], 0)
        if pending_rows:
            yield _merge(pending)

    # -- checks
    def verify(self, *, deep: bool = True) -> list[str]:
        """Every problem found (missing, truncated or altered shards, a broken view); [] if none."""
        problems = []
        for shard in self._shards:
            problems += shard_problems(self.path, shard, self.key, deep=deep)
        if self.complete:
            expected = self.manifest.get("n_shards")
            if expected is not None and len(self._shards) != expected:
                problems.append(f"manifest lists {len(self._shards)} shards of {expected}")
            if not (self.path / VIEW).is_file():
                problems.append(f"{VIEW}: missing")
        return problems

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def _read_into(ds, path: Path, dest: np.ndarray) -> None:
    """Copy dataset ``ds`` of the shard at ``path`` into ``dest``.

    A contiguous dataset (how uncompressed outputs are written) in native byte
    order is read as plain bytes at its file offset, straight into ``dest``,
    with no HDF5 copy in between: as fast as ``np.load``. Anything else
    (compressed, or chunked by an older featcache) goes through HDF5.
    """
    offset = ds.id.get_offset()
    if offset is None or not hasattr(os, "preadv") or ds.dtype != dest.dtype or not ds.dtype.isnative or ds.shape != dest.shape \
            or not dest.flags.c_contiguous:
        ds.read_direct(dest)
        return
    view = memoryview(dest.reshape(-1).view(np.uint8))
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise CacheError(f"shard {path} is shorter than its header says; run `featcache verify`")
            done += got
    finally:
        os.close(fd)


def _merge(parts: list[FeatureBatch]) -> FeatureBatch:
    if len(parts) == 1:
        return parts[0]
    return FeatureBatch(np.concatenate([p.features for p in parts]), np.concatenate([p.labels for p in parts]),
                        [i for p in parts for i in p.ids],
                        None if parts[0].splits is None else [s for p in parts for s in p.splits])


def _slice(b: FeatureBatch, a: int, z: int) -> FeatureBatch:
    return FeatureBatch(b.features[a:z], b.labels[a:z], b.ids[a:z], None if b.splits is None else b.splits[a:z])


def open_cache(path: str | os.PathLike, *, allow_partial: bool = False, max_load_bytes: int | None = None) -> Cache:
    """Open a cache directory written by :func:`featcache.extract`.

    ``max_load_bytes`` makes :meth:`Cache.features` refuse to load more than
    that into memory (a guard for caches larger than RAM).
    """
    return Cache(path, allow_partial=allow_partial, max_load_bytes=max_load_bytes)
