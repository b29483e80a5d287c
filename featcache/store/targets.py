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

import csv
import hashlib
import io
import json
import math
import numbers
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from ..errors import CacheError, FeatcacheError
from ..files import atomic_write_bytes, remove_stale_temporaries
from .layout import STRING_DTYPE, decode_strings, encode_strings
from .lock import DirectoryLock
from .proof import _storage_problem, check_members

KINDS = ("classification", "regression", "multilabel")
TARGETS_INDEX = "targets.json"
TARGETS_DIR = "targets"
INDEX_FORMAT = "featcache-targets/1"
#: the source's own label: the default target, read from the shards, never attached
LABEL = "label"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_FILE = re.compile(r"^targets/([A-Za-z_][A-Za-z0-9_]{0,63})-([0-9a-f]{16})\.h5$")
_TEMPORARY = re.compile(r"^\.[A-Za-z_][A-Za-z0-9_]{0,63}-[0-9a-f]{16}\.h5\.tmp-\d+$")
_INDEX_TEMPORARY = re.compile(r"^\.targets\.json\.tmp-\d+$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_MAX_ROWS, _MAX_NAMES = 10**10, 100_000
#: what each kind's values are stored as (docs/TARGETS.md)
_DTYPES = {"classification": np.dtype(np.int64), "regression": np.dtype(np.float64),
           "multilabel": np.dtype(np.uint8)}


class TargetError(FeatcacheError):
    """A targets table cannot be attached as it is (the message names the column, id or name)."""


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


def safe_name(name, what: str = "target name") -> str:
    """``name`` when it is a safe identifier other than ``label``; a one-line TargetError otherwise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise TargetError(f"{what} {name!r} is not a safe identifier (letters, digits and _, not starting with a "
                          "digit, at most 64): rename the column or pass --name")
    if name == LABEL:
        raise TargetError(f"{what} {LABEL!r} is reserved for the source's own label: pass another --name")
    return name


# --------------------------------------------------------------------------- reading a table

def read_table(table, id_column: str = "id") -> tuple[list[str], dict[str, list], str | None, str]:
    """``(ids, {column: cells}, stem, source)`` of a CSV path, a .parquet path or a ``{column: list}`` mapping.

    CSV cells are text, stripped (an empty cell is no value); a mapping's and
    parquet's cells keep their types (None: no value).
    """
    if isinstance(table, Mapping):
        columns = {str(k): _as_list(k, v) for k, v in table.items()}
        stem, source = None, "mapping"
    elif isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if path.suffix.lower() == ".parquet":
            columns = _read_parquet(path)
        elif path.suffix.lower() in (".csv", ".txt", ".tsv"):
            columns = _read_csv(path)
        else:
            raise TargetError(f"targets table {path} must be a .csv or .parquet file")
        stem, source = path.stem, str(path)
    else:
        raise TargetError(f"a targets table is a CSV or parquet path or a {{column: list}} mapping, got "
                          f"{type(table).__name__}")
    if id_column not in columns:
        raise TargetError(f"targets table {source} has no {id_column!r} column (it has {', '.join(columns) or 'none'}); "
                          "pass --id-column")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise TargetError(f"targets table {source}: columns have different lengths ({sorted(lengths)})")
    raw_ids = columns.pop(id_column)
    if not raw_ids:
        raise TargetError(f"targets table {source} has no rows")
    if not columns:
        raise TargetError(f"targets table {source} has only the {id_column!r} column: nothing to attach")
    ids = []
    for i, v in enumerate(raw_ids):
        if not isinstance(v, str) or not v or "\x00" in v:
            raise TargetError(f"targets table {source}: row {i + 1} has no id (or not a text id: {v!r})")
        ids.append(v)
    return ids, columns, stem, source


def _as_list(name, values) -> list:
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise TargetError(f"column {name!r} is {values.ndim}-D; give one column per output")
        return values.tolist()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TargetError(f"column {name!r} must be a list of values, got {type(values).__name__}")
    return list(values)


def _read_csv(path: Path) -> dict[str, list]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise TargetError(f"cannot read targets table {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TargetError(f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    if "\x00" in text:
        raise TargetError(f"{path} holds a NUL byte; a targets table is text")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise TargetError(f"targets table {path} is empty")
    header = [h.strip() for h in rows[0]]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise TargetError(f"targets table {path} names column {dupes[0]!r} twice")
    columns = {h: [] for h in header}
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise TargetError(f"{path}, line {lineno}: {len(row)} cells for {len(header)} columns")
        for h, cell in zip(header, row):
            cell = cell.strip()
            columns[h].append(cell or None)
    return columns


def _read_parquet(path: Path) -> dict[str, list]:
    try:
        import pyarrow.parquet as pq  # an optional extra: only parquet tables need it
    except ImportError:
        raise TargetError(f"reading {path} needs pyarrow: pip install 'featcache[parquet]', or save it as CSV") from None
    try:
        return pq.read_table(path).to_pydict()
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot read parquet table {path}: {str(exc).splitlines()[0]}") from None


# --------------------------------------------------------------------------- what each column is

def _cell(column: str, value):
    """``(type, value)`` of one cell: ``num`` (a float), ``text``, ``set`` (labels) or None (no value)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (numbers.Real, np.bool_)) and not isinstance(value, str):
        return "num", float(value)
    if isinstance(value, str):
        if "|" in value:
            return "set", tuple(sorted({p.strip() for p in value.split("|") if p.strip()}))
        try:
            return "num", float(value)
        except ValueError:
            return "text", value
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        labels = [v for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
        if not all(isinstance(v, str) and v for v in labels):
            raise TargetError(f"column {column!r}: a list of labels must hold text labels, got {value!r}")
        return "set", tuple(sorted(set(labels)))
    raise TargetError(f"column {column!r} holds a {type(value).__name__} ({value!r}); a target cell is a number, "
                      "text or a|b|c labels")


def _parse_column(column: str, values: list, kind: str | None) -> tuple[str, dict[int, object]]:
    """The kind of one column (``kind`` when given) and its cells by table row, checked."""
    cells = {i: c for i, c in ((i, _cell(column, v)) for i, v in enumerate(values)) if c is not None}
    if not cells:
        raise TargetError(f"column {column!r} is empty: no row has a value")
    types = {t for t, _ in cells.values()}
    first = {t: next(v for u, v in cells.values() if u == t) for t in types}
    if kind is None:
        if types == {"num", "text"}:
            raise TargetError(f"column {column!r} mixes numbers ({first['num']:g}) and text ({first['text']!r}); "
                              "pass --kind classification to read every cell as a class")
        kind = "multilabel" if "set" in types else "regression" if types == {"num"} else "classification"
    if kind == "regression" and types != {"num"}:
        other = next(t for t in types if t != "num")
        raise TargetError(f"column {column!r} holds {'a|b lists' if other == 'set' else 'text'} "
                          f"({first[other]!r}); a regression target needs numbers")
    if kind == "multilabel" and "num" in types:
        raise TargetError(f"column {column!r} mixes numbers ({first['num']:g}) and labels; a multi-label column "
                          "holds a|b|c lists (or give several 0/1 columns)")
    if kind == "classification" and "set" in types:
        raise TargetError(f"column {column!r} holds a|b lists ({first['set']!r}); pass --kind multilabel")
    if kind == "regression":
        bad = next((i for i, (_, v) in cells.items() if not math.isfinite(v)), None)
        if bad is not None:
            raise TargetError(f"column {column!r} has {cells[bad][1]} in row {bad + 1}; a regression target "
                              "needs finite numbers (leave the cell empty for no value)")
    return kind, {i: v for i, (_, v) in cells.items()}


def _class_text(value) -> str:
    return (str(int(value)) if float(value).is_integer() else repr(value)) if isinstance(value, float) else value


def _is_indicator(cells: dict) -> bool:
    return all(v in (0.0, 1.0) for v in cells.values())


@dataclass
class _Built:
    """One target made from a table, before it is written: only the rows that have a value."""

    name: str
    kind: str
    names: list
    columns: list
    ids: list
    values: np.ndarray


def build_targets(ids: list[str], columns: dict[str, list], *, name: str | None = None, kind: str | None = None,
                  stem: str | None = None) -> list[_Built]:
    """The targets a table makes (docs/TARGETS.md, inference): one per column, or one of several columns.

    ``name`` makes every column one target; without it, two or more columns all
    0/1 make one multi-label target named after the file (``stem``), and
    otherwise each column is a target named after it.
    """
    if kind is not None and kind not in KINDS:
        raise TargetError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if name is not None:
        safe_name(name)
    if name is None and len(columns) > 1 and kind in (None, "multilabel"):
        indicators = _indicator_columns(columns)
        if indicators is not None:
            if stem is None:
                raise TargetError("several 0/1 columns make one multi-label target: give it a name")
            return [_grouped(safe_name(stem.replace("-", "_"), "target name (the file's name)"), kind, ids,
                             indicators)]
    if name is not None and len(columns) > 1:
        return [_grouped(name, kind, ids, {c: _parse_column(c, v, None) for c, v in columns.items()})]
    parsed = {c: _parse_column(c, v, kind) for c, v in columns.items()}
    return [_single(name or safe_name(c, "column"), k, ids, c, cells) for c, (k, cells) in parsed.items()]


def _indicator_columns(columns: dict[str, list]) -> dict | None:
    """The parsed columns when every one is 0/1 numbers (one multi-label target), else None."""
    try:
        parsed = {c: _parse_column(c, v, None) for c, v in columns.items()}
    except TargetError:
        return None
    return parsed if all(k == "regression" and _is_indicator(cells) for k, cells in parsed.values()) else None


def _single(name: str, kind: str, ids: list[str], column: str, cells: dict) -> _Built:
    rows = sorted(cells)
    if kind == "regression":
        values = np.array([cells[i] for i in rows], np.float64).reshape(-1, 1)
        return _Built(name, kind, [column], [column], [ids[i] for i in rows], values)
    if kind == "classification":
        raw = {cells[i] for i in rows}
        ordered = sorted(raw, key=lambda v: (isinstance(v, str), v if isinstance(v, float) else 0, str(v)))
        names = list(dict.fromkeys(_class_text(v) for v in ordered))
        code = {n: k for k, n in enumerate(names)}
        values = np.array([code[_class_text(cells[i])] for i in rows], np.int64)
        return _Built(name, kind, names, [column], [ids[i] for i in rows], values)
    sets = {i: (cells[i],) if isinstance(cells[i], str) else cells[i] for i in rows}
    names = sorted({lab for s in sets.values() for lab in s})
    if not names:
        raise TargetError(f"column {column!r} lists no label in any row")
    code = {n: k for k, n in enumerate(names)}
    values = np.zeros((len(rows), len(names)), np.uint8)
    for r, i in enumerate(rows):
        values[r, [code[lab] for lab in sets[i]]] = 1
    return _Built(name, kind, names, [column], [ids[i] for i in rows], values)


def _grouped(name: str, kind: str | None, ids: list[str], parsed: dict) -> _Built:
    """Several numeric columns as one target: 0/1 indicators (multi-label) or outputs (multi-output regression)."""
    cols = list(parsed)
    text = [c for c, (k, _) in parsed.items() if k != "regression"]
    if text:
        raise TargetError(f"column {text[0]!r} is not numeric; several columns make one target only as numbers "
                          "(regression outputs) or 0/1 indicators (multi-label)")
    rows = set(parsed[cols[0]][1])
    for c in cols[1:]:
        if set(parsed[c][1]) != rows:
            odd = sorted(rows ^ set(parsed[c][1]))[0]
            raise TargetError(f"row {odd + 1} ({ids[odd]!r}) has a value in some of {name!r}'s columns but not in "
                              f"{c!r}; a row of a multi-column target has all its values or none")
    indicator = all(_is_indicator(cells) for _, cells in parsed.values())
    if kind is None:
        kind = "multilabel" if indicator else "regression"
    if kind == "classification" or kind == "multilabel" and not indicator:
        raise TargetError(f"{name!r} has several columns: it can be regression outputs or 0/1 multi-label "
                          f"indicators, not {kind}" + ("" if kind == "classification" else " of other numbers"))
    order = sorted(rows)
    values = np.array([[parsed[c][1][i] for c in cols] for i in order], _DTYPES[kind])
    return _Built(name, kind, cols, cols, [ids[i] for i in order], values)


def check_ids(ids: list[str], known: list[str], skipped: set[str]) -> None:
    """Every id once, and each one of the cache's (or one it skipped): a one-line TargetError otherwise."""
    seen, dupes = set(), []
    for i in ids:
        if i in seen:
            dupes.append(i)
        seen.add(i)
    if dupes:
        raise TargetError(f"{len(set(dupes))} ids appear more than once in the table (first: {dupes[0]!r}); "
                          "an item has one row")
    rows = set(known)
    unknown = [i for i in ids if i not in rows and i not in skipped]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:3])
        raise TargetError(f"{len(unknown)} ids are not in the cache (first: {shown}); the ids are those "
                          "`featcache info` and cache.ids() show")


