"""What in a cache directory featcache can prove it wrote (temporaries, shards, view, manifest), and clearing it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py

from ..errors import CacheError
from ..files import pause_point
from .layout import LOCK, MANIFEST, SHARDS, VIEW, generation_dir
from .index_file import is_index_entry
from .lock import is_our_lock
from .targets import target_entry_foreign


#: what featcache's own temporary files are called: ``.manifest.json.tmp-PID``, ``.00012.h5.tmp-PID``, ...
_TEMPORARY = re.compile(r"^\.(manifest\.json|features\.h5|\d{5,}\.h5)\.tmp-\d+$")
_SHARD_FILE = re.compile(r"^\d{5,}\.h5$")  # five digits, more past shard 99,999 (augmented views)
#: a grown cache's shard generation, ``shards/gN`` (docs/FORMAT.md)
_GENERATION = re.compile(r"^g\d+$")
#: where a grow extracts the new images before they join the rows: ``.grow-`` and the new key's first 12 hex digits
_STAGING = re.compile(r"^\.grow-[0-9a-f]{12}$")


def staging_name(key: str) -> str:
    """The staging cache a grow to ``key`` extracts its new images into (kept across a kill, so it resumes)."""
    return f".grow-{key[:12]}"


def _shard_dirs(directory: Path) -> list[Path]:
    """``shards/`` and its generation folders (real folders only, never links)."""
    top = Path(directory) / SHARDS
    if not top.is_dir() or top.is_symlink():
        return []
    return [top] + sorted(p for p in top.iterdir() if _GENERATION.match(p.name) and p.is_dir() and not p.is_symlink())


def is_temporary(path: Path) -> bool:
    """A temporary file featcache's atomic writers make (``.NAME.tmp-PID``), and nothing else."""
    return bool(_TEMPORARY.match(path.name)) and path.is_file() and not path.is_symlink()


def remove_temporaries(directory: Path) -> int:
    """Delete temporary files left by killed writers; return how many."""
    count = 0
    for d in [Path(directory)] + _shard_dirs(directory):
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
        theirs = target_entry_foreign(p)  # targets.json and targets/: store/targets.py knows what is ours there
        if theirs is not None:
            foreign += theirs
            continue
        if is_index_entry(p):  # similar/: the derived search index (store/index_file.py)
            continue
        if p.name == SHARDS and p.is_dir() and not p.is_symlink():
            foreign += _foreign_shards(p, f"{SHARDS}/")
            continue
        if _STAGING.match(p.name) and p.is_dir() and not p.is_symlink():
            foreign += [f"{p.name}/{q}" for q in foreign_entries(p)]  # a staging cache: ours when all it holds is
            continue
        foreign.append(p.name)
    return foreign


def _foreign_shards(shard_dir: Path, prefix: str) -> list[str]:
    """What in a shards folder (or a generation folder in it) is not a featcache shard or temporary."""
    foreign = []
    for q in sorted(shard_dir.iterdir()):
        if prefix == f"{SHARDS}/" and _GENERATION.match(q.name) and q.is_dir() and not q.is_symlink():
            foreign += _foreign_shards(q, f"{prefix}{q.name}/")
        elif not is_temporary(q) and shard_key(q) is None:
            foreign.append(f"{prefix}{q.name}")
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
    for staging in _staging_dirs(directory):
        if not any(k.startswith(f"{staging.name}/") for k in kept):
            shutil.rmtree(staging)
    for shard_dir in reversed(_shard_dirs(directory)):  # generation folders first, then shards/
        rel = shard_dir.relative_to(directory).as_posix()
        for p in shard_dir.iterdir():
            if p.is_file() and f"{rel}/{p.name}" not in kept:
                p.unlink(missing_ok=True)
        if not any(shard_dir.iterdir()):
            shard_dir.rmdir()
    return kept


def _staging_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).iterdir() if _STAGING.match(p.name) and p.is_dir() and not p.is_symlink())


def remove_stale(directory: Path, manifest: dict, *, keep_staging: str | None = None) -> tuple[int, int]:
    """Delete what no row of the complete cache ``manifest`` uses: other generations' shards, staging caches.

    Each file is proven ours first (a shard with featcache's attributes, a staging folder holding only
    featcache's files), and each is removed on its own, so a kill part-way leaves a readable cache and the
    next call finishes the job. Returns (files removed, bytes freed).
    """
    directory = Path(directory)
    current = directory / generation_dir(int(manifest.get("generation", 0)))
    listed = {directory / r["file"] for r in manifest.get("shards", [])}
    files = bytes_freed = 0
    for shard_dir in _shard_dirs(directory):
        if shard_dir == current:
            continue
        for p in sorted(shard_dir.iterdir()):
            if p in listed or not (is_temporary(p) or shard_key(p) is not None):
                continue
            bytes_freed += p.stat().st_size
            p.unlink()
            files += 1
            pause_point("compact:file")
        if shard_dir != directory / SHARDS and not any(shard_dir.iterdir()):
            shard_dir.rmdir()
    for staging in _staging_dirs(directory):
        if staging.name == keep_staging or foreign_entries(staging):
            continue
        bytes_freed += sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and not p.is_symlink())
        files += 1
        shutil.rmtree(staging)
        pause_point("compact:file")
    return files, bytes_freed
