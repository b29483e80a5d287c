"""Growing a cache in place: rows matched to earlier features by content digest, a new generation committed whole.

A cache whose images changed is rebuilt as a new *generation* of shards
(``shards/gN``) in the new source's order: each image whose digest some
donor cache holds (the cache itself, or caches named with ``--reuse``) takes
those features, bit for bit; the rest come from a staging cache the runner
extracted them into. The manifest naming the new generation is written
last, so a kill at any moment leaves the previous generation readable, and
:func:`~featcache.store.ownership.remove_stale` clears what the old one left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CacheError
from ..files import pause_point
from .cache import Cache
from .keys import key_differences
from .shards import ShardData
from .sink import CacheSink

#: what may differ between a cache and the plan that grows it: its images, and the shard size they are cut into
GROWABLE = {"dataset", "shard_size"}


def growable(old: dict | None, params: dict, fingerprint: str) -> bool:
    """Whether ``old`` is a complete cache that differs from this plan in its images alone."""
    if not old or not old.get("complete"):
        return False
    diffs = key_differences(old, params, fingerprint)
    return bool(diffs) and set(diffs) <= GROWABLE


def recalibrated(old: dict | None, params: dict, fingerprint: str) -> bool:
    """Whether ``old`` is a complete int8 cache that differs from this plan in its images and so in the
    calibration sample drawn from them: a grow that keeps ``old``'s graph (and calibration) is possible."""
    if not old or not old.get("complete") or not old.get("params", {}).get("calibration"):
        return False
    diffs = {k.split(".")[0] for k in key_differences(old, params, fingerprint)}
    return "calibration" in diffs and diffs <= GROWABLE | {"calibration"}


def donor_problem(cache: Cache, params: dict) -> str | None:
    """Why ``cache``'s features cannot stand in for this plan's, or None."""
    diffs = set(key_differences(cache.manifest, params, cache.manifest["dataset"].get("fingerprint"))) - GROWABLE
    if diffs:
        return f"it was made with other settings ({', '.join(sorted(diffs))})"
    if not cache.has_digests:
        return ("it was made before featcache recorded each image's digest; run its `featcache extract` once with "
                "--overwrite to record them")
    return None


@dataclass
class Match:
    """Where each new item's features come from: ``(donor, row)`` by item id, and what changed."""

    rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    unmatched: list = field(default_factory=list)
    removed: int = 0
    relabelled: int = 0
    moved: int = 0


def match(items, digests: list[str | None], donors: list[Cache], class_names: list[str], *, own: bool) -> Match:
    """Match each item to a donor row with its digest; with ``own``, donor 0 is the cache being grown (and counted)."""
    index: dict[str, tuple[int, int]] = {}
    for d, cache in enumerate(donors):
        for row, digest in enumerate(cache.digests()):
            index.setdefault(digest, (d, row))
    m = Match()
    mine = donors[0] if own else None
    own_ids, own_labels = (mine.ids(), mine.labels()) if mine else ([], [])
    ids_now = {it.id for it in items}
    for it, digest in zip(items, digests):
        hit = index.get(digest) if digest is not None else None
        if hit is None:
            m.unmatched.append(it)
            continue
        m.rows[it.id] = hit
        if mine is not None and hit[0] == 0:
            m.moved += own_ids[hit[1]] != it.id and own_ids[hit[1]] not in ids_now  # a copy is not a move
            m.relabelled += mine.class_name(int(own_labels[hit[1]])) != _name(class_names, it.label)
    used = {digest for digest in digests if digest is not None}
    m.removed = sum(d not in used for d in mine.digests()) if mine else 0
    return m


def view_rows(donors: list[Cache], items, digests: dict[str, str], views: int,
              recipe: str) -> dict[tuple[str, int], tuple[int, int]]:
    """``(item id, view) -> (donor, view row)``: each view a donor holds of the same bytes under the same id.

    A view is seeded by the item's id (featcache/augment.py), so a moved or renamed image's views are not
    the ones a cache built from nothing would hold: only an image at the same id with the same digest,
    made with the same recipe, takes them.
    """
    found: dict[tuple[str, int], tuple[int, int]] = {}
    for d, cache in enumerate(donors):
        if not cache.views or cache.augment != recipe:
            continue
        own = {item_id: (row, digest) for row, (item_id, digest) in enumerate(zip(cache.ids(), cache.digests()))}
        same = [it.id for it in items if it.id in own and own[it.id][1] == digests.get(it.id)]
        rows = [own[i][0] for i in same]
        for v in range(1, min(views, cache.views) + 1):
            for item_id, pos in zip(same, cache.view_positions(v, rows).tolist()):
                if pos >= 0:
                    found.setdefault((item_id, v), (d, pos))
    return found