# --------------------------------------------------------------------------- files

def _target_image(t: _Built) -> bytes:
    """The bytes of one target file, built in memory so that its sha256 is of what is written."""
    image = io.BytesIO()
    with h5py.File(image, "w", libver=("earliest", "v110")) as f:
        f.attrs["featcache_targets"] = 1
        f.attrs["name"], f.attrs["kind"] = t.name, t.kind
        f.create_dataset("ids", data=encode_strings(t.ids), dtype=STRING_DTYPE, shape=(len(t.ids),))
        f.create_dataset("values", data=t.values.astype(_DTYPES[t.kind], copy=False))
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
    if not isinstance(name, str) or not _NAME.match(name) or name == LABEL:
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
    if h5py.check_string_dtype(f["ids"].dtype) is None or f["values"].dtype != _DTYPES[rec["kind"]]:
        raise CacheError(f"its datasets are not text ids and {_DTYPES[rec['kind']]} values")
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
    """Delete target files and temporaries of ours that the index no longer lists (never anything else)."""
    remove_stale_temporaries(directory / TARGETS_INDEX)
    listed = {Path(r["file"]).name for r in records.values()}
    folder = directory / TARGETS_DIR
    for p in sorted(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []:
        if p.name not in listed and _is_our_target_file(p):
            p.unlink(missing_ok=True)
        elif _TEMPORARY.match(p.name):
            remove_stale_temporaries(folder / p.name.split(".tmp-")[0][1:])


def label_target(cache) -> Target:
    """The source's own label as a classification target (``-1``: unlabelled, no value)."""
    labels = cache.labels()
    return Target(LABEL, "classification", tuple(cache.class_names), labels, labels >= 0)


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
