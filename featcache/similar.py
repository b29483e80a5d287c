"""Similar-image search over a cache: the nearest rows by cosine to an image, a row id or a vector.

Small caches are searched exactly (a blocked float32 matrix product over the
cache's rows, shard by shard). From :data:`ANN_ROWS` rows (or with
``index="ann"``) an approximate USearch HNSW index of float16 vectors is
built once from the shards, block by block, kept beside the cache as a
derived file (featcache/store/index_file.py: keyed to the cache's rows,
checksummed, rebuilt when stale or damaged) and memory-mapped for queries;
its cosines are those of the float16 vectors (within about 1e-3). docs/SEARCH.md
says why USearch, from measurements.

Sits above both stages: an image query goes through the cache's own
backbone settings by predict's feature path (:func:`featcache.predict.features_for`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
import weakref
from pathlib import Path

import numpy as np

from .errors import FeatcacheError, FeatcacheWarning
from .files import pause_point
from .params import Param, check, defaults
from .store import Cache, cache_width, index_path, open_cache, proven_index, record_path, write_index

#: rows from which ``index="auto"`` builds an approximate index (docs/SEARCH.md: exact search of 200k x 1,280
#: float16 rows takes about a second a query batch on 2 cores; the index answers in about a millisecond)
ANN_ROWS = 200_000
#: the index's build settings, part of its record: another setting is another index
ANN_SETTINGS = {"library": "usearch", "metric": "cos", "dtype": "f16", "connectivity": 16, "expansion_add": 128}
#: candidates the index keeps per query, at least (HNSW's ``ef``; 128 gave recall@10 0.948 at 100k rows, 256 0.972)
EXPANSION_SEARCH = 256
#: rows an exact search multiplies at a time (a block of float32 rows of 1,280 values: 40 MB)
BLOCK_ROWS = 8192
FORMATS = ("table", "csv", "json")
INDEXES = ("auto", "exact", "ann")
MISSING_USEARCH = "the approximate index needs usearch: pip install 'featcache[inspect]'"

#: every setting of :func:`similar` and ``featcache similar``, declared once
SIMILAR: tuple[Param, ...] = (
    Param("k", 10, "neighbours per query", int, minimum=1, maximum=100_000, spelling="-k"),
    Param("index", "auto", f"exact (every row), ann (an approximate index built once beside the cache) or auto "
          f"(ann from {ANN_ROWS:,} rows)", choices=INDEXES),
    Param("output", None, "which stored output (default: the first)", str),
    Param("cache_dir", None, "where query images' features go (default ~/.cache/featcache/predictions)", Path,
          pipeline=False),
    Param("format", "table", "how the neighbours are printed", choices=FORMATS, pipeline=False),
)
_D = defaults(SIMILAR)


def similar(cache, queries, k: int = _D["k"], *, index: str = _D["index"], output: str | None = _D["output"],
            cache_dir=_D["cache_dir"]) -> list[dict]:
    """The ``k`` rows of ``cache`` nearest by cosine to each query.

    Args:
        cache: a :class:`~featcache.Cache` or its directory.
        queries: one query or a list of them: an image file (extracted with the cache's own backbone
            settings), a row id (as ``cache.ids()`` shows), a ``.npy`` file of vectors, or a numpy array of
            the cache's width (one vector, or one per row).
        k: neighbours per query.
        index: ``exact``, ``ann`` or ``auto`` (``ann`` from :data:`ANN_ROWS` rows).
        output: which stored output (default: the first).
        cache_dir: where image queries' feature cache goes.

    Returns:
        One dict per query: ``query`` (what it was) and ``neighbours``, a list of dicts with ``rank``,
        ``row``, ``id``, ``label``, ``class`` and ``cosine``, nearest first.

    Examples:
        >>> featcache.similar("caches/mine", ["new.jpg", "train/cat/001.jpg"], k=5)  # doctest: +SKIP
    """
    check(SIMILAR, {"k": k, "index": index, "output": output, "cache_dir": cache_dir})
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    output = cache.output_name(output)
    names, vectors = query_vectors(cache, queries, output, cache_dir)
    k = min(k, len(cache))
    use_ann = index == "ann" or index == "auto" and len(cache) >= ANN_ROWS and _has_usearch(warn=True)
    rows, sims = (ann_search if use_ann else exact_search)(cache, vectors, k, output)
    return _results(cache, names, rows, sims)


#: each open cache's ids, labels and id positions, made once: a query costs no pass over a large cache's rows
_ROWS: "weakref.WeakKeyDictionary[Cache, tuple]" = weakref.WeakKeyDictionary()


def _row_columns(cache: Cache) -> tuple[list[str], np.ndarray, dict]:
    got = _ROWS.get(cache)
    if got is None or len(got[0]) != len(cache):
        ids = cache.ids()
        got = _ROWS[cache] = (ids, cache.labels(), {row_id: i for i, row_id in enumerate(ids)})
    return got


def _results(cache: Cache, names: list[str], rows: np.ndarray, sims: np.ndarray) -> list[dict]:
    ids, labels, _ = _row_columns(cache)
    out = []
    for name, r, s in zip(names, rows, sims):
        out.append({"query": name, "neighbours": [
            {"rank": i + 1, "row": int(row), "id": ids[row], "label": int(labels[row]),
             "class": cache.class_name(int(labels[row])) if labels[row] >= 0 else "", "cosine": float(c)}
            for i, (row, c) in enumerate(zip(r, s)) if np.isfinite(c)]})  # -inf: the index found fewer than k
    return out


# --------------------------------------------------------------------------- queries

def query_vectors(cache: Cache, queries, output: str, cache_dir=None) -> tuple[list[str], np.ndarray]:
    """``(names, unit float32 vectors)``: one row per query, in the order given."""
    width = cache_width(cache, output)
    if isinstance(queries, np.ndarray) or isinstance(queries, (str, os.PathLike)):
        queries = [queries]
    queries = list(queries)
    if not queries:
        raise FeatcacheError("give at least one query: an image file, a row id, or a vector")
    positions = _row_columns(cache)[2]
    names, parts = [], []
    for q in queries:
        if isinstance(q, np.ndarray):
            block = _as_vectors(q, width, "the query vector")
        elif str(q) in positions:
            block = _flat(cache.read_rows([positions[str(q)]], output).features)
        elif str(q).lower().endswith(".npy"):
            block = _as_vectors(_load_npy(Path(q)), width, str(q))
        elif Path(q).is_file():
            block = str(q)  # an image: extracted below, all of them in one run
        elif Path(q).is_dir():
            raise FeatcacheError(f"query {q} is a folder: give image files, row ids or .npy files")
        elif Path(q).exists() or os.sep in str(q) or Path(q).suffix:
            raise FeatcacheError(f"query {q}: no such image file")
        else:
            raise FeatcacheError(f"query {q!r} is neither a file nor a row id of {cache.path} (featcache info "
                                 "shows its ids)")
        name = "vector" if isinstance(q, np.ndarray) else str(q)
        one = isinstance(block, str) or len(block) == 1
        names += [name] if one else [f"{name}[{i}]" for i in range(len(block))]
        parts.append(block)
    files = list(dict.fromkeys(p for p in parts if isinstance(p, str)))
    if files:
        vectors = dict(zip(files, _image_vectors(cache, files, output, cache_dir)))
        parts = [vectors[p][None] if isinstance(p, str) else p for p in parts]
    return names, _unit(np.concatenate(parts).astype(np.float32), names)


def _flat(features: np.ndarray) -> np.ndarray:
    return features.reshape(len(features), -1)


def _as_vectors(a: np.ndarray, width: int, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "fiu" or a.ndim not in (1, 2) or a.shape[-1] != width:
        raise FeatcacheError(f"{what} has shape {a.shape} ({a.dtype}); this cache's vectors are {width} numbers "
                             "(one vector, or one per row)")
    a = a.reshape(-1, width).astype(np.float32)
    if not len(a):
        raise FeatcacheError(f"{what} holds no vectors")
    if not np.isfinite(a).all():
        raise FeatcacheError(f"{what} holds NaN or infinite values")
    return a


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FeatcacheError(f"query {path}: no such .npy file")
    try:
        return np.load(path, allow_pickle=False)  # a vector file is data: never a pickle
    except (OSError, ValueError) as exc:
        raise FeatcacheError(f"query {path} is not a numpy .npy array ({exc})") from None


def _unit(v: np.ndarray, names: list[str]) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1)
    if (norms == 0).any():
        raise FeatcacheError(f"query {names[int(np.argmin(norms))]} is a zero vector: it has no direction to compare")
    return v / norms[:, None]


def _image_vectors(cache: Cache, files: list[str], output: str, cache_dir) -> np.ndarray:
    """Features of image files through the cache's own backbone settings, as predict makes them."""
    from .predict import features_for

    card = {"features": {"params": cache.params, "dtype": cache.output_info(output)["dtype"],
                         "backbone_ref": cache.backbone_ref}}
    got = features_for(card, files, cache_dir=cache_dir)
    where = {row_id: i for i, row_id in enumerate(got.ids())}
    missing = [f for f in files if Path(f).as_posix() not in where]
    if missing:
        raise FeatcacheError(f"query {missing[0]} could not be read as an image")
    rows = [where[Path(f).as_posix()] for f in files]
    return _flat(got.read_rows(rows, output).features).astype(np.float32)


