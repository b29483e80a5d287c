"""Reading a cache: :class:`Cache`, the one reader of ``manifest.json``, its batches and shards, and ``open_cache``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ..errors import CacheError, check_integer
from ..splits import SPLIT_NAMES, TEST_FRACTION, VAL_FRACTION, assign_splits
from .augmented import AugmentedViews
from .keys import canonical_json
from .layout import MANIFEST, base_shards, decode_strings
from .manifest import read_manifest
from .proof import ShardSpec, open_shard
from .rows import FeatureBatch, ShardInfo
from .shards import shard_problems
from .targets import Target, read_target, read_targets, targets_summary
from .view import view_problems


class Cache(AugmentedViews):
    """A feature cache directory opened for reading.

    Rows come in source order (skipped items left out), not shuffled and not
    grouped by split: a folder source lists its images class by class. Only
    shards listed in the manifest are read, so a reader never sees a
    half-written shard. This class is the one reader of ``manifest.json``:
    everything else asks it (:attr:`shards`, :meth:`output_info`,
    :attr:`source_address`, ...), so the manifest's layout matters to the
    store and docs/FORMAT.md alone.

    Args:
        path: the cache directory (what ``featcache extract`` wrote).
        allow_partial: open an unfinished cache (its finished shards only).
        max_load_bytes: make :meth:`features` refuse to load more than this
            into memory; stream with :meth:`iter_batches` instead.
        target: a classification target attached to the cache (``featcache targets``) to read as the
            labels: :meth:`labels`, :attr:`class_names`, the splits' labelled rows and :attr:`rows_key` are
            then that target's, so every classification head, bench, train and predict learns it.

    Examples:
        >>> cache = featcache.open_cache("caches/fm")          # doctest: +SKIP
        >>> X, y = cache.features(), cache.labels()            # doctest: +SKIP
        >>> for shard in cache.shards:                         # doctest: +SKIP
        ...     batch = cache.read_shard(shard)
    """

    def __init__(self, path: str | os.PathLike, *, allow_partial: bool = False, max_load_bytes: int | None = None,
                 target: str | None = None):
        self.path = Path(path)
        self.max_load_bytes = max_load_bytes
        self._target = None if target in (None, "label") else str(target)
        self._target_names: list[str] | None = None
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
        self._rows_key: str | None = None
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
    def manifest_record(self, index: int) -> dict:
        """The manifest's record of shard ``index`` (a copy)."""
        return dict(self._records[int(index)])

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
        if self._target is not None:
            self._columns()
            return list(self._target_names)
        return self.source_class_names

    @property
    def source_class_names(self) -> list[str]:
        """The source's own class names (the ``label`` target's), whichever target the cache was opened with."""
        return list(self.manifest["dataset"].get("class_names", []))

    @property
    def target_name(self) -> str:
        """The classification target read as the labels: ``label`` (the source's own) unless opened with another."""
        return self._target or "label"

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
    def alpha_count(self) -> int | None:
        """Images that had transparency (composited on the background); None: unfinished, or made before it was counted."""
        return (self.manifest.get("counts") or {}).get("alpha")

    @property
    def generation(self) -> int:
        """How many times the cache grew in place (0: extracted in one go); its shards live in ``shards/gN``."""
        return int(self.manifest.get("generation", 0))

    @property
    def calibration_ids(self) -> tuple[str, ...] | None:
        """int8: the ids of the images its graph was calibrated on; None for another precision, or a cache made
        before they were recorded. The key's calibration record is their digest: a plan made with them checks it."""
        ids = self.manifest.get("calibration_images")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return None
        return tuple(ids)

    @property
    def has_digests(self) -> bool:
        """Whether every row records its image's content digest (caches made before digests do not: they cannot grow)."""
        return all(r.get("digests") for r in self._all_shards)

    def digests(self) -> list[str]:
        """Each row's content digest (sha256 hex of the image file's or the array's bytes), in row order."""
        if not self.has_digests:
            raise CacheError(f"{self.path} was made before featcache recorded each image's digest; run its "
                             "`featcache extract` once with --overwrite to record them")
        out: list[str] = []
        for shard in self.shards:
            with self._open(shard) as f:
                raw = np.frombuffer(f["digests"][:].tobytes(), np.uint8).reshape(-1, 32)  # numpy drops trailing NULs of S32 items
                out += [r.tobytes().hex() for r in raw]
        return out

    @property
    def rows_key(self) -> str:
        """What a head trained on this cache learns from, besides its own settings: the extractor's settings and
        each row's id, label, split and image digest, in row order.

        A grow that changes no row keeps it although the cache key changes (a touched or copied file changes the
        key, not the features), so cards and bench rows stay current; a cache made before digests falls back to
        its key.
        """
        if self._rows_key is None:
            params = {k: v for k, v in self.params.items() if k != "shard_size"}  # how rows are filed, not what
            h = hashlib.sha256(canonical_json({"params": params, "classes": self.class_names,
                                               "key": None if self.has_digests else self.key}).encode())
            cols = self._columns()
            for name in ("ids", "split"):  # surrogateescape: ids keep a file name's undecodable bytes
                h.update(b"\0".join(v.encode("utf-8", "surrogateescape") for v in cols[name] or []) + b"\1")
            h.update(cols["labels"].astype("<i8").tobytes())
            if self.has_digests:
                for shard in self.shards:
                    with self._open(shard) as f:
                        h.update(f["digests"][:].tobytes())
            self._rows_key = h.hexdigest()[:16]
        return self._rows_key

    @property
    def n_shards_done(self) -> int:
        """Shards written so far, views' included (:attr:`n_shards` when complete)."""
        return len(self._all_shards)

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
            labels = f["labels"][:].astype(np.int64) if self._target is None else self.labels()[slice(*shard.rows)]
            return FeatureBatch(f["features"][name][:], labels,
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
            self._row_columns["source_labels"] = self._row_columns["labels"]
            if self._target is not None:  # after the ids are known: the target is aligned to them
                t = read_target(self, self._target)
                if t.kind != "classification":
                    raise CacheError(f"target {self._target!r} of {self.path} is {t.kind}; only a classification "
                                     "target can be read as the labels (train or bench it with --target)")
                self._target_names = [str(n) for n in t.names]
                self._row_columns["labels"] = t.values.astype(np.int64)
        return self._row_columns

    def labels(self) -> np.ndarray:
        return self._columns()["labels"].copy()

    def source_labels(self) -> np.ndarray:
        """The source's own labels (the ``label`` target), whichever target the cache was opened with."""
        return self._columns()["source_labels"].copy()

    def with_target(self, target: str | None) -> "Cache":
        """This cache opened again with ``target`` (a classification target's name, or ``label``) as its labels."""
        return Cache(self.path, allow_partial=not self.complete, max_load_bytes=self.max_load_bytes, target=target)

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

    # -- targets: tables keyed by item id, in their own files beside the features (store/targets.py)
    def targets(self) -> dict[str, Target]:
        """Every target, aligned to the rows: ``label`` (the source's own) first, then the attached ones."""
        return read_targets(self)

    def target(self, name: str = "label") -> Target:
        """One target (kind, value names, values and the mask of rows with a value), aligned to the rows."""
        return read_target(self, name)

    def targets_summary(self) -> str:
        """Every target with its kind and coverage, on one line (what ``featcache info`` shows)."""
        return targets_summary(self)

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


def open_cache(path: str | os.PathLike, *, allow_partial: bool = False, max_load_bytes: int | None = None,
               target: str | None = None) -> Cache:
    """Open a cache directory written by :func:`featcache.extract`.

    ``max_load_bytes`` makes :meth:`Cache.features` refuse to load more than
    that into memory (a guard for caches larger than RAM). ``target``: a
    classification target to read as the labels (see :class:`Cache`).
    """
    return Cache(path, allow_partial=allow_partial, max_load_bytes=max_load_bytes, target=target)
