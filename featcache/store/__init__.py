"""The cache store: HDF5 shards, the manifest, the one-file view, the lock, and reading.

This package owns the on-disk contract described in docs/FORMAT.md. Writes
are atomic (temporary name, flush, fsync, rename, fsync of the directory),
so a shard or manifest is either complete or absent; a shard's rename is its
completion marker, and ``manifest.json`` with ``"complete": true`` is written
last. It knows nothing about models or images.

One role per module: :mod:`.layout` (file names and numbering), :mod:`.keys`
(the cache key), :mod:`.manifest` (the manifest and its declared schema),
:mod:`.lock`, :mod:`.shards` (shard files), :mod:`.proof` (proving a shard
plain before a byte of it is read), :mod:`.view` (``features.h5``),
:mod:`.ownership` (what featcache provably wrote), :mod:`.cache` (reading,
with :mod:`.rows` and :mod:`.augmented`), :mod:`.sink` (writing) and
:mod:`.resume` (a directory before a run), :mod:`.grow` (a new generation of rows matched by
content digest), :mod:`.targets` (targets beside
the features, from the tables :mod:`.target_tables` reads). The names below are the store's
public face: the rest of featcache imports them from here.
"""

from ..errors import CacheError, KeyMismatchError, LockedError, ReadOnlyError  # callers catch them as store.X
from ..files import sha256_path  # callers hash shards as store.sha256_path
from .cache import Cache, open_cache, split_masks
from .keys import cache_key, canonical_json, key_differences
from .layout import (COMPRESSIONS, FORMAT_VERSION, LOCK, MANIFEST, SHARDS, STORAGE_DTYPES, STRING_DTYPE, VIEW,
                     base_shards, decode_strings, encode_strings, shard_item_range, shard_name)
from .lock import DirectoryLock, is_our_lock
from .manifest import (MAX_ITEMS, MAX_OUTPUT_DIMS, MAX_ROW_VALUES, MAX_SHARD_SIZE, MAX_SHARDS, MAX_VIEWS,
                       read_manifest, write_manifest)
from .ownership import (clear_cache_files, foreign_entries, is_our_manifest, is_temporary, remove_stale,
                        remove_temporaries, shard_key, staging_name)
from .index_file import INDEX_DIR, cache_width, index_path, proven_index, record_path, write_index
from .grow import (Match, alpha_rows, compact, donor_problem, growable, match, recalibrated, view_rows,
                   write_generation)
from .proof import ShardSpec, open_shard
from .resume import claim, existing_shards, refresh_class_names, up_to_date
from .rows import FeatureBatch, ShardInfo
from .shards import ShardData, inspect_shard, shard_problems, write_shard
from .sink import CacheSink
from .view import bytes_per_image, view_problems, write_view
from .targets import KINDS, LABEL, Target, TargetError, attach_targets, read_targets, remove_targets

__all__ = [
    "CacheError", "KeyMismatchError", "LockedError", "ReadOnlyError", "sha256_path",
    "Cache", "open_cache", "split_masks", "cache_key", "canonical_json", "key_differences",
    "COMPRESSIONS", "FORMAT_VERSION", "LOCK", "MANIFEST", "SHARDS", "STORAGE_DTYPES", "STRING_DTYPE", "VIEW",
    "base_shards", "decode_strings", "encode_strings", "shard_item_range", "shard_name",
    "DirectoryLock", "is_our_lock",
    "MAX_ITEMS", "MAX_OUTPUT_DIMS", "MAX_ROW_VALUES", "MAX_SHARD_SIZE", "MAX_SHARDS", "MAX_VIEWS",
    "read_manifest", "write_manifest",
    "clear_cache_files", "foreign_entries", "is_our_manifest", "is_temporary", "remove_stale", "remove_temporaries",
    "shard_key", "staging_name", "INDEX_DIR", "cache_width", "index_path", "proven_index", "record_path",
    "write_index", "Match", "alpha_rows", "compact", "donor_problem", "growable", "match", "recalibrated", "view_rows", "write_generation",
    "ShardSpec", "open_shard", "claim", "existing_shards", "refresh_class_names", "up_to_date",
    "FeatureBatch", "ShardInfo", "ShardData", "inspect_shard", "shard_problems", "write_shard", "CacheSink",
    "bytes_per_image", "view_problems", "write_view",
    "KINDS", "LABEL", "Target", "TargetError", "attach_targets", "read_targets", "remove_targets",
]
