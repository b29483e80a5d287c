"""The cache store: HDF5 shards, the manifest, the one-file view, the lock, and reading.

This module owns the on-disk contract described in docs/FORMAT.md. Writes
are atomic (temporary name, flush, fsync, rename, fsync of the directory),
so a shard or manifest is either complete or absent; a shard's rename is its
completion marker, and ``manifest.json`` with ``"complete": true`` is written
last. It knows nothing about models or images.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .errors import CacheError, KeyMismatchError, LockedError, ReadOnlyError, check_integer, is_integer
from .files import atomic_write_bytes, fsync_dir, pause_point, sha256_path, temporary_name
from .splits import SPLIT_NAMES, TEST_FRACTION, VAL_FRACTION, assign_splits

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VIEW = "features.h5"
SHARDS = "shards"
LOCK = ".lock"
STORAGE_DTYPES = ("float16", "float32")
COMPRESSIONS = (None, "lzf", "gzip")
_STR = h5py.string_dtype("utf-8")
#: what featcache's own temporary files are called: ``.manifest.json.tmp-PID``, ``.00012.h5.tmp-PID``, ...
_TEMPORARY = re.compile(r"^\.(manifest\.json|features\.h5|\d{5,}\.h5)\.tmp-\d+$")
_SHARD_FILE = re.compile(r"^\d{5,}\.h5$")  # five digits, more past shard 99,999 (augmented views)


def encode_strings(values) -> np.ndarray:
    """Text for an HDF5 string dataset, losslessly: names that are not valid UTF-8 on disk
    (Python's surrogate escapes) go in as their original bytes."""
    return np.array([v.encode("utf-8", "surrogateescape") for v in values], dtype=object)


def decode_strings(values) -> list[str]:
    """The inverse of :func:`encode_strings`: bytes that are not UTF-8 come back as surrogate escapes."""
    return [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v) for v in values]


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
    except RecursionError:
        raise CacheError(f"{path} is nested too deeply to be a featcache manifest; nothing was read or changed") from None
    except ValueError as exc:
        raise CacheError(f"{path} is not valid JSON ({exc}); run `featcache extract ... --overwrite` to rebuild") from None
    if not isinstance(manifest, dict) or "key" not in manifest:
        raise CacheError(f"{path} is not a featcache manifest")
    if not isinstance(manifest.get("format_version", 0), int) or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CacheError(f"{path} has format version {manifest['format_version']!r}; "
                         f"this featcache reads up to {FORMAT_VERSION}: upgrade featcache")
    problem = _manifest_problem(manifest)
    if problem:
        raise CacheError(f"{path} is damaged or not featcache's ({problem}); nothing was read or changed")
    return manifest


#: the parameters every manifest records (docs/FORMAT.md)
_PARAMS = ("backbone", "origin", "weights", "layer", "image_size", "preprocess", "pooling", "dtype",
           "compute_dtype", "shard_size")


#: the bounds a manifest's numbers must lie in: past them a cache is damaged, not big
MAX_ITEMS = 10**10
MAX_SHARD_SIZE = 10**7
MAX_VIEWS = 1000
MAX_SHARDS = 10**8
MAX_ROW_VALUES = 1 << 26  # values in one row of one output (a 64 x 64 x 16,384 feature map)
MAX_OUTPUT_DIMS = 4
#: the manifest's numeric fields: (table, field) -> (minimum, maximum, required); the one declared schema
_MANIFEST_INTS = {
    ("params", "shard_size"): (1, MAX_SHARD_SIZE, True),
    ("dataset", "n_items"): (0, MAX_ITEMS, False),
    (None, "views"): (0, MAX_VIEWS, False),
    (None, "views_target"): (0, MAX_VIEWS, False),
    (None, "n_shards"): (0, MAX_SHARDS, False),
    (None, "target_shards"): (0, MAX_SHARDS, False),
}
#: a shard record's numeric fields -> (minimum, maximum, required)
_RECORD_INTS = {"index": (0, MAX_SHARDS, True), "n_rows": (0, MAX_SHARD_SIZE, True), "bytes": (0, 1 << 50, True),
                "mtime_ns": (0, 1 << 80, False)}
_OUTPUT_NAME = re.compile(r"^[\w\-:][\w.\-:]*$")


def _int_problem(table: dict, field: str, bounds: tuple, where: str) -> str | None:
    lo, hi, required = bounds
    if field not in table:
        return f"{where}{field} is missing" if required else None
    value = table[field]
    if not (is_integer(value) and lo <= value <= hi):
        return f"{where}{field} {value!r} is not an integer in {lo}..{hi:,}"
    return None


def _outputs_problem(outputs: dict, complete: bool) -> str | None:
    if complete and not outputs:
        return "outputs is empty"
    for name, info in outputs.items():
        if not _OUTPUT_NAME.match(name) or not isinstance(info, dict):
            return f"output {name!r} is not a plain name with a shape and dtype"
        shape = info.get("shape")
        if not (isinstance(shape, list) and 1 <= len(shape) <= MAX_OUTPUT_DIMS
                and all(is_integer(d) and d > 0 for d in shape) and math.prod(shape) <= MAX_ROW_VALUES):
            return f"outputs.{name}.shape {shape!r} is not 1 to {MAX_OUTPUT_DIMS} positive integers " \
                   f"of at most {MAX_ROW_VALUES:,} values"
        if info.get("dtype") not in STORAGE_DTYPES:
            return f"outputs.{name}.dtype {info.get('dtype')!r} is not one of {', '.join(STORAGE_DTYPES)}"
    return None


