"""The similar-image index beside a cache: where it lives, what it is keyed to, and its proof before use.

The index (``similar/index.usearch`` in the cache directory) is a derived
file: :class:`featcache.derived.Entry` records its sha256 with the cache's
``rows_key``, key, row count, width and output, written after the index,
atomically. Before a query uses it, the file is hashed against the record and
the record against the cache; anything else (no record, a damaged or forged
file, a cache that grew or changed) is discarded with one line and rebuilt.
The index's own bytes are read only by its library, after this proof.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

from ..derived import Entry
from ..errors import CacheError, FeatcacheWarning
from ..files import atomic_save, pause_point, remove_stale_temporaries

#: the folder in a cache directory that holds the index and its record
INDEX_DIR = "similar"
INDEX_FILE = "index.usearch"
RECORD = "record.json"


def index_entry(cache) -> Entry:
    return Entry(Path(cache.path) / INDEX_DIR, [INDEX_FILE], RECORD, what="the similar-image index")


def index_path(cache) -> Path:
    return Path(cache.path) / INDEX_DIR / INDEX_FILE


def record_path(cache) -> Path:
    return Path(cache.path) / INDEX_DIR / RECORD


def expected_record(cache, output: str, settings: dict) -> dict:
    """What the record of an index of ``cache``'s rows of ``output`` built with ``settings`` must say."""
    return {"rows_key": cache.rows_key, "key": cache.key, "rows": len(cache), "output": output,
            "width": cache_width(cache, output), **settings}


def cache_width(cache, output: str) -> int:
    width = 1
    for n in cache.output_info(output)["shape"]:
        width *= int(n)
    return width


def proven_index(cache, output: str, settings: dict) -> Path | None:
    """The index's path when its bytes and its keys check out for ``cache`` now; else None (what was there
    removed, and one line says why)."""
    entry = index_entry(cache)
    record, damage = entry.check()
    if record is None:
        if damage:
            entry.discard(damage)
        return None
    want = expected_record(cache, output, settings)
    stale = {k: (record.get(k), v) for k, v in want.items() if record.get(k) != v}
    if stale:
        (name, (old, new)), *_ = stale.items()
        warnings.warn(f"the similar-image index {entry.paths()[0]} is stale ({name} was {old!r}, the cache has "
                      f"{new!r}); rebuilding it", FeatcacheWarning, stacklevel=2)
        entry.discard()
        return None
    return entry.paths()[0]


def write_index(cache, output: str, settings: dict, save: Callable[[Path], None]) -> Path:
    """Write the index with ``save(tmp)`` under a temporary name, rename it in, then seal its record (last):
    a kill at any point leaves an index without a valid record, which :func:`proven_index` refuses."""
    entry = index_entry(cache)
    path = entry.paths()[0]
    try:
        path.parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot write the similar-image index in {cache.path} ({exc.strerror or exc}); "
                         "use --index exact on a read-only cache") from None
    remove_stale_temporaries(path)  # a killed build's half-written index
    entry.discard()  # an old record must not outlive the file it vouched for
    atomic_save(path, save, suffix=Path(INDEX_FILE).suffix)
    pause_point("similar-index-before-record")
    entry.seal(expected_record(cache, output, settings))
    return path


def is_index_entry(p: Path) -> bool:
    """Whether ``p`` (in a cache directory) is the index folder, holding only featcache's names."""
    if p.name != INDEX_DIR or p.is_symlink() or not p.is_dir():
        return False
    return all(q.name in (INDEX_FILE, RECORD) or q.name.startswith(".") and ".tmp-" in q.name
               for q in p.iterdir())
