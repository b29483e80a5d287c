"""Targets attached to a cache: tables keyed by item id, kept in their own files beside the features.

A target is what a head learns to predict: the source's own label (``label``,
from the shards) or a table attached later (``featcache targets CACHE FILE``).
Attaching runs no CNN and never touches the manifest or the shards: each
target is one HDF5 file ``targets/NAME-SHA16.h5`` (its ids and values), and
``targets.json``, written atomically last, lists them with their kind, value
names, row count, size and sha256. Every target file is proven (a regular
file of the recorded size and sha256, then exactly the declared datasets, no
link or external storage) before a value of it is read. docs/TARGETS.md is
the contract.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import CacheError
from ..files import atomic_write_bytes, remove_stale_temporaries
from .layout import STRING_DTYPE, decode_strings, encode_strings
from .lock import DirectoryLock
from .proof import _storage_problem, check_members
from .target_tables import (DTYPES, KINDS, LABEL, NAME_PATTERN, Built, TargetError, build_targets, check_ids,
                            read_table)

TARGETS_INDEX = "targets.json"
TARGETS_DIR = "targets"
INDEX_FORMAT = "featcache-targets/1"
_FILE = re.compile(r"^targets/([A-Za-z_][A-Za-z0-9_]{0,63})-([0-9a-f]{16})\.h5$")
_TEMPORARY = re.compile(r"^\.[A-Za-z_][A-Za-z0-9_]{0,63}-[0-9a-f]{16}\.h5\.tmp-\d+$")
_INDEX_TEMPORARY = re.compile(r"^\.targets\.json\.tmp-\d+$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_MAX_ROWS, _MAX_NAMES = 10**10, 100_000


@dataclass(frozen=True)
class Target:
    """One target, aligned to a cache's rows.

    ``values``: classification int64 indices into ``names`` (-1 where no value);
    regression float64 ``(rows,)``, or ``(rows, outputs)`` for several outputs
    (NaN where no value); multilabel uint8 ``(rows, labels)`` 0/1 indicators
    (all 0 where no value). ``mask`` marks the rows that have a value.
    """

    name: str
    kind: str
    #: classes (classification), output columns (regression) or labels (multilabel)
    names: tuple
    values: np.ndarray
    mask: np.ndarray

    @property
    def n(self) -> int:
        """Rows with a value."""
        return int(self.mask.sum())

    @property
    def coverage(self) -> float:
        """The share of the cache's rows with a value."""
        return self.n / len(self.mask) if len(self.mask) else 0.0

    def describe(self) -> str:
        """``regression, 120 of 150 rows (80%)``: what ``featcache info`` shows."""
        return f"{self.kind}, {self.n:,} of {len(self.mask):,} rows ({self.coverage:.0%})"


# --------------------------------------------------------------------------- files

def _target_image(t: Built) -> bytes:
    """The bytes of one target file, built in memory so that its sha256 is of what is written."""
    image = io.BytesIO()
    with h5py.File(image, "w", libver=("earliest", "v110")) as f:
        f.attrs["featcache_targets"] = 1
        f.attrs["name"], f.attrs["kind"] = t.name, t.kind
        f.create_dataset("ids", data=encode_strings(t.ids), dtype=STRING_DTYPE, shape=(len(t.ids),))
        f.create_dataset("values", data=t.values.astype(DTYPES[t.kind], copy=False))
    return image.getvalue()


def read_index(directory: Path) -> dict[str, dict]:
    """``{name: record}`` from ``targets.json`` ({} when there is none), each record checked."""
    path = Path(directory) / TARGETS_INDEX
    if not os.path.lexists(path):
        return {}
    if path.is_symlink() or not path.is_file():
        raise CacheError(f"{path} is a link or not a file; featcache writes neither: move it away")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CacheError(f"{path} cannot be read as featcache's targets index ({type(exc).__name__}); "
                         "move it away and attach the targets again") from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("targets"), dict):
        raise CacheError(f"{path} is not featcache's targets index (format {INDEX_FORMAT})")
    for name, rec in data["targets"].items():
        problem = _record_problem(name, rec)
        if problem:
            raise CacheError(f"{path} is damaged or not featcache's (target {name!r}: {problem}); nothing was read")
    return data["targets"]


