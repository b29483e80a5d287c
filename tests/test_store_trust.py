"""A cache from a hostile user (issue #27): shards and manifests forged the way an attacker would, read the way users read.

Every forged shard is rebuilt with h5py and the manifest's sha256, size and
mtime are updated to match, so only the store's structure proof can catch it.
Each case must give a one-line error (CLI exit 2, or verify's problem list) and
never the foreign bytes.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import featcache
from conftest import TINY, run_here
from featcache.errors import FeatcacheError

N, SHARD = 24, 12  # two shards of 12 images, three classes
SECRET = b"SECRET-NOT-IN-ANY-CACHE:"


def _images(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8), np.arange(N) % 3


def _extract(out, seed=0, **kw):
    images, labels = _images(seed)
    src = featcache.ArraySource(images, labels, class_names=["a", "b", "c"], name=f"trust{seed}")
    return featcache.extract(src, out=out, shard_size=SHARD, **TINY, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """This module's two tiny caches: the victim, and another cache of the same shape (other images, other key)."""
    root = tmp_path_factory.mktemp("trust")
    _extract(root / "victim")
    _extract(root / "other", seed=1)
    return root


@pytest.fixture
def cache(built, tmp_path):
    dst = tmp_path / "cache"
    shutil.copytree(built / "victim", dst)
    return dst


@pytest.fixture
def secret(tmp_path):
    """A file outside the cache whose bytes must never come out of featcache."""
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET * 4096)
    return path


def _manifest(cache):
    return json.loads((cache / "manifest.json").read_text())


def _save(cache, manifest):
    (cache / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _match_manifest(cache):
    """What an attacker does after replacing a shard: make its manifest record agree with the file."""
    manifest = _manifest(cache)
    for rec in manifest["shards"]:
        path = cache / rec["file"]
        rec.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), bytes=path.stat().st_size,
                   mtime_ns=path.stat().st_mtime_ns)
    _save(cache, manifest)


def _forge(cache, edit, index=0):
    """Rebuild shard ``index`` with h5py, copying everything, then let ``edit(new, old)`` change it."""
    path = cache / "shards" / f"{index:05d}.h5"
    forged = cache / "forged.h5"
    with h5py.File(path, "r") as old, h5py.File(forged, "w") as new:
        for k, v in old.attrs.items():
            new.attrs[k] = v
        for name in old:
            old.copy(old[name], new, name)
        edit(new, old)
    os.replace(forged, path)
    _match_manifest(cache)


def _secret_h5(secret, shape, dtype):
    """An HDF5 file outside the cache holding the secret's bytes as a dataset ``/data`` of ``shape``."""
    path = secret.with_suffix(".h5")
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.frombuffer(secret.read_bytes()[:count], dtype).reshape(shape))
    return path


def _replace_avg(new, make):
    ds = new["features/avg"]
    shape, dtype = ds.shape, ds.dtype
    del new["features/avg"]
    make(new["features"], shape, dtype)


def external_storage(secret):
    def edit(new, old):
        _replace_avg(new, lambda g, shape, dtype: g.create_dataset(
            "avg", shape=shape, dtype=dtype, external=[(str(secret), 0, int(np.prod(shape)) * dtype.itemsize)]))
    return edit


def virtual_dataset(secret):
    def edit(new, old):
        def make(g, shape, dtype):
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[:] = h5py.VirtualSource(str(_secret_h5(secret, shape, dtype)), "data", shape=shape)
            g.create_virtual_dataset("avg", layout)
        _replace_avg(new, make)
    return edit


def external_link(secret):
    def edit(new, old):
        def make(g, shape, dtype):
            g["avg"] = h5py.ExternalLink(str(_secret_h5(secret, shape, dtype)), "/data")
        _replace_avg(new, make)
    return edit


def soft_link(secret):
    def edit(new, old):
        shape, dtype = new["features/avg"].shape, new["features/avg"].dtype
        new["skipped"].create_dataset("stash", data=np.frombuffer(
            secret.read_bytes()[:int(np.prod(shape)) * dtype.itemsize], dtype).reshape(shape))
        del new["features/avg"]
        new["features"]["avg"] = h5py.SoftLink("/skipped/stash")
    return edit


def width_1279(secret):
    def edit(new, old):
        _replace_avg(new, lambda g, shape, dtype: g.create_dataset("avg", data=np.ones((shape[0], shape[1] - 1),
                                                                                        dtype)))
    return edit


def string_features(secret):
    def edit(new, old):
        _replace_avg(new, lambda g, shape, dtype: g.create_dataset(
            "avg", data=np.full(shape, SECRET.decode(), dtype=object), dtype=h5py.string_dtype()))
    return edit


def labels_out_of_range(secret):
    def edit(new, old):
        labels = old["labels"][:]
        labels[0], labels[1] = 57, -5
        del new["labels"]
        new.create_dataset("labels", data=labels)
    return edit


#: each attack, and what the one-line refusal names
SHARD_ATTACKS = {external_storage: "external storage", virtual_dataset: "virtual dataset",
                 external_link: "ExternalLink", soft_link: "SoftLink", width_1279: "shape",
                 string_features: "dtype", labels_out_of_range: "label 57"}