def alpha_rows(cache: Cache) -> np.ndarray:
    """Per row of ``cache``: 1 its image had alpha, 0 it did not, -1 unknown (its shard counted both, or none)."""
    state = np.full(len(cache), -1, np.int8)
    for shard in cache.shards:
        count = cache.manifest_record(shard.index).get("alpha")
        if count == 0 or count == shard.n_rows:
            state[shard.rows[0]:shard.rows[1]] = int(count > 0)
    return state


def _name(names: list[str], label: int) -> str:
    return names[label] if 0 <= label < len(names) else str(label)


def write_generation(sink: CacheSink, shards: list[tuple[int, tuple[int, int], list, int]], sources: list[Cache],
                     rows: dict[str, tuple[int, int]], digests: dict[str, str], has_splits: bool,
                     reasons: dict[str, str], views: dict[tuple[str, int], tuple[int, int]] | None = None,
                     alpha: dict[str, bool] | None = None) -> None:
    """Write every shard of the new generation into ``sink`` (begun, manifest not saved) and commit each.

    ``shards`` are ``(index, item range, items, view)``; ``sources`` are the donors and the staging cache;
    ``rows`` maps an item id to ``(source, row)`` and ``views`` an ``(item id, view)`` to ``(source, view
    row)``; an item with no row is skipped (no view either), with its reason from ``reasons`` (the staging
    cache's skips); ``alpha`` says which images had alpha (None: not counted).
    """
    outputs = list(sink.manifest["outputs"])
    for index, item_range, items, view in shards:
        kept = [it for it in items if it.id in rows and (not view or (it.id, view) in views)]
        picks = [rows[it.id] if not view else views[(it.id, view)] for it in kept]
        feats = {name: _gather(sources, picks, name, view) for name in outputs}
        shard = ShardData(index, item_range, feats, np.array([it.label for it in kept], np.int64),
                          [it.id for it in kept], [it.split or "" for it in kept] if has_splits else None,
                          [(it.id, reasons.get(it.id, "not extracted")) for it in items if it.id not in rows],
                          alpha=None if alpha is None else sum(alpha[it.id] for it in kept), digests=[digests[it.id] for it in kept])
        sink.commit(sink.write(shard), shard, save=False)
        pause_point("grow:shard")


def _gather(sources: list[Cache], picks: list[tuple[int, int]], name: str, view: int = 0) -> np.ndarray:
    """The stored features of ``picks`` (``(source, row)``; rows of augmented ``view`` if > 0), bit-equal."""
    info = sources[0].output_info(name) if sources else None
    if info is None:
        raise CacheError("a grow needs at least one cache to take features from")
    out = np.empty((len(picks),) + tuple(info["shape"]), info["dtype"])
    picks_arr = np.array(picks, np.int64).reshape(-1, 2)
    for s in np.unique(picks_arr[:, 0]) if len(picks) else []:
        sel = np.flatnonzero(picks_arr[:, 0] == s)
        source = sources[int(s)]
        out[sel] = source.read_view_rows(view, picks_arr[sel, 1], name) if view else \
            source.read_rows(picks_arr[sel, 1], name).features
    return out


def compact(directory, *, wait: float = 0.0) -> tuple[int, int]:
    """Drop what no row of the cache at ``directory`` uses: earlier generations, staging caches, temporaries.

    Crash-safe: each file is removed on its own and only once proven featcache's, so a kill leaves a
    readable cache and the next call finishes. Returns (files removed, bytes freed).
    """
    from pathlib import Path

    from .lock import DirectoryLock
    from .manifest import read_manifest
    from .ownership import remove_stale, remove_temporaries

    directory = Path(directory)
    lock = DirectoryLock(directory, wait=wait).acquire()
    try:
        manifest = read_manifest(directory)
        if manifest is None or not manifest.get("complete"):
            raise CacheError(f"{directory} is not a complete featcache cache; finish it with `featcache extract` "
                             "before compacting")
        temporaries = remove_temporaries(directory)
        files, freed = remove_stale(directory, manifest)
    finally:
        lock.release()
    return files + temporaries, freed