def _record_problem(rec, shard_size: int, n_items: int, n_shards: int) -> str | None:
    """Why one shard record cannot be trusted, or None (``n_shards``: the most its layout allows)."""
    if not isinstance(rec, dict):
        return "a shard record is not an object"
    for field, bounds in _RECORD_INTS.items():
        problem = _int_problem(rec, field, bounds, "shard record ")
        if problem:
            return problem
    index, n = rec["index"], rec["n_rows"]
    if rec.get("file") != f"{SHARDS}/{shard_name(index)}":
        return f"shard {index} names the file {rec.get('file')!r}, not {SHARDS}/{shard_name(index)}"
    if index >= n_shards:
        return f"shard index {index} is past the {n_shards} shards its shard_size, n_items and views allow"
    items = rec.get("items")
    if items != list(shard_item_range(index, shard_size, n_items)) or not all(is_integer(v) for v in items):
        return f"shard {index}: items {items!r} is not [start, stop) of shard {index}"
    if n > items[1] - items[0]:
        return f"shard {index}: n_rows {n} is more than its {items[1] - items[0]} items"
    rows = rec.get("rows", [0, n])
    if not (isinstance(rows, list) and len(rows) == 2 and all(is_integer(v) and v >= 0 for v in rows)
            and rows[1] - rows[0] == n):
        return f"shard {index}: rows {rows!r} does not span its {n} rows"
    skipped = rec.get("skipped", [])
    if not isinstance(rec.get("sha256"), str) or not isinstance(skipped, list) or not all(
            isinstance(s, dict) and isinstance(s.get("id"), str) and isinstance(s.get("reason"), str)
            for s in skipped):
        return f"shard {index}: sha256 or skipped has the wrong type"
    return None


def _manifest_problem(manifest: dict) -> str | None:
    """Why a parsed manifest cannot be trusted, or None.

    A cache directory can come from anyone (a tarball, a shared disk), so every
    path it names must be the canonical ``shards/NNNNN.h5`` of its own index
    (nothing a manifest says can make featcache read or delete a file
    elsewhere), and every number must lie in the declared bounds above.
    """
    if not isinstance(manifest.get("key"), str):
        return "its key is not text"
    for name, kind in (("params", dict), ("dataset", dict), ("outputs", dict), ("shards", list)):
        if not isinstance(manifest.get(name), kind):
            return f"{name!r} is missing or not a {kind.__name__}"
    missing = [k for k in _PARAMS if k not in manifest["params"]]
    if missing or not isinstance(manifest["params"].get("weights"), dict):
        return f"params lacks {', '.join(missing) or 'a weights table'}"
    if not isinstance(manifest["dataset"].get("class_names", []), list):
        return "dataset.class_names is not a list"
    for (table, field), bounds in _MANIFEST_INTS.items():
        problem = _int_problem(manifest[table] if table else manifest, field, bounds, f"{table}." if table else "")
        if problem:
            return problem
    problem = _outputs_problem(manifest["outputs"], bool(manifest.get("complete")))
    if problem:
        return problem
    shard_size, n_items = manifest["params"]["shard_size"], manifest["dataset"].get("n_items", 0)
    views = max(manifest.get("views", 0), manifest.get("views_target", 0))
    n_shards = base_shards(shard_size, n_items) * (1 + views)
    seen = set()
    for rec in manifest["shards"]:
        problem = _record_problem(rec, shard_size, n_items, n_shards)
        if problem:
            return problem
        if rec["index"] in seen:
            return f"shard {rec['index']} is listed twice"
        seen.add(rec["index"])
    return None


def write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_bytes(Path(directory) / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())


# --------------------------------------------------------------------------- lock


_LOCK_TEXT = re.compile(rb"^(pid \d+ on [^\n]*\n?)?$")


def _is_lock_text(data: bytes) -> bool:
    """What featcache writes in ``.lock`` (or nothing: a lock file whose writer died before writing)."""
    return bool(_LOCK_TEXT.match(data))