def _refused(call):
    with pytest.raises(FeatcacheError) as info:
        call()
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


def _every_reader_refuses(path, why=""):
    """The reading paths users use, each refused in one line, with nothing of the forged shard returned."""
    c = featcache.open_cache(path)
    assert why in _refused(c.features)
    _refused(lambda: c.read_rows([0, 1]))
    _refused(lambda: c.read_rows(np.arange(N)))
    _refused(lambda: list(c.iter_batches(8)))
    _refused(lambda: list(c.iter_batches(8, shuffle=True)))
    _refused(c.labels)
    assert featcache.open_cache(path).verify()


@pytest.mark.parametrize("attack", list(SHARD_ATTACKS), ids=lambda a: a.__name__)
def test_a_forged_shard_is_refused_by_every_reader(cache, secret, attack):
    _forge(cache, attack(secret))
    _every_reader_refuses(cache, SHARD_ATTACKS[attack])


def test_external_storage_never_reaches_an_export_training_or_verify(cache, secret, tmp_path):
    _forge(cache, external_storage(secret))
    out = tmp_path / "export.npz"
    proc = run_here("export-features", cache, out, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not out.exists(), proc.stderr
    proc = run_here("train", cache, "--head", "lda", "--out", tmp_path / "model", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "model").exists()
    proc = run_here("verify", cache, check=False)
    assert proc.returncode != 0 and "external storage" in proc.stdout and "ok" not in proc.stdout.split(), proc.stdout


def test_a_shard_from_another_cache_is_refused_by_its_key(cache, built):
    shutil.copyfile(built / "other" / "shards" / "00000.h5", cache / "shards" / "00000.h5")
    _match_manifest(cache)
    _every_reader_refuses(cache, "another cache")


def test_a_shard_replaced_after_its_proof_is_proven_again(cache, secret):
    """The per-process proof is for one file identity: a shard swapped after a good read is walked again."""
    c = featcache.open_cache(cache)
    good = c.features()
    _forge(cache, external_link(secret))  # a new inode: the per-process proof does not carry over
    c = featcache.open_cache(cache)
    _refused(c.features)
    _refused(lambda: c.read_shard_features(c.shards[0]))
    assert good.shape == (N, c.output_info()["shape"][0])


def test_readers_use_only_the_shards_the_manifest_lists(cache):
    c = featcache.open_cache(cache)
    other = featcache.store.ShardInfo(0, cache / "shards" / "00001.h5", (0, SHARD), (0, SHARD))
    _refused(lambda: c.read_shard(other))


# --------------------------------------------------------------------------- features.h5


def test_a_forged_features_h5_is_refused_by_verify_and_rebuilt_by_a_rerun(cache, secret):
    manifest = _manifest(cache)
    shape, dtype = (N, *manifest["outputs"]["avg"]["shape"]), manifest["outputs"]["avg"]["dtype"]
    with h5py.File(cache / "features.h5", "a") as f:
        del f["features/avg"]
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(str(_secret_h5(secret, shape, dtype)), "data", shape=shape)
        f.create_virtual_dataset("features/avg", layout)
    problems = featcache.open_cache(cache).verify()
    assert any("features.h5" in p and "secret" in p for p in problems), problems
    proc = run_here("verify", cache, check=False)
    assert proc.returncode == 1 and "features.h5" in proc.stdout, proc.stdout
    _extract(cache)  # the same extraction again: features.h5 is rebuilt over the shards
    assert featcache.open_cache(cache).verify() == []
    with h5py.File(cache / "features.h5", "r") as f:
        assert {s.file_name for s in f["features/avg"].virtual_sources()} == {"shards/00000.h5", "shards/00001.h5"}
        assert SECRET not in f["features/avg"][:].tobytes()


# --------------------------------------------------------------------------- manifests


MANIFEST_ATTACKS = {
    "n_rows": lambda m: m["shards"][0].update(n_rows=10**13),
    "shape": lambda m: m["outputs"]["avg"].update(shape=[10**7, 10**7]),
    "dtype": lambda m: m["outputs"]["avg"].update(dtype="object"),
    "shard_size": lambda m: m["params"].update(shard_size=0),
    "shard_size ": lambda m: m["params"].update(shard_size="4096x"),
    "n_items": lambda m: m["dataset"].update(n_items="abc"),
    "views": lambda m: m.update(views="lots"),
    "listed twice": lambda m: m["shards"].append(dict(m["shards"][0])),
    "items": lambda m: m["shards"][1].update(items=[0, 12]),
    # what the fuzz test found `featcache info` tracing back on (issue #28)
    "weights.kind": lambda m: m["params"]["weights"].update(kind=0),
    "weights.sha256": lambda m: m["params"]["weights"].update(sha256=57),
    "image_size": lambda m: m["params"].update(image_size=None),
    "image_size ": lambda m: m["params"].update(image_size=[32, "abc"]),
    "versions": lambda m: m.update(versions="abc"),
    "timings": lambda m: m.update(timings=[1, 2, 3]),
    "backbone_ref": lambda m: m.update(backbone_ref=True),
    "skipped": lambda m: m["shards"][0].pop("skipped"),
    "class_names": lambda m: m["dataset"]["class_names"].__setitem__(0, [1, 2, 3]),
}


@pytest.mark.parametrize("field", list(MANIFEST_ATTACKS))
def test_a_damaged_manifest_is_one_line_naming_the_field(cache, field):
    manifest = _manifest(cache)
    MANIFEST_ATTACKS[field](manifest)
    _save(cache, manifest)
    message = _refused(lambda: featcache.open_cache(cache).features())
    assert field.strip() in message, message


@pytest.mark.parametrize("field", ["weights.kind", "image_size", "versions", "skipped"])
def test_info_on_a_damaged_manifest_is_one_line_naming_the_field(cache, field, capsys):
    from featcache.cli import main

    manifest = _manifest(cache)
    MANIFEST_ATTACKS[field](manifest)
    _save(cache, manifest)
    capsys.readouterr()
    assert main(["info", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err, err


def test_export_features_with_a_class_name_that_is_not_text_is_one_line(cache, tmp_path, capsys):
    from featcache.cli import main

    manifest = _manifest(cache)
    MANIFEST_ATTACKS["class_names"](manifest)
    _save(cache, manifest)
    capsys.readouterr()
    assert main(["export-features", str(cache), str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "class_names" in err, err
    assert not (tmp_path / "x.npz").exists()


def test_a_manifest_nested_5000_deep_is_one_line(cache):
    text = (cache / "manifest.json").read_text()
    (cache / "manifest.json").write_text(text.replace('"params": {', '"deep": ' + "[" * 5000 + "]" * 5000
                                                      + ', "params": {', 1))
    assert "nested" in _refused(lambda: featcache.open_cache(cache))
    proc = run_here("verify", cache, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_huge_n_rows_fails_verify_and_train_in_one_line(cache, tmp_path):
    manifest = _manifest(cache)
    manifest["shards"][0]["n_rows"] = 10**13
    _save(cache, manifest)
    for args in (("verify", cache), ("train", cache, "--head", "lda", "--out", tmp_path / "m")):
        proc = run_here(*args, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "n_rows" in proc.stderr, proc.stderr


def test_duplicate_shard_indices_are_refused_not_trained_twice(cache):
    manifest = _manifest(cache)
    manifest["shards"].append(dict(manifest["shards"][1]))
    _save(cache, manifest)
    assert "twice" in _refused(lambda: featcache.open_cache(cache))


def test_the_record_of_a_committed_shard_carries_its_mtime(cache):
    for rec in _manifest(cache)["shards"]:
        assert rec["mtime_ns"] == (cache / rec["file"]).stat().st_mtime_ns


def test_proving_shards_keeps_reading_fast(built):
    """features() of a few-hundred-row cache: the proof runs once per file per process, not on every read."""
    c = featcache.open_cache(built / "victim")
    c.features()  # proven here
    t = time.perf_counter()
    for _ in range(20):
        featcache.open_cache(built / "victim").features()
    assert (time.perf_counter() - t) / 20 < 0.05


# --------------------------------------------------------------------------- writing: read-only, repair




def test_views_on_a_read_only_complete_cache_say_it_cannot_be_written(built, small_disk):
    shutil.copytree(built / "victim", small_disk / "cache")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(FeatcacheError) as info:
        _extract(small_disk / "cache", views=2)
    message = str(info.value)
    assert "unfinished" not in message and "complete cache" in message and "cannot be" in message, message


def test_readers_keep_reading_a_complete_cache_while_it_is_repaired(cache, tmp_path):
    shard = cache / "shards" / "00001.h5"
    data = bytearray(shard.read_bytes())
    data[-64] ^= 0xFF  # a flipped bit in the features: sha256 differs, structure intact
    shard.write_bytes(bytes(data))
    images, labels = _images(0)
    np.savez(tmp_path / "src.npz", images=images, labels=labels)
    script = tmp_path / "repair.py"
    script.write_text(
        "import sys, numpy as np, featcache\n"
        f"d = np.load({str(tmp_path / 'src.npz')!r})\n"
        "src = featcache.ArraySource(d['images'], d['labels'], class_names=['a', 'b', 'c'], name='trust0')\n"
        f"featcache.extract(src, out={str(cache)!r}, shard_size={SHARD}, repair=True, **{TINY!r})\n")
    marker = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, str(script)],
                            env={**os.environ, "FEATCACHE_PAUSE_AT": "before-rename:shard",
                                 "FEATCACHE_PAUSE_FILE": str(marker), "FEATCACHE_PAUSE_SECONDS": "5",
                                 "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                                os.environ.get("PYTHONPATH", "")])},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
        time.sleep(0.05)
    c = featcache.open_cache(cache)  # mid-repair: still complete
    assert len(c.read_rows(np.arange(SHARD)).ids) == SHARD  # the shard not being repaired reads
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert featcache.open_cache(cache).verify() == []
