"""A cache directory before a run: claiming it, the shards already there, and whether it is up to date."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CacheError, KeyMismatchError
from .keys import key_differences
from .layout import SHARDS, generation_dir, shard_item_range
from .manifest import write_manifest
from .ownership import clear_cache_files, foreign_entries, shard_key
from .proof import ShardSpec, open_shard
from .shards import inspect_shard, shard_problems
from .view import view_problems


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
    generation = int((old or {}).get("generation", 0)) if (old or {}).get("key") == key else 0
    shard_dir = directory / generation_dir(generation)
    if shard_dir.is_dir() and not shard_dir.is_symlink():
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
                done[index] = inspect_shard(p, key, index, item_range, generation)
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
