"""A cache grows with its dataset: only images whose content no cache holds go through the CNN.

Each change (new, removed, changed, moved and relabelled images) is checked against a cache built from
nothing on the final source, row for row; the kills, the forged files and the foreign files are the faults
the layout must survive.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

import featcache
from featcache import ArraySource, store
from featcache.errors import CacheError, KeyMismatchError

from conftest import TINY, TINY_ARGS, kill_at, run_here


def _arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 32, 32, 3)) * 255).astype(np.uint8), rng.integers(0, 3, n)


def _src(images, labels, ids):
    return ArraySource(images, labels, ids=[str(i) for i in ids])


def _fresh(src, tmp_path, name="fresh"):
    return featcache.extract(src, out=tmp_path / name, **TINY)


def _same_rows(grown, fresh):
    """Equal row for row: ids, labels, splits and bit-equal features."""
    assert grown.ids() == fresh.ids() and grown.splits() == fresh.splits()
    np.testing.assert_array_equal(grown.labels(), fresh.labels())
    np.testing.assert_array_equal(grown.features(), fresh.features())
    assert grown.digests() == fresh.digests()


def test_grow_shrink_change_move_and_relabel_match_a_fresh_cache(tmp_path):
    X, y = _arrays(160)
    ids = np.array([f"img{i:03d}" for i in range(160)], dtype=object)
    out = tmp_path / "c"
    featcache.extract(_src(X[:120], y[:120], ids[:120]), out=out, **TINY)
    before = featcache.open_cache(out).features()
    keep = np.r_[10:160]  # 10 removed, 40 new
    X2, y2, ids2 = X.copy(), y.copy(), ids.copy()
    y2[20:25] = (y2[20:25] + 1) % 3  # relabelled
    ids2[30:33] = ["renamed/a", "renamed/b", "renamed/c"]  # moved
    X2[40] = 255 - X2[40]  # same id, new bytes: computed again
    src = _src(X2[keep], y2[keep], ids2[keep])
    grown, s = featcache.extract(src, out=out, return_summary=True, **TINY)
    assert s.grow == {"new": 41, "reused": 109, "removed": 11, "relabelled": 5, "moved": 3}
    assert s.grow_line() == "41 new, 109 reused, 11 removed, 5 relabelled (3 moved or renamed)"
    assert grown.generation == 1 and not (out / "shards" / "00000.h5").exists()
    _same_rows(grown, _fresh(src, tmp_path))
    unchanged = [i for i in range(10, 120) if i != 40]  # kept rows are bit-equal to what the CNN gave first
    np.testing.assert_array_equal(grown.read_rows([i - 10 for i in unchanged]).features, before[unchanged])
    assert grown.verify() == [] and sorted(p.name for p in out.iterdir()) == [".lock", "features.h5",
                                                                              "manifest.json", "shards"]
    again, s2 = featcache.extract(src, out=out, return_summary=True, **TINY)
    assert s2.noop and s2.grow is None


def test_a_folder_grows_from_the_cli_and_frozen_refuses(photo_folder, copy_folder, tmp_path):
    root = copy_folder(photo_folder)
    out = tmp_path / "c"
    run_here("extract", root, *TINY_ARGS, "--out", out)
    (root / "train" / "flower" / "flower_00.jpg").rename(root / "train" / "china" / "was_flower.jpg")
    shutil.copy(root / "test" / "china" / "china_01.png", root / "train" / "china" / "copy.png")
    Image.fromarray(np.full((50, 60, 3), 7, np.uint8)).save(root / "train" / "flower" / "new.png")
    (root / "test" / "flower" / "flower_03.png").unlink()
    frozen = run_here("extract", root, *TINY_ARGS, "--out", out, "--frozen", check=False)
    assert frozen.returncode == 2 and "dataset" in frozen.stderr
    proc = run_here("extract", root, *TINY_ARGS, "--out", out)
    assert "grew" in proc.stdout and "1 new, 24 reused, 1 removed, 1 relabelled (1 moved or renamed)" in proc.stdout
    fresh = featcache.extract(root, out=tmp_path / "fresh", **TINY)
    _same_rows(featcache.open_cache(out), fresh)


def test_two_sources_share_features_through_reuse(tmp_path):
    X, y = _arrays(100, seed=1)
    ids = [f"a{i}" for i in range(100)]
    train = featcache.extract(_src(X[:80], y[:80], ids[:80]), out=tmp_path / "train", **TINY)
    other = _src(X[60:], y[60:], [f"b{i}" for i in range(40)])  # 20 shared images under other names
    cache, s = featcache.extract(other, out=tmp_path / "test", reuse=[train.path], return_summary=True, **TINY)
    assert s.grow["new"] == 20 and s.grow["reused"] == 20 and cache.generation == 0
    _same_rows(cache, _fresh(other, tmp_path))
    shifted = featcache.extract(_src(X[:10], y[:10], ids[:10]), out=tmp_path / "x", image_size=48,
                                **{k: v for k, v in TINY.items() if k != "image_size"})
    with pytest.raises(CacheError, match=r"--reuse .*other settings \(.*image_size"):
        featcache.extract(_src(X[:5], y[:5], ids[:5]), out=tmp_path / "y", reuse=[shifted.path], **TINY)


def test_a_cache_made_before_digests_says_how_to_convert(tmp_path):
    X, y = _arrays(40, seed=2)
    out = tmp_path / "c"
    featcache.extract(_src(X[:30], y[:30], range(30)), out=out, **TINY)
    manifest = json.loads((out / "manifest.json").read_text())
    for rec in manifest["shards"]:
        rec.pop("digests")  # what every cache written before this release records
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert not featcache.open_cache(out).has_digests
    with pytest.raises(CacheError, match="before featcache recorded each image's digest.*--overwrite"):
        featcache.extract(_src(X, y, range(40)), out=out, **TINY)
    assert len(featcache.open_cache(out)) == 30  # nothing was touched


def test_a_forged_digest_dataset_is_refused_before_reading(tmp_path):
    X, y = _arrays(20, seed=3)
    out = tmp_path / "c"
    cache = featcache.extract(_src(X, y, range(20)), out=out, **TINY)
    path = cache.path / cache.manifest["shards"][0]["file"]
    with h5py.File(path, "a") as f:
        del f["digests"]
        f.create_dataset("digests", data=np.zeros(20, np.int64))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0].update(bytes=path.stat().st_size)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="digests"):
        featcache.open_cache(out).digests()


def _same_views(grown, fresh):
    """The same augmented views, row for row, as a cache built from nothing (bit-equal)."""
    assert grown.views == fresh.views and grown.augment == fresh.augment
    for v in range(1, fresh.views + 1):
        assert grown.view_ids(v) == fresh.view_ids(v)
    rows = np.arange(len(fresh))
    np.testing.assert_array_equal(grown.views_of(rows), fresh.views_of(rows))


def test_views_grow_with_the_images_and_only_new_ones_are_computed(tmp_path):
    X, y = _arrays(60, seed=4)
    ids = np.array([f"v{i:02d}" for i in range(60)], dtype=object)
    out = tmp_path / "c"
    first = featcache.extract(_src(X[:45], y[:45], ids[:45]), out=out, views=2, **TINY)
    trained = [i for i in first.view_ids(1) if int(i[1:]) >= 5]  # train images with views, and not removed
    X2, y2, ids2 = X.copy(), y.copy(), ids.copy()
    renamed, changed = int(trained[0][1:]), int(trained[1][1:])
    ids2[renamed] = "renamed"  # its views are seeded by its id: computed again
    X2[changed] = 255 - X2[changed]  # same id, new bytes: plain row and views computed again
    y2[int(trained[2][1:])] = (y2[int(trained[2][1:])] + 1) % 3  # relabelled: its views are kept
    keep = np.r_[5:60]  # 5 removed, 15 new
    src = _src(X2[keep], y2[keep], ids2[keep])
    grown, s = featcache.extract(src, out=out, views=2, return_summary=True, **TINY)
    assert grown.generation == 1 and s.grow["new"] == 16 and grown.verify() == []
    fresh = featcache.extract(src, out=tmp_path / "fresh", views=2, **TINY)
    _same_rows(grown, fresh)
    _same_views(grown, fresh)
    new_views = 2 * (sum(i not in first.view_ids(1) for i in fresh.view_ids(1)) + 1)  # + the changed image's
    assert f"augmented views: {new_views:,} computed" in s.notes[-1]
    assert new_views < fresh.manifest["counts"]["view_rows"] / 2  # most views were reused
    # a later grow that does not ask for views keeps them, and still grows them
    src3 = _src(X2[keep[:-3]], y2[keep[:-3]], ids2[keep[:-3]])
    kept, s3 = featcache.extract(src3, out=out, return_summary=True, **TINY)
    assert "keeps the 2 views" in s3.notes[0] and kept.views == 2
    _same_views(kept, featcache.extract(src3, out=tmp_path / "fresh3", views=2, **TINY))


@pytest.mark.slow
def test_a_grow_killed_at_each_step_resumes_to_the_fresh_cache(tmp_path):
    """Killed while the CNN runs on the new images, mid-write of the new generation, and after its commit."""
    folder = tmp_path / "imgs"
    X, y = _arrays(90, seed=5)
    for i, (im, label) in enumerate(zip(X, y)):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(folder / f"c{label}" / f"{i:03d}.png")
    moved = sorted(folder.glob("c*/*.png"))[60:]
    parked = tmp_path / "parked"
    parked.mkdir()
    for p in moved:
        p.rename(parked / f"{p.parent.name}-{p.name}")
    out = tmp_path / "c"
    run_here("extract", folder, *TINY_ARGS, "--out", out)
    for p in parked.iterdir():
        cls, name = p.name.split("-", 1)
        p.rename(folder / cls / name)
    for point in ("before-rename:shard", "grow:shard", "grow:committed"):
        kill_at(point, tmp_path / f"{point}.marker", "extract", folder, *TINY_ARGS, "--out", out)
        cache = featcache.open_cache(out)  # whatever the moment, a complete cache reads
        assert cache.verify() == []
    proc = run_here("extract", folder, *TINY_ARGS, "--out", out)
    assert "nothing to do" in proc.stdout  # the kill after the commit left a grown cache
    files = run_here("compact", out).stdout  # the kill after the commit left the old shard and the staging
    assert "removed 2 file(s)" in files and "nothing to remove" in run_here("compact", out).stdout
    _same_rows(featcache.open_cache(out), featcache.extract(folder, out=tmp_path / "fresh", **TINY))


def _stale_generation(tmp_path):
    """A grown cache whose previous generation and staging cache a kill left behind."""
    X, y = _arrays(200, seed=6)
    out = tmp_path / "c"
    src = _src(X[:150], y[:150], range(150))
    featcache.extract(src, out=out, shard_size=16, **TINY)
    staged = tmp_path / "keep"
    shutil.copytree(out, staged)
    featcache.extract(_src(X, y, range(200)), out=out, shard_size=16, **TINY)
    # put the old generation and a staging cache back, as a kill between the commit and the clean-up leaves them
    for p in (staged / "shards").glob("*.h5"):
        shutil.copy(p, out / "shards" / p.name)
    shutil.copytree(staged, out / f".grow-{'0' * 12}")
    (out / f".grow-{'0' * 12}" / ".lock").unlink(missing_ok=True)
    return out


@pytest.mark.slow
def test_compaction_killed_at_every_step_finishes_and_keeps_the_rows(tmp_path):
    out = _stale_generation(tmp_path)
    want = featcache.open_cache(out).features()
    kills = 0
    while len(list((out / "shards").glob("*.h5"))) or any(out.glob(".grow-*")):
        kill_at("compact:file", tmp_path / f"m{kills}", "compact", out)
        kills += 1
        np.testing.assert_array_equal(featcache.open_cache(out).features(), want)
        assert kills < 40
    assert kills == 11  # 10 old shards and the staging cache, one kill each
    assert "nothing to remove" in run_here("compact", out).stdout


def test_compact_removes_only_what_is_ours(tmp_path):
    out = _stale_generation(tmp_path)
    (out / "shards" / "notes.txt").write_text("mine")
    (out / "shards" / "g1" / "99999.h5").write_bytes(b"not a shard")
    files, freed = featcache.compact(out)
    assert files == 11 and freed > 0
    assert (out / "shards" / "notes.txt").read_text() == "mine" and (out / "shards" / "g1" / "99999.h5").exists()
    assert featcache.open_cache(out).verify() == []
    with pytest.raises(CacheError, match="99999.h5"):  # --overwrite never replaces a file it did not write
        featcache.extract(_src(*_arrays(5), range(5)), out=out, overwrite=True, **TINY)


def test_repair_of_a_grown_cache_recomputes_in_its_generation(tmp_path):
    X, y = _arrays(60, seed=7)
    out = tmp_path / "c"
    featcache.extract(_src(X[:40], y[:40], range(40)), out=out, shard_size=16, **TINY)
    src = _src(X, y, range(60))
    grown = featcache.extract(src, out=out, shard_size=16, **TINY)
    want = grown.features()
    damaged = out / grown.manifest["shards"][1]["file"]
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    repaired, s = featcache.extract(src, out=out, shard_size=16, repair=True, return_summary=True, **TINY)
    assert s.computed_shards == 1 and repaired.generation == 1 and repaired.verify() == []
    np.testing.assert_array_equal(repaired.features(), want)


def test_settings_changes_still_refuse(tmp_path):
    X, y = _arrays(30, seed=8)
    out = tmp_path / "c"
    featcache.extract(_src(X[:20], y[:20], range(20)), out=out, **TINY)
    with pytest.raises(KeyMismatchError, match="pooling"):
        featcache.extract(_src(X, y, range(30)), out=out, pooling="max", **TINY)
    assert store.read_manifest(out).get("generation", 0) == 0


def test_the_alpha_count_of_a_grown_cache_is_right_across_generations(tmp_path):
    X, y = _arrays(70, seed=9)
    rgba = np.concatenate([X, np.full(X.shape[:3] + (1,), 255, np.uint8)], axis=-1)
    alpha = np.zeros(70, bool)
    alpha[[2, 9, 17, 18, 33, 41, 50, 62, 69]] = True  # a few in each shard, so no shard is all or none
    rgba[alpha, :4, :4, 3] = 0
    ids = [f"a{i:02d}" for i in range(70)]
    out = tmp_path / "c"
    featcache.extract(_src(rgba[:40], y[:40], ids[:40]), out=out, shard_size=16, **TINY)
    for gen, keep in enumerate([np.r_[5:60], np.r_[0:3, 20:70]], start=1):  # two grows: remove some, add some
        src = _src(rgba[keep], y[keep], [ids[i] for i in keep])
        grown = featcache.extract(src, out=out, shard_size=16, **TINY)
        fresh = featcache.extract(src, out=tmp_path / f"fresh{gen}", shard_size=16, **TINY)
        assert grown.generation == gen and grown.alpha_count == fresh.alpha_count == int(alpha[keep].sum())


def test_repair_of_a_grown_cache_with_views_recomputes_the_damaged_view_shard_only(tmp_path):
    X, y = _arrays(50, seed=10)
    out = tmp_path / "c"
    featcache.extract(_src(X[:35], y[:35], range(35)), out=out, shard_size=16, views=1, **TINY)
    src = _src(X, y, range(50))
    grown = featcache.extract(src, out=out, shard_size=16, views=1, **TINY)
    want = grown.views_of(np.arange(len(grown)))
    record = max(grown.manifest["shards"], key=lambda r: r["n_rows"] * (r["index"] >= 4))  # a view shard
    damaged = out / record["file"]
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    repaired, s = featcache.extract(src, out=out, shard_size=16, views=1, repair=True, return_summary=True, **TINY)
    assert s.computed_shards == 1 and repaired.generation == 1 and repaired.verify() == []
    assert record["file"].startswith("shards/g1/")
    np.testing.assert_array_equal(repaired.views_of(np.arange(len(repaired))), want)
