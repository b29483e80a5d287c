"""``manifest.json``: reading and writing it, and the one declared schema (with bounds) it must satisfy."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..errors import CacheError, is_integer
from ..files import atomic_write_bytes
from .layout import FORMAT_VERSION, MANIFEST, STORAGE_DTYPES, base_shards, shard_file, shard_item_range


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(text)
    except RecursionError:
        raise CacheError(f"{path} is nested too deeply to be a featcache manifest; nothing was read or changed") from None
    except ValueError as exc:
        raise CacheError(f"{path} is not valid JSON ({exc}); run `featcache extract ... --overwrite` to rebuild") from None
    if not isinstance(manifest, dict) or "key" not in manifest:
        raise CacheError(f"{path} is not a featcache manifest")
    if not isinstance(manifest.get("format_version", 0), int) or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CacheError(f"{path} has format version {manifest['format_version']!r}; "
                         f"this featcache reads up to {FORMAT_VERSION}: upgrade featcache")
    problem = _manifest_problem(manifest)
    if problem:
        raise CacheError(f"{path} is damaged or not featcache's ({problem}); nothing was read or changed")
    return manifest


#: the parameters every manifest records (docs/FORMAT.md)
_PARAMS = ("backbone", "origin", "weights", "layer", "image_size", "preprocess", "pooling", "dtype",
           "compute_dtype", "shard_size")


#: the bounds a manifest's numbers must lie in: past them a cache is damaged, not big
MAX_ITEMS = 10**10
MAX_SHARD_SIZE = 10**7
MAX_VIEWS = 1000
MAX_SHARDS = 10**8
MAX_ROW_VALUES = 1 << 26  # values in one row of one output (a 64 x 64 x 16,384 feature map)
MAX_OUTPUT_DIMS = 4
MAX_IMAGE_SIDE = 1 << 16
MAX_GENERATION = 10**9
#: the manifest's numeric fields: (table, field) -> (minimum, maximum, required); the one declared schema
_MANIFEST_INTS = {
    ("params", "shard_size"): (1, MAX_SHARD_SIZE, True),
    ("dataset", "n_items"): (0, MAX_ITEMS, False),
    (None, "views"): (0, MAX_VIEWS, False),
    (None, "views_target"): (0, MAX_VIEWS, False),
    (None, "n_shards"): (0, MAX_SHARDS, False),
    (None, "target_shards"): (0, MAX_SHARDS, False),
    ("counts", "alpha"): (0, MAX_ITEMS, False),  # images composited on the background; absent before they were
    (None, "generation"): (0, MAX_GENERATION, False),  # how many times the cache grew; absent: 0
}
#: a shard record's numeric fields -> (minimum, maximum, required)
_RECORD_INTS = {"index": (0, MAX_SHARDS, True), "n_rows": (0, MAX_SHARD_SIZE, True), "bytes": (0, 1 << 50, True),
                "mtime_ns": (0, 1 << 80, False), "alpha": (0, MAX_SHARD_SIZE, False)}
_OUTPUT_NAME = re.compile(r"^[\w\-:][\w.\-:]*$")
#: the fields readers use as text or tables: path -> (the types it may have, their name); absent is fine
_MANIFEST_KINDS = {
    ("params", "weights", "kind"): ((str,), "text"),
    ("params", "weights", "sha256"): ((str,), "text"),
    ("backbone_ref",): ((dict, type(None)), "an object"),
    ("versions",): ((dict, type(None)), "an object"),
    ("timings",): ((dict, type(None)), "an object"),
    ("counts",): ((dict,), "an object"),
}


def _int_problem(table: dict, field: str, bounds: tuple, where: str) -> str | None:
    lo, hi, required = bounds
    if field not in table:
        return f"{where}{field} is missing" if required else None
    value = table[field]
    if not (is_integer(value) and lo <= value <= hi):
        return f"{where}{field} {value!r} is not an integer in {lo}..{hi:,}"
    return None


def _kind_problem(manifest: dict, path: tuple, kinds: tuple, what: str) -> str | None:
    table = manifest
    for name in path[:-1]:  # the tables on the way were checked to be objects before
        table = table[name]
    if path[-1] not in table or isinstance(table[path[-1]], kinds):
        return None
    return f"{'.'.join(path)} {table[path[-1]]!r:.60} is not {what}"


def _image_size_problem(size) -> str | None:
    if isinstance(size, list) and len(size) == 2 and all(is_integer(v) and 1 <= v <= MAX_IMAGE_SIDE for v in size):
        return None
    return f"params.image_size {size!r:.60} is not [height, width] of 1 to {MAX_IMAGE_SIDE:,} pixels"


def _outputs_problem(outputs: dict, complete: bool) -> str | None:
    if complete and not outputs:
        return "outputs is empty"
    for name, info in outputs.items():
        if not _OUTPUT_NAME.match(name) or not isinstance(info, dict):
            return f"output {name!r} is not a plain name with a shape and dtype"
        shape = info.get("shape")
        if not (isinstance(shape, list) and 1 <= len(shape) <= MAX_OUTPUT_DIMS
                and all(is_integer(d) and d > 0 for d in shape) and math.prod(shape) <= MAX_ROW_VALUES):
            return f"outputs.{name}.shape {shape!r} is not 1 to {MAX_OUTPUT_DIMS} positive integers " \
                   f"of at most {MAX_ROW_VALUES:,} values"
        if info.get("dtype") not in STORAGE_DTYPES:
            return f"outputs.{name}.dtype {info.get('dtype')!r} is not one of {', '.join(STORAGE_DTYPES)}"
    return None


def _record_problem(rec, shard_size: int, n_items: int, n_shards: int, generation: int = 0) -> str | None:
    """Why one shard record cannot be trusted, or None (``n_shards``: the most its layout allows)."""
    if not isinstance(rec, dict):
        return "a shard record is not an object"
    for field, bounds in _RECORD_INTS.items():
        problem = _int_problem(rec, field, bounds, "shard record ")
        if problem:
            return problem
    index, n = rec["index"], rec["n_rows"]
    if rec.get("file") != shard_file(index, generation):
        return f"shard {index} names the file {rec.get('file')!r}, not {shard_file(index, generation)}"
    if not isinstance(rec.get("digests", False), bool):
        return f"shard {index}: digests {rec.get('digests')!r} is not true or false"
    if index >= n_shards:
        return f"shard index {index} is past the {n_shards} shards its shard_size, n_items and views allow"
    items = rec.get("items")
    if items != list(shard_item_range(index, shard_size, n_items)) or not all(is_integer(v) for v in items):
        return f"shard {index}: items {items!r} is not [start, stop) of shard {index}"
    if n > items[1] - items[0]:
        return f"shard {index}: n_rows {n} is more than its {items[1] - items[0]} items"
    rows = rec.get("rows", [0, n])
    if not (isinstance(rows, list) and len(rows) == 2 and all(is_integer(v) and v >= 0 for v in rows)
            and rows[1] - rows[0] == n):
        return f"shard {index}: rows {rows!r} does not span its {n} rows"
    skipped = rec.get("skipped")  # every reader lists a shard's skipped items
    if not isinstance(rec.get("sha256"), str) or not isinstance(skipped, list) or not all(
            isinstance(s, dict) and isinstance(s.get("id"), str) and isinstance(s.get("reason"), str)
            for s in skipped):
        return f"shard {index}: sha256 or skipped is missing or has the wrong type"
    return None


def _manifest_problem(manifest: dict) -> str | None:
    """Why a parsed manifest cannot be trusted, or None.

    A cache directory can come from anyone (a tarball, a shared disk), so every
    path it names must be the canonical ``shards/NNNNN.h5`` of its own index
    (nothing a manifest says can make featcache read or delete a file
    elsewhere), every number must lie in the declared bounds above, and every
    field readers use as text or a table must be one (``_MANIFEST_KINDS``).
    """
    if not isinstance(manifest.get("key"), str):
        return "its key is not text"
    for name, kind in (("params", dict), ("dataset", dict), ("outputs", dict), ("shards", list)):
        if not isinstance(manifest.get(name), kind):
            return f"{name!r} is missing or not a {kind.__name__}"
    missing = [k for k in _PARAMS if k not in manifest["params"]]
    if missing or not isinstance(manifest["params"].get("weights"), dict):
        return f"params lacks {', '.join(missing) or 'a weights table'}"
    names = manifest["dataset"].get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and "\0" not in n for n in names):
        return "dataset.class_names is not a list of text without NUL (what every source writes)"
    for path, (kinds, what) in _MANIFEST_KINDS.items():
        problem = _kind_problem(manifest, path, kinds, what)
        if problem:
            return problem
    problem = _image_size_problem(manifest["params"]["image_size"])
    if problem:
        return problem
    for (table, field), bounds in _MANIFEST_INTS.items():
        problem = _int_problem(manifest.get(table, {}) if table else manifest, field, bounds,
                               f"{table}." if table else "")
        if problem:
            return problem
    problem = _outputs_problem(manifest["outputs"], bool(manifest.get("complete")))
    if problem:
        return problem
    shard_size, n_items = manifest["params"]["shard_size"], manifest["dataset"].get("n_items", 0)
    views = max(manifest.get("views", 0), manifest.get("views_target", 0))
    n_shards = base_shards(shard_size, n_items) * (1 + views)
    seen = set()
    for rec in manifest["shards"]:
        problem = _record_problem(rec, shard_size, n_items, n_shards, manifest.get("generation", 0))
        if problem:
            return problem
        if rec["index"] in seen:
            return f"shard {rec['index']} is listed twice"
        seen.add(rec["index"])
    return None


def write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_bytes(Path(directory) / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
