"""``features.h5``, the one-file view: virtual datasets over the plain shards, and checking it maps only to them."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np

from ..errors import CacheError
from ..files import atomic_write_bytes
from ..splits import SPLIT_NAMES
from .layout import FORMAT_VERSION, STRING_DTYPE, VIEW, base_shards, encode_strings
from .proof import check_members


def view_problems(directory: Path, manifest: dict) -> list[str]:
    """What is wrong with ``features.h5`` ([] if fine): it may map only to this cache's own plain shards."""
    path = Path(directory) / VIEW
    if path.is_symlink() or not path.is_file():
        return [f"{VIEW}: missing"]
    n_base = base_shards(manifest["params"]["shard_size"], manifest["dataset"].get("n_items", 0))
    plain = {s["file"] for s in manifest["shards"] if s["index"] < n_base}
    outputs = set(manifest["outputs"])
    extra = {"split"} if manifest["dataset"].get("has_splits") else set()
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("cache_key") != manifest["key"]:
                raise CacheError("it belongs to another cache")
            check_members(f, {"features", "labels", "ids"} | extra, {"features", "labels", "ids"} | extra)
            check_members(f["features"], outputs, outputs)
            for name in [f"features/{n}" for n in outputs] + ["labels", "ids"] + sorted(extra):
                ds = f[name]
                if ds.id.get_create_plist().get_external_count() or not ds.is_virtual:
                    raise CacheError(f"/{name} is not a virtual dataset over the shards")
                for src in ds.virtual_sources():
                    if src.file_name not in plain or src.dset_name.lstrip("/") != name:
                        raise CacheError(f"/{name} maps to {src.file_name}:{src.dset_name}, not to this cache's shards")
    except CacheError as exc:
        return [f"{VIEW}: {exc}; re-run the same `featcache extract` to rebuild it"]
    except Exception as exc:  # noqa: BLE001 - whatever HDF5 makes of a forged file
        return [f"{VIEW}: not readable ({exc})"]
    return []


def bytes_per_image(outputs: dict) -> int:
    """What one row's stored features take, every output together, from ``{name: {"shape", "dtype"}}``."""
    return sum(int(np.prod(v["shape"])) * np.dtype(v["dtype"]).itemsize for v in outputs.values())


def write_view(directory: Path, manifest: dict) -> None:
    """Write features.h5: virtual datasets that stitch every shard of the plain view, in row order."""
    directory = Path(directory)
    n_base = base_shards(manifest["params"]["shard_size"], manifest["dataset"].get("n_items", 0))
    shards = sorted((s for s in manifest["shards"] if s["index"] < n_base), key=lambda s: s["index"])  # plain view
    total = sum(s["n_rows"] for s in shards)
    image = io.BytesIO()  # built in memory, written atomically like the manifest
    with h5py.File(image, "w", libver=("earliest", "v110")) as out:
        out.attrs["featcache_format"] = FORMAT_VERSION
        out.attrs["cache_key"] = manifest["key"]
        out.attrs["n_rows"] = total
        # what a reader of this one file needs to make sense of /labels and /split (label i is class_names[i])
        out.attrs.create("class_names", encode_strings(manifest["dataset"].get("class_names") or []),
                         dtype=STRING_DTYPE)
        out.attrs.create("split_names", encode_strings(list(SPLIT_NAMES) if manifest["dataset"].get("has_splits")
                                                       else []), dtype=STRING_DTYPE)
        out.attrs["note"] = ("virtual datasets: the rows live in shards/NNNNN.h5 beside this file, so a copy of "
                             "features.h5 alone reads as zeros; copy the whole cache directory")
        names = [f"features/{n}" for n in manifest["outputs"]] + ["labels", "ids"]
        if manifest["dataset"].get("has_splits"):
            names.append("split")
        for name in names:
            if name.startswith("features/"):
                info = manifest["outputs"][name.split("/", 1)[1]]
                shape, dtype = tuple(info["shape"]), info["dtype"]
            else:
                shape, dtype = (), (np.int64 if name == "labels" else STRING_DTYPE)
            layout = h5py.VirtualLayout(shape=(total,) + shape, dtype=dtype)
            row = 0
            for s in shards:
                n = s["n_rows"]
                if n:
                    layout[row:row + n] = h5py.VirtualSource(s["file"], name, shape=(n,) + shape)
                row += n
            out.create_virtual_dataset(name, layout)
    atomic_write_bytes(directory / VIEW, image.getvalue())
