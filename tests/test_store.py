"""featcache/store: reading a cache (rows, batches, splits), its shards and one-file view, the manifest, the lock.

Forged and damaged caches are tests/test_store_trust.py's; what in a directory is featcache's, test_ownership.py's.
"""

import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest

import featcache
from featcache import store
from featcache.errors import CacheError, FeatcacheError, LockedError

from conftest import TINY


def test_iter_batches_streams_the_same_rows(fm_cache):
    out, _ = fm_cache
    cache = featcache.open_cache(out)
    batches = list(cache.iter_batches(100))
    assert [len(b.ids) for b in batches] == [100] * 6
    np.testing.assert_array_equal(np.concatenate([b.features for b in batches]), cache.features())
    assert [i for b in batches for i in b.ids] == cache.ids()


def test_direct_byte_reads_equal_hdf5_reads_for_plain_and_compressed_shards(fm_cache, tmp_path):
    out, _ = fm_cache
    cache = featcache.open_cache(out)
    with h5py.File(out / "shards" / "00000.h5", "r") as f:
        ds = f["features/avg"]
        assert ds.chunks is None and ds.id.get_offset() is not None  # contiguous: the fast path applies
        np.testing.assert_array_equal(ds[:], cache.features()[:256])  # HDF5's own read of the same rows
    lzf = featcache.extract("fashion_mnist:test", out=tmp_path / "lzf", first=600, shard_size=256, compression="lzf",
                            **TINY)
    with h5py.File(tmp_path / "lzf" / "shards" / "00000.h5", "r") as f:
        assert f["features/avg"].compression == "lzf" and f["features/avg"].id.get_offset() is None
    np.testing.assert_array_equal(lzf.features(), cache.features())
    # a shard cut short behind HDF5's back is an error, never rows of zeros
    shard = out / "shards" / "00001.h5"
    data = shard.read_bytes()
    copy = tmp_path / "cut"
    shutil.copytree(out, copy)
    (copy / "shards" / "00001.h5").write_bytes(data[:len(data) - 200_000])
    with pytest.raises(CacheError):
        featcache.open_cache(copy).features()


def test_one_file_view_slices_across_shards(fm_cache):
    out, _ = fm_cache
    cache = featcache.open_cache(out)
    with h5py.File(out / "features.h5", "r") as f:
        assert f["features/avg"].is_virtual
        np.testing.assert_array_equal(f["features/avg"][250:260], cache.features()[250:260])
        np.testing.assert_array_equal(f["labels"][:], cache.labels())
        assert [x.decode() for x in f["ids"][255:257]] == cache.ids()[255:257]


def test_the_one_file_view_names_its_classes_and_splits(tmp_path):
    import h5py

    images = np.zeros((4, 8, 8, 3), np.uint8)
    src = featcache.ArraySource(images, [0, 1, 0, 1], splits=["train", "test", "train", "test"],
                                class_names=["cat", "dog"])
    cache = featcache.extract(src, out=tmp_path / "c", **TINY)
    with h5py.File(tmp_path / "c" / "features.h5") as f:
        assert [n.decode() if isinstance(n, bytes) else n for n in f.attrs["class_names"]] == cache.class_names
        assert [n.decode() if isinstance(n, bytes) else n for n in f.attrs["split_names"]] == ["train", "val", "test"]
        assert "copy the whole cache directory" in f.attrs["note"]


def test_stock_hdf5_tools_read_the_shards(fm_cache):
    out, _ = fm_cache
    h5dump = shutil.which("h5dump")
    if h5dump is None:
        import os
        if os.environ.get("CI"):
            pytest.fail("CI must install hdf5-tools (.ci/run does)")
        pytest.skip("h5dump not installed")
    header = subprocess.run([h5dump, "-H", out / "shards" / "00000.h5"], capture_output=True, text=True, check=True)
    assert 'DATASET "avg"' in header.stdout and "( 256, 1280 )" in header.stdout
    labels = subprocess.run([h5dump, "-d", "/labels", "-s", "0", "-c", "3", out / "features.h5"],
                            capture_output=True, text=True, check=True)
    assert "9, 2, 1" in labels.stdout


def test_partial_cache_refuses_plain_open_and_manifest_is_json(tmp_path):
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    out = tmp_path / "p"
    featcache.extract(imgs, out=out, **TINY)
    m = json.loads((out / "manifest.json").read_text())
    m["complete"] = False
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match="incomplete"):
        featcache.open_cache(out)
    assert len(featcache.open_cache(out, allow_partial=True)) == 4


def test_lock_blocks_a_second_writer_and_a_stale_lock_is_taken_over(tmp_path):
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    out = tmp_path / "locked"
    with store.DirectoryLock(out):
        with pytest.raises(LockedError, match="another featcache process"):
            featcache.extract(imgs, out=out, **TINY)
    # a lock file left behind by a dead process is not a lock
    (out / ".lock").write_text("pid 999999 on elsewhere\n")
    assert len(featcache.extract(imgs, out=out, **TINY)) == 4


def test_split_and_shuffled_batches_cover_each_row_once(sorted_cache):
    cache = sorted_cache
    masks = cache.split_masks()
    from featcache.train import split_masks

    assert split_masks is featcache.split_masks  # the old import keeps working
    assert sum(int(m.sum()) for m in masks.values()) == len(cache)
    X, y = cache.split("val")
    np.testing.assert_array_equal(X, cache.features()[masks["val"]])
    np.testing.assert_array_equal(y, cache.labels()[masks["val"]])
    unshuffled = [i for b in cache.iter_batches(7) for i in b.ids]
    assert unshuffled == cache.ids()  # source order, as before
    features = dict(zip(cache.ids(), cache.features()))
    label_of = dict(zip(cache.ids(), cache.labels().tolist()))
    batches = list(cache.iter_batches(7, split="train", shuffle=True, seed=3))
    ids = [i for b in batches for i in b.ids]
    assert sorted(ids) == sorted(np.array(cache.ids())[masks["train"]].tolist()) and ids != sorted(ids)
    for b in batches:  # each row's features are that row's
        for i, f, lab in zip(b.ids, b.features, b.labels):
            assert np.array_equal(features[i], f) and label_of[i] == lab
    assert ids == [i for b in cache.iter_batches(7, split="train", shuffle=True, seed=3) for i in b.ids]
    rows = np.array([5, 100, 0, 64, 5])
    got = cache.read_rows(rows)
    np.testing.assert_array_equal(got.features, cache.features()[rows])
    assert got.ids == [cache.ids()[r] for r in rows]
    with pytest.raises(FeatcacheError, match="split must be one of"):
        cache.split("holdout")
    with pytest.raises(FeatcacheError, match="row positions"):
        cache.read_rows([len(cache)])