def _record_problem(name, rec) -> str | None:
    """What is wrong with one index record, or None (the schema of docs/TARGETS.md)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name == LABEL:
        return "not a safe target name"
    if not isinstance(rec, dict):
        return "not an object"
    m = _FILE.match(rec.get("file") if isinstance(rec.get("file"), str) else "")
    if rec.get("kind") not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}"
    if not m or m.group(1) != name or not _SHA.match(str(rec.get("sha256"))) or m.group(2) != rec["sha256"][:16]:
        return "file must be targets/NAME-SHA16.h5 of its own name and sha256"
    for field, top in (("rows", _MAX_ROWS), ("bytes", 1 << 40)):
        if not isinstance(rec.get(field), int) or isinstance(rec.get(field), bool) or not 0 <= rec[field] <= top:
            return f"{field} must be an integer in 0..{top}"
    names = rec.get("names")
    if not isinstance(names, list) or not 0 < len(names) <= _MAX_NAMES or \
            not all(isinstance(n, str) and "\x00" not in n for n in names):
        return f"names must be 1..{_MAX_NAMES} texts"
    if len(set(names)) != len(names):
        return "names must be unique"
    return None


def _write_index(directory: Path, records: dict[str, dict]) -> None:
    data = {"format": INDEX_FORMAT, "targets": dict(sorted(records.items()))}
    atomic_write_bytes(Path(directory) / TARGETS_INDEX, (json.dumps(data, indent=2) + "\n").encode())


def _prove(path: Path, name: str, rec: dict) -> tuple[list[str], np.ndarray]:
    """The ids and values of one target file, once proven the file ``rec`` describes (docs/TARGETS.md)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise CacheError(f"target file {path} is missing; attach {name!r} again") from None
    if not stat.S_ISREG(st.st_mode):
        raise CacheError(f"target file {path} is a link or not a file; featcache writes neither")
    if st.st_size != rec["bytes"]:
        raise CacheError(f"target file {path} has {st.st_size:,} bytes, targets.json says {rec['bytes']:,}; "
                         f"attach {name!r} again")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(rec["bytes"] + 1)
    if hashlib.sha256(data).hexdigest() != rec["sha256"]:
        raise CacheError(f"target file {path} does not match its sha256 in targets.json (damaged or altered); "
                         f"attach {name!r} again")
    try:  # the bytes just hashed, never the name again
        with h5py.File(io.BytesIO(data), "r") as f:
            return _prove_structure(f, name, rec)
    except CacheError as exc:
        raise CacheError(f"target file {path} is not a plain featcache target: {exc}; nothing was read") from None
    except Exception as exc:  # noqa: BLE001 - whatever HDF5 makes of a forged file
        raise CacheError(f"target file {path} is not a readable target ({exc})") from None


def _prove_structure(f: h5py.File, name: str, rec: dict) -> tuple[list[str], np.ndarray]:
    if f.attrs.get("featcache_targets") != 1 or f.attrs.get("name") != name or f.attrs.get("kind") != rec["kind"]:
        raise CacheError("its attributes are not those of this target")
    check_members(f, {"ids", "values"}, {"ids", "values"})
    n, k = rec["rows"], len(rec["names"])
    shape = (n,) if rec["kind"] == "classification" else (n, k)
    for ds, want in ((f["ids"], (n,)), (f["values"], shape)):
        if not isinstance(ds, h5py.Dataset):
            raise CacheError(f"{ds.name} is not a dataset")
        problem = _storage_problem(ds)
        if problem:
            raise CacheError(f"{ds.name} {problem}")
        if ds.shape != want:
            raise CacheError(f"{ds.name} has shape {ds.shape}, targets.json says {want}")
    if h5py.check_string_dtype(f["ids"].dtype) is None or f["values"].dtype != DTYPES[rec["kind"]]:
        raise CacheError(f"its datasets are not text ids and {DTYPES[rec['kind']]} values")
    values = f["values"][:]
    if rec["kind"] == "classification" and len(values) and (values.min() < 0 or values.max() >= k) \
            or rec["kind"] == "multilabel" and (values > 1).any() \
            or rec["kind"] == "regression" and not np.isfinite(values).all():
        raise CacheError(f"its values are outside what a {rec['kind']} target of {k} names holds")
    return decode_strings(f["ids"][:]), values