# --------------------------------------------------------------------------- exact search

def exact_search(cache: Cache, queries: np.ndarray, k: int, output: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cosines)``, each ``queries x k``, nearest first: every row, a block at a time, in float32."""
    best_rows = np.zeros((len(queries), 0), np.int64)
    best_sims = np.zeros((len(queries), 0), np.float32)
    start = 0
    for batch in cache.iter_batches(BLOCK_ROWS, output):
        block = _flat(batch.features).astype(np.float32)
        norms = np.linalg.norm(block, axis=1)
        block /= np.where(norms == 0, 1, norms)[:, None]  # an all-zero row has cosine 0 with everything
        sims = queries @ block.T
        rows = np.broadcast_to(np.arange(start, start + len(block)), sims.shape)
        best_rows, best_sims = _top(np.hstack([best_rows, rows]), np.hstack([best_sims, sims]), k)
        start += len(block)
    return best_rows, best_sims


def _top(rows: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if sims.shape[1] > k:
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        rows, sims = np.take_along_axis(rows, part, 1), np.take_along_axis(sims, part, 1)
    order = np.lexsort((rows, -sims), axis=1)  # ties: the earlier row first, as brute force lists them
    return np.take_along_axis(rows, order, 1), np.take_along_axis(sims, order, 1)


# --------------------------------------------------------------------------- approximate index

def _has_usearch(warn: bool = False) -> bool:
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        if warn:
            warnings.warn(f"{MISSING_USEARCH}; searching every row exactly instead", FeatcacheWarning, stacklevel=3)
        return False
    return True


def _usearch():
    try:
        from usearch.index import Index
    except ImportError:
        raise FeatcacheError(MISSING_USEARCH) from None
    return Index


def build_index(cache: Cache, output: str) -> Path:
    """Build the approximate index from the shards, block by block (the cache need not fit in memory)."""
    Index = _usearch()
    s = ANN_SETTINGS
    index = Index(ndim=cache_width(cache, output), metric=s["metric"], dtype=s["dtype"],
                  connectivity=s["connectivity"], expansion_add=s["expansion_add"])
    start = 0
    for batch in cache.iter_batches(BLOCK_ROWS, output):
        block = _flat(batch.features).astype(np.float32)
        index.add(np.arange(start, start + len(block), dtype=np.uint64), block)
        if not start:
            pause_point("similar-index-adding")  # the kill tests: a graph half built, only in memory
        start += len(block)
    return write_index(cache, output, ANN_SETTINGS, lambda tmp: index.save(str(tmp)))


#: the last index this process proved and mapped, by what it was proven for: hashed once a process, not per query
_OPENED: dict = {}


def _stamp(cache: Cache, output: str) -> tuple:
    """What must be unchanged for an index proven earlier in this process to stand: its file's and record's
    inode, size and mtime, and the cache's rows."""
    files = []
    for p in (index_path(cache), record_path(cache)):
        try:
            st = p.stat()
            files.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            files.append(None)
    return (str(cache.path), output, cache.rows_key, len(cache), *files)


