"""Writing a cache: :class:`CacheSink`, the manifest's life from begin to the completion marker."""

from __future__ import annotations

import collections
import errno
import shutil
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from ..errors import CacheError
from .layout import FORMAT_VERSION, base_shards
from .manifest import write_manifest
from .shards import ShardData, write_shard
from .view import write_view


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
                 n_items: int = 0, generation: int = 0):
        self.directory = Path(directory)
        self.key, self.dtype, self.compression, self.n_items = key, dtype, compression, int(n_items)
        #: the shard generation written (``shards/gN``): a grown cache's repairs and new views go beside its rows
        self.generation = int(generation)
        self.manifest: dict | None = None
        #: called once with the outputs' ``{name: {"shape", "dtype"}}`` as soon as they are known (the driver's)
        self.on_outputs = None

    def worker_copy(self) -> "CacheSink":
        """The same sink without the manifest: what a worker needs to write shards."""
        return CacheSink(self.directory, key=self.key, dtype=self.dtype, compression=self.compression,
                         n_items=self.n_items, generation=self.generation)

    # -- any process
    def write(self, shard: ShardData) -> dict:
        """Write one finished shard atomically; returns its manifest record."""
        return self._disk_full_guard(shard, lambda: write_shard(self.directory, shard, key=self.key,
                                                                dtype=self.dtype, compression=self.compression,
                                                                generation=self.generation))

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
              shards: list[dict], old: dict | None, save: bool, views: int = 0, augment: str | None = None,
              calibration: tuple[str, ...] | None = None) -> dict:
        """Start (or resume) the manifest with the shards already on disk; ``save`` writes it now.

        ``views`` augmented views per train image (made with the recipe
        ``augment``) are recorded beside the plain view; they are not part of
        the key, so a later run may add more. A complete cache gaining views
        stays complete, and readable with the views it had, until
        :meth:`finish` records the new ones (``views_target`` says how many
        are on their way). ``calibration``: the ids of the images an int8
        graph was calibrated on, which a grow needs to keep that graph.
        """
        finished = {r["index"] for r in (old or {}).get("shards", []) if r["index"] < (old or {}).get("n_shards", 0)}
        same = old is not None and old["key"] == self.key
        self.generation = int(old.get("generation", 0)) if same else 0
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
            **({"calibration_images": list(calibration)} if calibration else {}),
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

    def commit(self, record: dict, shard: ShardData | None = None, *, save: bool = True) -> None:
        """Add a written shard's record to the manifest and save it (``save=False``: a grow, committed by finish)."""
        kept = [s for s in self.manifest["shards"] if s["index"] != record["index"]]  # a repaired shard's old record
        self.manifest["shards"] = sorted(kept + [record], key=lambda s: s["index"])
        if not self.manifest["outputs"] and record["n_rows"]:  # engines that never built the model here
            self.manifest["outputs"] = self._outputs_from_shards([record])
            self._announce()
        if not save:
            return
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
        if all("alpha" in s for s in plain):  # a shard written before images were composited has no count
            counts["alpha"] = sum(int(s["alpha"]) for s in plain)
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