# --------------------------------------------------------------------------- attaching, removing, reading

def attach_targets(cache, table, *, name: str | None = None, kind: str | None = None, id_column: str = "id",
                   wait: float = 10.0) -> dict[str, Target]:
    """Attach the targets of ``table`` to an open cache; a target of the same name is replaced atomically.

    Args:
        cache: an open :class:`~featcache.Cache` (``featcache.open_cache(path)``).
        table: a CSV path, a .parquet path (needs pyarrow) or a ``{column: list}`` mapping, with an
            ``id_column`` of the cache's item ids (``cache.ids()``) and one column per target.
        name: make every column one target of this name (several numeric columns: multi-output
            regression; several 0/1 columns: multi-label).
        kind: ``classification``, ``regression`` or ``multilabel`` instead of the inferred kind.
        id_column: the column of item ids.
        wait: seconds to wait for another writer of the directory.

    Returns:
        ``{name: Target}`` of the targets attached, aligned to the cache's rows.

    Examples:
        >>> featcache.attach_targets(cache, "zoom/targets.csv")           # doctest: +SKIP
        >>> featcache.attach_targets(cache, {"id": ids, "age": ages})     # doctest: +SKIP
    """
    if not (hasattr(cache, "ids") and hasattr(cache, "path")):
        raise TargetError(f"attach_targets takes an open cache (featcache.open_cache(path)), got {cache!r}")
    ids, columns, stem, source = read_table(table, id_column)
    check_ids(ids, cache.ids(), {s["id"] for s in cache.skipped})
    built = build_targets(ids, columns, name=name, kind=kind, stem=stem)
    directory = Path(cache.path)
    lock = DirectoryLock(directory, wait=wait).acquire()
    try:
        records = read_index(directory)
        (directory / TARGETS_DIR).mkdir(exist_ok=True)
        for t in built:
            data = _target_image(t)
            digest = hashlib.sha256(data).hexdigest()
            atomic_write_bytes(directory / TARGETS_DIR / f"{t.name}-{digest[:16]}.h5", data)
            records[t.name] = {"kind": t.kind, "file": f"{TARGETS_DIR}/{t.name}-{digest[:16]}.h5",
                               "names": [str(n) for n in t.names], "columns": t.columns, "rows": len(t.ids),
                               "bytes": len(data), "sha256": digest, "source": source, "id_column": id_column,
                               "attached": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_index(directory, records)  # the commit: a kill before it leaves the old targets
        _remove_unlisted(directory, records)
    finally:
        lock.release(remove=True)
    return {t.name: read_target(cache, t.name) for t in built}


def remove_targets(cache, name: str, *, wait: float = 10.0) -> None:
    """Detach the target ``name`` (its file goes once ``targets.json`` no longer lists it)."""
    directory = Path(cache.path)
    if name == LABEL:
        raise TargetError(f"{LABEL!r} is the source's own label; it cannot be removed")
    lock = DirectoryLock(directory, wait=wait).acquire()
    try:
        records = read_index(directory)
        if name not in records:
            raise TargetError(f"{directory} has no target {name!r}; it has {', '.join([LABEL, *records])}")
        del records[name]
        _write_index(directory, records)
        _remove_unlisted(directory, records)
    finally:
        lock.release(remove=True)


def _remove_unlisted(directory: Path, records: dict) -> None:
    """Delete target files of ours that the index no longer lists, and killed writers' temporaries; nothing else."""
    remove_stale_temporaries(directory / TARGETS_INDEX)
    listed = {Path(r["file"]).name for r in records.values()}
    folder = directory / TARGETS_DIR
    for p in sorted(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []:
        if p.name not in listed and _is_our_target_file(p):
            p.unlink(missing_ok=True)
        elif _TEMPORARY.match(p.name):  # .NAME-SHA16.h5.tmp-PID: gone only where its writer is
            remove_stale_temporaries(folder / p.name[1:].rpartition(".tmp-")[0])


def label_target(cache) -> Target:
    """The source's own label as a classification target (``-1``: unlabelled, no value)."""
    if getattr(cache, "target_name", LABEL) != LABEL:  # opened with another target as its labels
        labels = cache.source_labels()
        names = cache.source_class_names
    else:
        labels, names = cache.labels(), cache.class_names
    return Target(LABEL, "classification", tuple(names), labels, labels >= 0)


def read_target(cache, name: str = LABEL) -> Target:
    """One target aligned to ``cache``'s rows; ids no longer in the cache are left out."""
    if name == LABEL:
        return label_target(cache)
    records = read_index(cache.path)
    if name not in records:
        raise CacheError(f"{cache.path} has no target {name!r}; it has {', '.join([LABEL, *records])}")
    rec = records[name]
    ids, stored = _prove(Path(cache.path) / rec["file"], name, rec)
    row = {i: r for r, i in enumerate(cache.ids())}
    n, k = len(row), len(rec["names"])
    pairs = [(row[i], s) for s, i in enumerate(ids) if i in row]
    rows = np.array([r for r, _ in pairs], np.int64)
    src = np.array([s for _, s in pairs], np.int64)
    mask = np.zeros(n, bool)
    mask[rows] = True
    if rec["kind"] == "classification":
        values = np.full(n, -1, np.int64)
    elif rec["kind"] == "regression":
        values = np.full((n, k), np.nan, np.float64)
    else:
        values = np.zeros((n, k), np.uint8)
    values[rows] = stored[src]
    if rec["kind"] == "regression" and k == 1:
        values = values[:, 0]
    return Target(name, rec["kind"], tuple(rec["names"]), values, mask)


def read_targets(cache) -> dict[str, Target]:
    """Every target of ``cache``: ``label`` first, then the attached ones by name."""
    return {LABEL: label_target(cache), **{n: read_target(cache, n) for n in read_index(cache.path)}}


def targets_summary(cache) -> str:
    """One line of every target with its kind and coverage (``featcache info``); a damaged index says so."""
    try:
        return "; ".join(f"{t.name} ({t.describe()})" for t in read_targets(cache).values())
    except CacheError as exc:
        return f"unreadable: {exc}"


# --------------------------------------------------------------------------- ownership

def _is_our_target_file(path: Path) -> bool:
    """A regular file named like a target file that HDF5 opens and that carries our attribute."""
    if path.is_symlink() or not path.is_file() or not _FILE.match(f"{TARGETS_DIR}/{path.name}"):
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("featcache_targets") == 1
    except Exception:  # noqa: BLE001 - anything HDF5 cannot read is not provably ours
        return False


def _is_our_index(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == INDEX_FORMAT


def target_entry_foreign(path: Path) -> list[str] | None:
    """For a cache directory's entry ``path``: None when it is no targets entry, else what of it is not ours.

    Ours: ``targets.json`` that parses as our index, its temporaries, and a
    ``targets/`` folder (not a link) of our target files and their temporaries.
    """
    path = Path(path)
    if _INDEX_TEMPORARY.match(path.name):
        return [] if path.is_file() and not path.is_symlink() else [path.name]
    if path.name == TARGETS_INDEX:
        return [] if _is_our_index(path) else [path.name]
    if path.name != TARGETS_DIR:
        return None
    if path.is_symlink() or not path.is_dir():
        return [path.name]
    return [f"{TARGETS_DIR}/{p.name}" for p in sorted(path.iterdir())
            if not (_is_our_target_file(p) or _TEMPORARY.match(p.name) and p.is_file() and not p.is_symlink())]