def open_index(cache: Cache, output: str):
    """The proven index, memory-mapped (built first when missing, stale or damaged)."""
    Index = _usearch()
    stamp = _stamp(cache, output)
    if stamp in _OPENED:
        return _OPENED[stamp]
    path = proven_index(cache, output, ANN_SETTINGS) or build_index(cache, output)
    try:
        index = Index.restore(str(path), view=True)
    except (RuntimeError, ValueError, OSError) as exc:  # the sha256 matched but the library refuses the file
        raise FeatcacheError(f"the similar-image index {path} cannot be opened ({exc}); delete it to rebuild "
                             "it") from None
    _OPENED.clear()
    _OPENED[_stamp(cache, output)] = index
    return index


def ann_search(cache: Cache, queries: np.ndarray, k: int, output: str) -> tuple[np.ndarray, np.ndarray]:
    """The index's neighbours and cosines (of its float16 vectors: within about 1e-3 of the exact ones)."""
    index = open_index(cache, output)
    index.expansion_search = max(EXPANSION_SEARCH, 2 * k)
    found = index.search(queries, k)
    keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
    dist = np.asarray(found.distances, dtype=np.float32).reshape(len(queries), -1)
    counts = np.asarray(getattr(found, "counts", [keys.shape[1]])).reshape(-1)  # one query: Matches, no counts
    rows = np.zeros((len(queries), k), np.int64)
    sims = np.full((len(queries), k), -np.inf, np.float32)
    for i, n in enumerate(counts.astype(int)):
        r = keys[i, :n]
        if len(r) and (r.min() < 0 or r.max() >= len(cache)):  # the index is proven, its answers checked too
            raise FeatcacheError(f"the similar-image index of {cache.path} names rows the cache does not have; "
                                 "delete its similar/ folder to rebuild it")
        s = 1 - dist[i, :n]  # usearch's cosine distance is 1 - cosine
        order = np.lexsort((r, -s))
        rows[i, :n], sims[i, :n] = r[order], s[order]
    return rows, sims


# --------------------------------------------------------------------------- output

def render(results: list[dict], fmt: str) -> str:
    """The neighbours as CSV or JSON text (the table is the console's)."""
    flat = [{"query": r["query"], **n} for r in results for n in r["neighbours"]]
    if fmt == "json":
        return json.dumps(results, indent=1)
    from .files import spreadsheet_safe

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["query", "rank", "row", "id", "label", "class", "cosine"])
    for n in flat:
        w.writerow([spreadsheet_safe(n["query"]), n["rank"], n["row"], spreadsheet_safe(n["id"]), n["label"],
                    spreadsheet_safe(n["class"]), f"{n['cosine']:.6f}"])
    return buf.getvalue()
