"""Reading a targets table (CSV, parquet or a mapping) and inferring the targets it makes (docs/TARGETS.md).

The rules: numbers make a regression target, ``a|b|c`` lists (or several 0/1
columns) a multi-label one, anything else a classification; every problem is a
one-line :class:`TargetError` naming the column, row or id. Nothing here
touches a cache directory: :mod:`.targets` writes what this module builds.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import FeatcacheError

KINDS = ("classification", "regression", "multilabel")
#: the source's own label: the default target, read from the shards, never attached
LABEL = "label"
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: what each kind's values are stored as (docs/TARGETS.md)
DTYPES = {"classification": np.dtype(np.int64), "regression": np.dtype(np.float64),
           "multilabel": np.dtype(np.uint8)}


class TargetError(FeatcacheError):
    """A targets table cannot be attached as it is (the message names the column, id or name)."""


def safe_name(name, what: str = "target name") -> str:
    """``name`` when it is a safe identifier other than ``label``; a one-line TargetError otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
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
        raise TargetError(f"targets table {source} has no {id_column!r} column "
                          f"(it has {', '.join(columns) or 'none'}); pass --id-column")
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
        raise TargetError(f"reading {path} needs pyarrow: pip install 'featcache[parquet]', or save it as CSV") \
            from None
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
class Built:
    """One target made from a table, before it is written: only the rows that have a value."""

    name: str
    kind: str
    names: list
    columns: list
    ids: list
    values: np.ndarray


def build_targets(ids: list[str], columns: dict[str, list], *, name: str | None = None, kind: str | None = None,
                  stem: str | None = None) -> list[Built]:
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


def _single(name: str, kind: str, ids: list[str], column: str, cells: dict) -> Built:
    rows = sorted(cells)
    if kind == "regression":
        values = np.array([cells[i] for i in rows], np.float64).reshape(-1, 1)
        return Built(name, kind, [column], [column], [ids[i] for i in rows], values)
    if kind == "classification":
        raw = {cells[i] for i in rows}
        ordered = sorted(raw, key=lambda v: (isinstance(v, str), v if isinstance(v, float) else 0, str(v)))
        names = list(dict.fromkeys(_class_text(v) for v in ordered))
        code = {n: k for k, n in enumerate(names)}
        values = np.array([code[_class_text(cells[i])] for i in rows], np.int64)
        return Built(name, kind, names, [column], [ids[i] for i in rows], values)
    sets = {i: (cells[i],) if isinstance(cells[i], str) else cells[i] for i in rows}
    names = sorted({lab for s in sets.values() for lab in s})
    if not names:
        raise TargetError(f"column {column!r} lists no label in any row")
    code = {n: k for k, n in enumerate(names)}
    values = np.zeros((len(rows), len(names)), np.uint8)
    for r, i in enumerate(rows):
        values[r, [code[lab] for lab in sets[i]]] = 1
    return Built(name, kind, names, [column], [ids[i] for i in rows], values)


def _grouped(name: str, kind: str | None, ids: list[str], parsed: dict) -> Built:
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
    values = np.array([[parsed[c][1][i] for c in cols] for i in order], DTYPES[kind])
    return Built(name, kind, cols, cols, [ids[i] for i in order], values)


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