def is_our_lock(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return _is_lock_text(path.read_bytes()[:256])
    except OSError:
        return False


class DirectoryLock:
    """An exclusive ``flock`` on ``DIR/.lock``: one writer per cache directory.

    The kernel drops the lock when its process dies, SIGKILL included, so a
    lock file left by a killed run is stale by construction and is taken over.
    """

    def __init__(self, directory: Path, *, wait: float = 0.0):
        self.path = Path(directory) / LOCK
        self.wait = wait
        self._fd: int | None = None
        #: whether this lock made the lock file (a run that claims nothing removes it again)
        self.created = False

    def _open(self) -> int:
        """The lock file, opened without following a link, and only if it is featcache's (or new)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.created = not os.path.lexists(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ReadOnlyError(f"{self.path.parent} is read-only ({exc.strerror})") from None
            if exc.errno == errno.ELOOP:
                raise CacheError(f"{self.path} is a symbolic link; featcache never writes through one: "
                                 "move it away") from None
            raise CacheError(f"cannot open the lock file {self.path}: {exc.strerror or exc}") from None
        if not self.created and not _is_lock_text(os.pread(fd, 256, 0)):
            os.close(fd)
            raise CacheError(f"{self.path} is not featcache's lock file, and featcache never overwrites what it "
                             "did not write: move it away or choose another --out")
        return fd

    def acquire(self) -> "DirectoryLock":
        fd = self._open()
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                # the holder removed the file after claiming nothing: lock the file that is there now
                os.close(fd)
                fd = self._open()
                continue
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

    def release(self, *, remove: bool = False) -> None:
        """Unlock; ``remove=True`` also deletes the lock file if this lock created it (nothing was claimed)."""
        if self._fd is not None:
            if remove and self.created:
                self.path.unlink(missing_ok=True)
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


def base_shards(shard_size: int, n_items: int) -> int:
    """Shards of the plain view: every source item once (docs/FORMAT.md)."""
    return max(1, -(-int(n_items) // int(shard_size)))


def shard_item_range(index: int, shard_size: int, n_items: int) -> tuple[int, int]:
    """``[start, stop)`` of the source items shard ``index`` covers (docs/FORMAT.md).

    Shards past the plain view's hold augmented views: shard ``index`` covers the
    items of plain shard ``index % base_shards`` (its train items only).
    """
    start = (index % base_shards(shard_size, n_items)) * shard_size
    return start, min(start + shard_size, n_items)


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
    tmp = temporary_name(final)
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
        f.create_dataset("ids", data=encode_strings(shard.ids), dtype=_STR, shape=(n,))
        if shard.splits is not None:
            f.create_dataset("split", data=np.array(shard.splits, dtype=object), dtype=_STR, shape=(n,))
        sk = f.create_group("skipped")
        m = len(shard.skipped)
        sk.create_dataset("ids", data=encode_strings([s[0] for s in shard.skipped]), dtype=_STR, shape=(m,))
        sk.create_dataset("reasons", data=encode_strings([s[1] for s in shard.skipped]), dtype=_STR,
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
        "n_rows": n, "sha256": digest, "bytes": size, "mtime_ns": os.stat(final).st_mtime_ns,
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
            skipped = [{"id": i, "reason": r} for i, r in zip(decode_strings(f["skipped/ids"][:]),
                                                               decode_strings(f["skipped/reasons"][:]))]
    except CacheError:
        raise
    except Exception as exc:
        raise CacheError(f"{path.name} is not a readable shard: {exc}") from None
    return {"index": index, "file": f"{SHARDS}/{path.name}", "items": list(item_range), "n_rows": n,
            "sha256": sha256_path(path), "bytes": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns,
            "skipped": skipped}


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


# --------------------------------------------------------------------------- trust: proving a shard plain


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


def _check_members(group, allowed: set, required: set) -> None:
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
    _check_members(f, {"features", "labels", "ids", "split", "skipped"},
                   {"features", "labels", "ids", "skipped"} | ({"split"} if spec.has_splits else set()))
    names = {name for name, _, _ in spec.outputs}
    for group in (f["features"], f["skipped"]):
        if not isinstance(group, h5py.Group):
            raise CacheError(f"{group.name} is not a group")
    _check_members(f["features"], names, names)
    _check_members(f["skipped"], {"ids", "reasons"}, {"ids", "reasons"})
    for name, shape, dtype in spec.outputs:
        _check_dataset(f["features"][name], (n,) + shape, np.dtype(dtype))
    _check_dataset(f["labels"], (n,), np.dtype(np.int64))
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


def view_problems(directory: Path, manifest: dict) -> list[str]:
    """What is wrong with ``features.h5`` ([] if fine): it may map only to this cache's own plain shards."""
    path = Path(directory) / VIEW
    if path.is_symlink() or not path.is_file():
        return [f"{VIEW}: missing"]
    n_base = base_shards(manifest["params"]["shard_size"], manifest["dataset"].get("n_items", 0))
    plain = {s["file"] for s in manifest["shards"] if s["index"] < n_base}
    outputs = set(manifest["outputs"])
    extra = {"split"} if manifest["dataset"].get("has_splits") else set()
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("cache_key") != manifest["key"]:
                raise CacheError("it belongs to another cache")
            _check_members(f, {"features", "labels", "ids"} | extra, {"features", "labels", "ids"} | extra)
            _check_members(f["features"], outputs, outputs)
            for name in [f"features/{n}" for n in outputs] + ["labels", "ids"] + sorted(extra):
                ds = f[name]
                if ds.id.get_create_plist().get_external_count() or not ds.is_virtual:
                    raise CacheError(f"/{name} is not a virtual dataset over the shards")
                for src in ds.virtual_sources():
                    if src.file_name not in plain or src.dset_name.lstrip("/") != name:
                        raise CacheError(f"/{name} maps to {src.file_name}:{src.dset_name}, not to this cache's shards")
    except CacheError as exc:
        return [f"{VIEW}: {exc}; re-run the same `featcache extract` to rebuild it"]
    except Exception as exc:  # noqa: BLE001 - whatever HDF5 makes of a forged file
        return [f"{VIEW}: not readable ({exc})"]
    return []


def bytes_per_image(outputs: dict) -> int:
    """What one row's stored features take, every output together, from ``{name: {"shape", "dtype"}}``."""
    return sum(int(np.prod(v["shape"])) * np.dtype(v["dtype"]).itemsize for v in outputs.values())


def write_view(directory: Path, manifest: dict) -> None:
    """Write features.h5: virtual datasets that stitch every shard of the plain view, in row order."""
    directory = Path(directory)
    n_base = base_shards(manifest["params"]["shard_size"], manifest["dataset"].get("n_items", 0))
    shards = sorted((s for s in manifest["shards"] if s["index"] < n_base), key=lambda s: s["index"])  # plain view
    total = sum(s["n_rows"] for s in shards)
    image = io.BytesIO()  # built in memory, written atomically like the manifest
    with h5py.File(image, "w", libver=("earliest", "v110")) as out:
        out.attrs["featcache_format"] = FORMAT_VERSION
        out.attrs["cache_key"] = manifest["key"]
        out.attrs["n_rows"] = total
        # what a reader of this one file needs to make sense of /labels and /split (label i is class_names[i])
        out.attrs.create("class_names", encode_strings(manifest["dataset"].get("class_names") or []), dtype=_STR)
        out.attrs.create("split_names", encode_strings(list(SPLIT_NAMES) if manifest["dataset"].get("has_splits")
                                                       else []), dtype=_STR)
        out.attrs["note"] = ("virtual datasets: the rows live in shards/NNNNN.h5 beside this file, so a copy of "
                             "features.h5 alone reads as zeros; copy the whole cache directory")
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


def is_temporary(path: Path) -> bool:
    """A temporary file featcache's atomic writers make (``.NAME.tmp-PID``), and nothing else."""
    return bool(_TEMPORARY.match(path.name)) and path.is_file() and not path.is_symlink()


def remove_temporaries(directory: Path) -> int:
    """Delete temporary files left by killed writers; return how many."""
    count = 0
    for d in (Path(directory), Path(directory) / SHARDS):
        if d.is_dir():
            for p in d.iterdir():
                if is_temporary(p):
                    p.unlink(missing_ok=True)
                    count += 1
    return count


def _featcache_hdf5_key(path: Path) -> str | None:
    """The cache key of an HDF5 file featcache wrote (a shard or the view), else None.

    Proof of ownership: a regular file (not a link) that HDF5 opens and that
    carries featcache's format and key attributes.
    """
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            key = f.attrs.get("cache_key")
            fmt = f.attrs.get("featcache_format")
    except Exception:  # noqa: BLE001 - anything HDF5 cannot read is not provably ours
        return None
    if fmt is None or not isinstance(key, str):
        return None
    return key


def shard_key(path: Path) -> str | None:
    """The cache key of a featcache shard file named ``NNNNN.h5``, or None when it is not provably ours."""
    if not _SHARD_FILE.match(path.name):
        return None
    return _featcache_hdf5_key(path)


def is_our_manifest(path: Path) -> bool:
    """Whether ``path`` is a manifest featcache wrote (JSON with our key and format fields), whatever else it says."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("key"), str) and "format_version" in data


def foreign_entries(directory: Path) -> list[str]:
    """What in ``directory`` featcache cannot prove it wrote (relative names, sorted).

    Ours: ``manifest.json`` (a featcache manifest), ``features.h5`` (a view
    with our attributes), ``.lock``, our temporaries, and under ``shards/``
    only shard files with our attributes. Everything else is the user's.
    """
    directory = Path(directory)
    foreign = []
    if not directory.is_dir():
        return foreign
    for p in sorted(directory.iterdir()):
        if p.name == LOCK and is_our_lock(p) or is_temporary(p):
            continue
        if p.name == MANIFEST and is_our_manifest(p) or p.name == VIEW and _featcache_hdf5_key(p) is not None:
            continue
        if p.name == SHARDS and p.is_dir() and not p.is_symlink():
            for q in sorted(p.iterdir()):
                if not is_temporary(q) and shard_key(q) is None:
                    foreign.append(f"{SHARDS}/{q.name}")
            continue
        foreign.append(p.name)
    return foreign


def clear_cache_files(directory: Path) -> list[str]:
    """Remove featcache's own files from ``directory``, never anything else.

    Returns what was left alone because featcache cannot prove it wrote it.
    A foreign file where the cache must write (``manifest.json``,
    ``features.h5``, a ``shards/NNNNN.h5``) is an error, raised before
    anything is removed.
    """
    directory = Path(directory)
    kept = foreign_entries(directory)
    blocking = [k for k in kept if k in (MANIFEST, VIEW, SHARDS) or _SHARD_FILE.match(k.rpartition("/")[2])]
    if blocking:
        raise CacheError(f"{directory} holds {', '.join(blocking)}, which featcache did not write; refusing to "
                         "replace it even with --overwrite: move it away or choose another --out")
    for name in (MANIFEST, VIEW):
        (directory / name).unlink(missing_ok=True)
    shard_dir = directory / SHARDS
    if shard_dir.is_dir():
        for p in shard_dir.iterdir():
            if f"{SHARDS}/{p.name}" not in kept:
                p.unlink(missing_ok=True)
        if not any(shard_dir.iterdir()):
            shard_dir.rmdir()
    return kept


# --------------------------------------------------------------------------- reading


@dataclass
class FeatureBatch:
    """A batch streamed from a cache: features, labels, ids and split names."""

    features: np.ndarray
    labels: np.ndarray
    ids: list[str]
    splits: list[str] | None


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a cache, as a reader needs it: where it is and which rows it holds."""

    index: int
    path: Path
    #: ``[start, stop)`` of its rows in the cache's row order
    rows: tuple[int, int]
    #: ``[start, stop)`` of the source items it covers (skipped items included)
    items: tuple[int, int]

    @property
    def n_rows(self) -> int:
        return self.rows[1] - self.rows[0]


class Cache:
    """A feature cache directory opened for reading.

    Rows come in source order (skipped items left out), not shuffled and not
    grouped by split: a folder source lists its images class by class. Only
    shards listed in the manifest are read, so a reader never sees a
    half-written shard. This class is the one reader of ``manifest.json``:
    everything else asks it (:attr:`shards`, :meth:`output_info`,
    :attr:`source_address`, ...), so the manifest's layout matters to this
    module and docs/FORMAT.md alone.

    Args:
        path: the cache directory (what ``featcache extract`` wrote).
        allow_partial: open an unfinished cache (its finished shards only).
        max_load_bytes: make :meth:`features` refuse to load more than this
            into memory; stream with :meth:`iter_batches` instead.

    Examples:
        >>> cache = featcache.open_cache("caches/fm")          # doctest: +SKIP
        >>> X, y = cache.features(), cache.labels()            # doctest: +SKIP
        >>> for shard in cache.shards:                         # doctest: +SKIP
        ...     batch = cache.read_shard(shard)
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
        records = sorted(manifest.get("shards", []), key=lambda s: s["index"])
        n_base = base_shards(manifest["params"]["shard_size"], manifest["dataset"].get("n_items", 0))
        if manifest.get("complete"):  # a cache gaining views stays complete with the views it had
            records = [r for r in records if r["index"] < n_base * (1 + int(manifest.get("views", 0)))]
        #: every shard record, views' too (what verify checks)
        self._all_shards = records
        #: the plain view's records: the cache's rows
        self._shards = [r for r in records if r["index"] < n_base]
        self._records = {r["index"]: r for r in records}
        #: what each shard must prove it holds before a byte of it is read (:func:`open_shard`)
        self._spec = ShardSpec.of(manifest)
        self._row_columns: dict | None = None
        self._view_columns: dict[int, dict] = {}
        self._view_shards: dict[int, list[ShardInfo]] = {}
        for rec in records:
            view = rec["index"] // n_base
            shards = self._view_shards.setdefault(view, [])
            row = shards[-1].rows[1] if shards else 0
            shards.append(ShardInfo(rec["index"], self.path / rec["file"], (row, row + rec["n_rows"]),
                                    tuple(rec["items"])))
        self.shards = self._view_shards.pop(0, [])
        self._n_base = n_base

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

    @property
    def has_splits(self) -> bool:
        """Whether the source named a split (train/val/test) for its items."""
        return bool(self.manifest["dataset"].get("has_splits"))

    @property
    def n_items(self) -> int:
        """Items in the source, skipped ones included."""
        return int(self.manifest["dataset"].get("n_items", len(self)))

    @property
    def n_shards(self) -> int:
        """Shards the finished cache has (more than :attr:`shards` while it is incomplete)."""
        return int(self.manifest.get("n_shards", len(self._all_shards)))

    @property
    def source(self) -> str:
        """A description of the source the features came from."""
        return str(self.manifest["dataset"].get("source", "?"))

    @property
    def source_address(self) -> dict | None:
        """How to open the source again (``featcache.sources.reopen``); None for in-memory arrays."""
        return self.manifest["dataset"].get("reopen")

    @property
    def backbone_ref(self) -> dict:
        """How to rebuild the backbone (name or file, weights, layer): what predict and export use."""
        return dict(self.manifest.get("backbone_ref") or {})

    @property
    def versions(self) -> dict:
        """Package versions that computed the features."""
        return dict(self.manifest.get("versions") or {})

    @property
    def timings(self) -> dict:
        """Seconds, images/s and where the time went, for the run that finished the cache."""
        return dict(self.manifest.get("timings") or {})

    @property
    def n_shards_done(self) -> int:
        """Shards written so far, views' included (:attr:`n_shards` when complete)."""
        return len(self._all_shards)

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

    def output_name(self, output: str | None = None) -> str:
        """``output`` checked against the stored outputs; the first one when None."""
        if output is None:
            return self.outputs[0]
        if output not in self.manifest["outputs"]:
            raise CacheError(f"{self.path} has no output {output!r}; it has {', '.join(self.outputs)}")
        return output

    def output_info(self, output: str | None = None) -> dict:
        """``{"shape": [...], "dtype": ...}`` of one stored output (shape without the row axis)."""
        info = self.manifest["outputs"][self.output_name(output)]
        return {"shape": list(info["shape"]), "dtype": info["dtype"]}

    def read_shard(self, shard: ShardInfo, output: str | None = None) -> FeatureBatch:
        """All rows of one shard: features of ``output``, labels, ids and split names."""
        name = self.output_name(output)
        with self._open(shard) as f:
            return FeatureBatch(f["features"][name][:], f["labels"][:].astype(np.int64),
                                decode_strings(f["ids"][:]),
                                decode_strings(f["split"][:]) if self.has_splits else None)

    def read_shard_features(self, shard: ShardInfo, output: str | None = None) -> np.ndarray:
        """The features of one shard alone (storage dtype): what streamed training reads every epoch."""
        name = self.output_name(output)
        out = np.empty((shard.n_rows,) + tuple(self.output_info(name)["shape"]), self.output_info(name)["dtype"])
        if shard.n_rows:
            with self._open(shard) as f:
                _read_into(f, name, shard.path, out)
        return out

    def _open(self, shard: ShardInfo):
        """Every read of a shard goes through here: only a listed shard, proven plain (:func:`open_shard`)."""
        record = self._records.get(shard.index)
        if record is None or shard.path != self.path / record["file"]:
            raise CacheError(f"{shard.path} is not a shard {self.path}'s manifest lists")
        return open_shard(shard.path, record, self._spec)

    # -- whole arrays
    def features(self, output: str | None = None) -> np.ndarray:
        """All rows of one output as one numpy array (in the storage dtype), in source order."""
        name = self.output_name(output)
        info = self.output_info(name)
        size = len(self) * int(np.prod(info["shape"])) * np.dtype(info["dtype"]).itemsize
        if self.max_load_bytes is not None and size > self.max_load_bytes:
            raise CacheError(f"loading {name} would take {size:,} bytes, over this cache's limit of "
                             f"{self.max_load_bytes:,}; stream it with iter_batches() (train --stream)")
        out = np.empty((len(self),) + tuple(info["shape"]), dtype=info["dtype"])
        for shard in self.shards:
            if shard.n_rows:
                with self._open(shard) as f:
                    _read_into(f, name, shard.path, out[shard.rows[0]:shard.rows[1]])
        return out

    def _columns(self) -> dict:
        """Labels, ids and splits of every row, read in one pass over the shards and kept."""
        if self._row_columns is None:
            has_splits = self.has_splits
            labels, ids, splits = [], [], []
            for shard in self.shards:
                with self._open(shard) as f:
                    labels.append(f["labels"][:])
                    ids.extend(decode_strings(f["ids"][:]))
                    if has_splits:
                        splits.extend(decode_strings(f["split"][:]))
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

    # -- splits
    def split_masks(self, *, val_fraction: float = VAL_FRACTION,
                    test_fraction: float = TEST_FRACTION) -> dict[str, np.ndarray]:
        """Boolean row masks of the labelled rows in each split: what ``train`` and ``bench`` use.

        The source's own splits where it has a train split, else a stable hash of
        each id (:mod:`featcache.splits`). Unlabelled rows are in no split.

        Args:
            val_fraction, test_fraction: the hashed split's fractions.

        Returns:
            ``{"train": mask, "val": mask, "test": mask}``, each of ``len(cache)`` booleans.

        Examples:
            >>> masks = cache.split_masks()                    # doctest: +SKIP
            >>> X_train = cache.features()[masks["train"]]     # doctest: +SKIP
        """
        labels = self._columns()["labels"]
        names = assign_splits(self.ids(), self.splits(), val_fraction=val_fraction, test_fraction=test_fraction,
                              labels=labels)
        labelled = labels >= 0
        return {s: (names == s) & labelled for s in SPLIT_NAMES}

    def split_rows(self, split: str | None, val_fraction: float = VAL_FRACTION,
                   test_fraction: float = TEST_FRACTION) -> np.ndarray:
        """Positions of one split's labelled rows (every row for None), in source order."""
        if split is None:
            return np.arange(len(self))
        if split not in SPLIT_NAMES:
            raise CacheError(f"split must be one of {', '.join(SPLIT_NAMES)} (or None: every row), got {split!r}")
        return np.flatnonzero(self.split_masks(val_fraction=val_fraction, test_fraction=test_fraction)[split])

    def split(self, name: str, output: str | None = None, *, val_fraction: float = VAL_FRACTION,
              test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
        """The features and labels of one split's labelled rows, in source order (not shuffled).

        Args:
            name: ``"train"``, ``"val"`` or ``"test"``: the split ``train`` fits
                and measures on (see :meth:`split_masks`).
            output: which stored output (default: the first).
            val_fraction, test_fraction: the hashed split's fractions.

        Returns:
            ``(X, y)``: features in the storage dtype and integer labels (indices
            into :attr:`class_names`).

        Examples:
            >>> X_train, y_train = cache.split("train")        # doctest: +SKIP
            >>> X_val, y_val = cache.split("val")              # doctest: +SKIP
        """
        rows = self.split_rows(name, val_fraction, test_fraction)
        batch = self.read_rows(rows, output)
        return batch.features, batch.labels

    def read_rows(self, rows, output: str | None = None) -> FeatureBatch:
        """Rows at any positions (in the order given), reading only the shards that hold them.

        Args:
            rows: row positions (``0 <= row < len(cache)``), in any order.
            output: which stored output (default: the first).

        Returns:
            A :class:`FeatureBatch` of those rows, in the order of ``rows``.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        name = self.output_name(output)
        info = self.output_info(name)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise CacheError(f"row positions must be in 0..{len(self) - 1}")
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        out = np.empty((len(rows),) + tuple(info["shape"]), info["dtype"])
        starts = np.array([sh.rows[0] for sh in self.shards] + [len(self)], np.int64)
        owner = np.searchsorted(starts, wanted, side="right") - 1
        for b in np.unique(owner):
            shard = self.shards[int(b)]
            sel = np.flatnonzero(owner == b)
            local = wanted[sel] - shard.rows[0]
            if len(local) * 8 >= shard.n_rows:  # many rows: one contiguous read beats a point selection
                out[order[sel]] = self.read_shard_features(shard, name)[local]
            else:
                unique, inverse = np.unique(local, return_inverse=True)
                with self._open(shard) as f:
                    out[order[sel]] = f["features"][name][unique][inverse]
        cols = self._columns()
        ids = cols["ids"]
        return FeatureBatch(out, cols["labels"][rows], [ids[r] for r in rows],
                            None if cols["split"] is None else [cols["split"][r] for r in rows])

    # -- streaming
    def iter_batches(self, batch_size: int = 1024, output: str | None = None, *, split: str | None = None,
                     shuffle: bool = False, seed: int = 0, val_fraction: float = VAL_FRACTION,
                     test_fraction: float = TEST_FRACTION) -> Iterator[FeatureBatch]:
        """Stream rows in batches of ``batch_size`` (the last one smaller).

        Rows come in source order, shard by shard, unless ``shuffle``: a folder
        source lists its images class by class, so unshuffled batches are
        sorted by class. Memory stays at about one shard plus one batch.

        Args:
            batch_size: rows a batch.
            output: which stored output (default: the first).
            split: ``"train"``, ``"val"`` or ``"test"`` (its labelled rows, see
                :meth:`split_masks`), or None for every row.
            shuffle: a random order over all the chosen rows, drawn with ``seed``
                (each batch then reads from many shards).
            seed: the shuffle's seed.
            val_fraction, test_fraction: the hashed split's fractions.

        Returns:
            An iterator of :class:`FeatureBatch`.

        Examples:
            >>> for b in cache.iter_batches(256, split="train", shuffle=True, seed=0):  # doctest: +SKIP
            ...     model.train_on_batch(b.features, b.labels)
        """
        check_integer(batch_size, "batch_size", error=CacheError)
        if shuffle or split is not None:
            rows = self.split_rows(split, val_fraction, test_fraction)
            if shuffle:
                rows = np.random.default_rng(seed).permutation(rows)
            for a in range(0, len(rows), batch_size):
                yield self.read_rows(rows[a:a + batch_size], output)
            return
        pending: list[FeatureBatch] = []
        pending_rows = 0
        for shard in self.shards:
            if not shard.n_rows:
                continue
            part = self.read_shard(shard, output)
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
        for shard in self._all_shards:
            problems += shard_problems(self.path, shard, self.key, deep=deep, spec=self._spec)
        if self.complete:
            expected = self.manifest.get("n_shards")
            if expected is not None and len(self._all_shards) != expected:
                problems.append(f"manifest lists {len(self._all_shards)} shards of {expected}")
            problems += view_problems(self.path, self.manifest)
        return problems

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def _read_into(f: h5py.File, name: str, path: Path, dest: np.ndarray) -> None:
    """Copy output ``name`` of the shard ``f`` at ``path`` (opened, so proven, by :func:`open_shard`) into ``dest``.

    A contiguous dataset (how uncompressed outputs are written) in native byte
    order is read as plain bytes at its file offset, straight into ``dest``,
    with no HDF5 copy in between: as fast as ``np.load``. Anything else
    (compressed, or chunked by an older featcache) goes through HDF5. The
    bytes come from the descriptor HDF5 holds for the proven file, never from
    the name again, and only from inside it.
    """
    ds = f["features"][name]
    offset = ds.id.get_offset()
    if offset is None or not hasattr(os, "preadv") or ds.dtype != dest.dtype or not ds.dtype.isnative or ds.shape != dest.shape \
            or not dest.flags.c_contiguous:
        ds.read_direct(dest)
        return
    view = memoryview(dest.reshape(-1).view(np.uint8))
    fd = f.id.get_vfd_handle()  # the proof showed the dataset is this file's own (no link, no external storage)
    if offset + len(view) > os.fstat(fd).st_size:
        raise CacheError(f"shard {path} is shorter than its header says; run `featcache verify`")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise CacheError(f"shard {path} is shorter than its header says; run `featcache verify`")
        done += got


def _merge(parts: list[FeatureBatch]) -> FeatureBatch:
    if len(parts) == 1:
        return parts[0]
    return FeatureBatch(np.concatenate([p.features for p in parts]), np.concatenate([p.labels for p in parts]),
                        [i for p in parts for i in p.ids],
                        None if parts[0].splits is None else [s for p in parts for s in p.splits])


def _slice(b: FeatureBatch, a: int, z: int) -> FeatureBatch:
    return FeatureBatch(b.features[a:z], b.labels[a:z], b.ids[a:z], None if b.splits is None else b.splits[a:z])


def split_masks(cache: "Cache", *, val_fraction: float = VAL_FRACTION,
                test_fraction: float = TEST_FRACTION) -> dict[str, np.ndarray]:
    """Boolean row masks of the labelled rows of ``cache`` in train, val and test (:meth:`Cache.split_masks`).

    Args:
        cache: an open :class:`Cache`.
        val_fraction, test_fraction: the hashed split's fractions.

    Returns:
        ``{"train": mask, "val": mask, "test": mask}``.

    Examples:
        >>> masks = featcache.split_masks(cache)   # doctest: +SKIP
    """
    return cache.split_masks(val_fraction=val_fraction, test_fraction=test_fraction)


def open_cache(path: str | os.PathLike, *, allow_partial: bool = False, max_load_bytes: int | None = None) -> Cache:
    """Open a cache directory written by :func:`featcache.extract`.

    ``max_load_bytes`` makes :meth:`Cache.features` refuse to load more than
    that into memory (a guard for caches larger than RAM).
    """
    return Cache(path, allow_partial=allow_partial, max_load_bytes=max_load_bytes)


# --------------------------------------------------------------------------- writing a cache


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CacheSink:
    """Where an extraction's shards go: Ray Data's datasink pattern for one cache directory.

    :meth:`write` writes one finished shard atomically and returns its
    record; any process may call it (a Ray worker writes its own shards).
    Everything else is the driver's, the one process holding the directory's
    lock: :meth:`begin` builds the manifest, :meth:`commit` records each
    written shard in it, :meth:`finish` stitches ``features.h5`` and writes
    ``"complete": true`` last (img2dataset's completion marker). A sink
    without a manifest (``begin`` not called) only writes: that is what is
    sent to workers.

    Args:
        directory: the cache directory.
        key: the cache key every shard carries.
        dtype: storage dtype, ``float16`` or ``float32``.
        compression: ``None``, ``"lzf"`` or ``"gzip"``.
        n_items: items in the source, for the disk-full estimate.
    """

    def __init__(self, directory, *, key: str, dtype: str = "float16", compression: str | None = None,
                 n_items: int = 0):
        self.directory = Path(directory)
        self.key, self.dtype, self.compression, self.n_items = key, dtype, compression, int(n_items)
        self.manifest: dict | None = None
        #: called once with the outputs' ``{name: {"shape", "dtype"}}`` as soon as they are known (the driver's)
        self.on_outputs = None

    def worker_copy(self) -> "CacheSink":
        """The same sink without the manifest: what a worker needs to write shards."""
        return CacheSink(self.directory, key=self.key, dtype=self.dtype, compression=self.compression,
                         n_items=self.n_items)

    # -- any process
    def write(self, shard: ShardData) -> dict:
        """Write one finished shard atomically; returns its manifest record."""
        return self._disk_full_guard(shard, lambda: write_shard(self.directory, shard, key=self.key,
                                                                dtype=self.dtype, compression=self.compression))

    def _disk_full_guard(self, shard: ShardData, write):
        """Run ``write``; a full disk becomes a clear error naming the directory and the bytes needed.

        HDF5 does not always report ENOSPC as such, so a failed write on a
        file system with less free space than the rest of the cache needs is
        treated as a full disk too.
        """
        try:
            return write()
        except OSError as exc:
            row = sum(int(np.prod(v.shape[1:])) for v in shard.features.values()) * np.dtype(self.dtype).itemsize
            remaining = (self.n_items - shard.item_range[0]) * (row + 64) + 64 * 1024
            try:
                free = shutil.disk_usage(self.directory).free
            except OSError:
                free = None
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < remaining):
                free_text = "unknown" if free is None else f"{free:,}"
                raise CacheError(f"disk full while writing {self.directory}: about {remaining:,} more bytes are "
                                 f"needed for the remaining shards ({free_text} free). Shards already written are "
                                 "kept; free space and run the same command again to finish.") from None
            raise

    # -- the driver
    def begin(self, *, params: dict, fingerprint: str, dataset: dict, backbone_ref: dict, n_shards: int,
              shards: list[dict], old: dict | None, save: bool, views: int = 0, augment: str | None = None) -> dict:
        """Start (or resume) the manifest with the shards already on disk; ``save`` writes it now.

        ``views`` augmented views per train image (made with the recipe
        ``augment``) are recorded beside the plain view; they are not part of
        the key, so a later run may add more. A complete cache gaining views
        stays complete, and readable with the views it had, until
        :meth:`finish` records the new ones (``views_target`` says how many
        are on their way).
        """
        finished = {r["index"] for r in (old or {}).get("shards", []) if r["index"] < (old or {}).get("n_shards", 0)}
        if old is not None and old.get("complete") and old["key"] == self.key and views > int(old.get("views", 0)) \
                and finished <= {s["index"] for s in shards}:  # nothing it had is being repaired
            self.manifest = {**old, "shards": sorted(shards, key=lambda s: s["index"]), "views_target": int(views),
                             "target_shards": n_shards, "augment": augment}
            if save:
                write_manifest(self.directory, self.manifest)
            return self.manifest
        if old is not None and old.get("complete") and old["key"] == self.key and views == int(old.get("views", 0)):
            # a repair: readers keep the complete cache; each damaged shard is replaced atomically, then its record
            self.manifest = {**old, "shards": sorted({**{r["index"]: r for r in old["shards"]},
                                                      **{r["index"]: r for r in shards}}.values(),
                                                     key=lambda s: s["index"])}
            if save:
                write_manifest(self.directory, self.manifest)
            return self.manifest
        self.manifest = {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "complete": False,
            "params": params,
            "dataset": {"fingerprint": fingerprint, **dataset},
            "outputs": (old or {}).get("outputs") or {},
            "backbone_ref": backbone_ref,
            "n_shards": n_shards,
            "views": int(views),
            **({"augment": augment} if views else {}),
            "shards": sorted(shards, key=lambda s: s["index"]),
            "created": (old or {}).get("created") or _now(),
        }
        if save:
            write_manifest(self.directory, self.manifest)
        return self.manifest

    def set_outputs(self, outputs: dict) -> None:
        """``{name: {"shape", "dtype"}}`` of the stored outputs, known once the model is built."""
        self.manifest["outputs"] = outputs
        self._announce()

    def _announce(self) -> None:
        if self.on_outputs is not None and self.manifest.get("outputs"):
            self.on_outputs(self.manifest["outputs"])
            self.on_outputs = None

    def commit(self, record: dict, shard: ShardData | None = None) -> None:
        """Add a written shard's record to the manifest and save it."""
        kept = [s for s in self.manifest["shards"] if s["index"] != record["index"]]  # a repaired shard's old record
        self.manifest["shards"] = sorted(kept + [record], key=lambda s: s["index"])
        if not self.manifest["outputs"] and record["n_rows"]:  # engines that never built the model here
            self.manifest["outputs"] = self._outputs_from_shards([record])
            self._announce()
        if shard is None:
            write_manifest(self.directory, self.manifest)
        else:
            self._disk_full_guard(shard, lambda: write_manifest(self.directory, self.manifest))

    def _outputs_from_shards(self, records: list[dict]) -> dict:
        for rec in records:
            if rec["n_rows"]:
                with h5py.File(self.directory / rec["file"], "r") as f:
                    return {n: {"shape": list(ds.shape[1:]), "dtype": str(ds.dtype)} for n, ds in f["features"].items()}
        return {}

    def finish(self, *, timings: dict, versions: dict) -> dict:
        """Number the rows, write ``features.h5``, then mark the manifest complete (written last).

        A cache whose every item was skipped is never marked complete: the
        error says the most common reason instead.
        """
        manifest = self.manifest
        if "views_target" in manifest:  # the new views are all in: record them
            manifest["views"], manifest["n_shards"] = manifest.pop("views_target"), manifest.pop("target_shards")
        shards = sorted(manifest["shards"], key=lambda s: s["index"])
        n_items = manifest["dataset"].get("n_items", 0)
        n_base = base_shards(manifest["params"]["shard_size"], n_items)
        rows: dict[int, int] = {}
        for s in shards:  # each view numbers its own rows; view 0 (the plain one) is the cache's rows
            view = s["index"] // n_base
            start = rows.get(view, 0)
            s["rows"] = [start, start + s["n_rows"]]
            rows[view] = start + s["n_rows"]
        row = rows.get(0, 0)
        plain = [s for s in shards if s["index"] < n_base]
        if not manifest["outputs"]:
            manifest["outputs"] = self._outputs_from_shards(shards)
        skipped = [dict(x) for s in plain for x in s["skipped"]]
        counts = {"items": n_items, "rows": row, "skipped": len(skipped)}
        if manifest.get("views"):
            counts["view_rows"] = sum(n for v, n in rows.items() if v)
        manifest.update({"shards": shards, "counts": counts, "skipped": skipped, "versions": versions,
                         "timings": timings})
        if not manifest["outputs"] or (row == 0 and n_items):
            reasons = collections.Counter(x["reason"] for x in skipped).most_common(1)
            raise CacheError(f"every one of the {n_items:,} images was skipped, so {self.directory} is left "
                             f"incomplete; most common reason: {reasons[0][0] if reasons else 'none'}"
                             + (f" ({reasons[0][1]:,} images)" if reasons else ""))
        write_view(self.directory, manifest)
        manifest["complete"] = True
        manifest["finished"] = _now()
        write_manifest(self.directory, manifest)  # the completion marker: written last
        return manifest


# --------------------------------------------------------------------------- a directory before a run


def existing_shards(directory: Path, old: dict | None, *, key: str, n_shards: int, shard_size: int,
                    n_items: int, repair: bool) -> tuple[dict[int, dict], list[str]]:
    """Shards on disk that are valid for this key, and what was wrong with the others (deleted if ours).

    A file is deleted only when featcache can prove it wrote it: a shard the
    manifest lists (its path was checked to be ``shards/NNNNN.h5`` when the
    manifest was read), or a shard file carrying featcache's attributes. A
    ``NNNNN.h5`` that is neither stops the run, untouched.
    """
    directory = Path(directory)
    notes: list[str] = []
    done: dict[int, dict] = {}
    damaged: set[int] = set()
    spec = ShardSpec.of(old, key) if old and old.get("outputs") else None
    for rec in (old or {}).get("shards", []):
        path = directory / rec["file"]
        problems = shard_problems(directory, rec, key, deep=repair, spec=spec)
        if problems:
            notes += problems
            damaged.add(rec["index"])
            if not path.is_symlink() and not old.get("complete"):  # a complete cache's readers keep reading it
                path.unlink(missing_ok=True)
        else:
            done[rec["index"]] = rec
    shard_dir = directory / SHARDS
    if shard_dir.is_dir():
        for p in sorted(shard_dir.glob("*.h5")):
            try:
                index = int(p.stem)
            except ValueError:
                continue
            if index in done or index in damaged:
                continue
            if shard_key(p) is None:
                raise CacheError(f"{p} is not a featcache shard, and featcache never deletes what it did not "
                                 "write: move it away, then run again")
            if index >= n_shards:
                p.unlink()
                continue
            item_range = shard_item_range(index, shard_size, n_items)
            try:
                done[index] = inspect_shard(p, key, index, item_range)
                if spec is not None:  # a shard written but never committed is adopted only once proven plain
                    open_shard(p, done[index], spec, force=True).close()
            except CacheError as exc:
                done.pop(index, None)
                notes.append(str(exc))
                p.unlink()
    return done, notes


def claim(directory: Path, old: dict | None, *, key: str, params: dict, fingerprint: str,
          overwrite: bool) -> tuple[dict | None, list[str]]:
    """Decide whether a run may write into ``directory``; returns (old manifest to build on, files left alone).

    The directory must be new, empty, or a featcache cache with this key;
    ``overwrite`` replaces a cache made with other settings but removes only
    files featcache can prove it wrote.
    """
    directory = Path(directory)
    shard_dir = directory / SHARDS
    if shard_dir.is_symlink() or os.path.lexists(shard_dir) and not shard_dir.is_dir():
        raise CacheError(f"{shard_dir} is a symbolic link or not a directory; featcache reads, writes and deletes "
                         "shards only inside the cache directory: move it away")
    if old is not None and old["key"] != key and not overwrite:
        raise KeyMismatchError(directory, key_differences(old, params, fingerprint))
    if overwrite:
        return None, clear_cache_files(directory)
    if old is None:
        foreign = foreign_entries(directory)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise CacheError(f"{directory} is not empty and is not a featcache cache (it holds {shown}); "
                             "choose an empty or new --out directory")
        for p in sorted(shard_dir.glob("*.h5")) if shard_dir.is_dir() else []:
            other = shard_key(p)
            if other is not None and other != key:
                raise CacheError(f"{directory} holds shards of another cache (key {other[:12]}) and no manifest; "
                                 "pass --overwrite to replace them")
    return old, []


def up_to_date(directory: Path, old: dict | None, *, key: str, n_shards: int, check_shards: bool = True) -> bool:
    """Whether ``directory`` already holds the complete cache ``key`` (shard sizes checked, not hashes).

    A ``features.h5`` that maps anywhere but this cache's own shards makes it not up to date: the run rebuilds it.
    """
    directory = Path(directory)
    return bool(old and old.get("complete") and old["key"] == key
                and len(old.get("shards", [])) == n_shards and not view_problems(directory, old)
                and not (check_shards and any(shard_problems(directory, rec, key, deep=False)
                                              for rec in old["shards"])))


def refresh_class_names(directory: Path, old: dict, names: list[str]) -> list[str]:
    """Class names are not in the key (the features do not depend on them): a rename updates the manifest."""
    if old["dataset"].get("class_names") == list(names):
        return []
    before = old["dataset"].get("class_names")
    old["dataset"]["class_names"] = list(names)
    write_manifest(directory, old)
    return [f"class names updated: {before} -> {list(names)}"]
