"""What featcache will never delete: each test builds the fault for real and checks the user's files survive.

docs/RELIABILITY.md ("What featcache will never delete") maps each guarantee to its test here.
"""

import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.errors import CacheError, FeatcacheError
from featcache.model_dir import load_model_dir

from conftest import TINY, kill_at, run_here

PRECIOUS = b"my thesis, five years of work\n"


def _images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), np.arange(n) % 2


def _folder(root: Path, n=4, names=("a", "b")):
    rng = np.random.default_rng(1)
    for c in names:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A complete cache of 12 array images in shards of 4, with train/val/test splits."""
    imgs, labels = _images()
    out = tmp_path_factory.mktemp("own") / "cache"
    splits = ["train"] * 8 + ["val", "test", "test", "val"]
    src = featcache.ArraySource(imgs, labels, splits=splits, name="tiny")
    featcache.extract(src, out=out, shard_size=4, **TINY)
    return out


def _copy(cache, tmp_path):
    dst = tmp_path / "cache"
    shutil.copytree(cache, dst)
    return dst


def _extract_tiny(out, **kw):
    imgs, labels = _images()
    src = featcache.ArraySource(imgs, labels, splits=["train"] * 8 + ["val", "test", "test", "val"],
                                        name="tiny")
    return featcache.extract(src, out=out, shard_size=4, **TINY, **kw)


# --------------------------------------------------------------------------- 1. paths read from a manifest or card


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_a_manifest_naming_a_file_outside_the_cache_is_refused_and_the_file_survives(tiny_cache, tmp_path, where):
    cache = _copy(tiny_cache, tmp_path)
    victim = tmp_path / "thesis.tex"
    victim.write_bytes(PRECIOUS)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shards"][1]["file"] = "../thesis.tex" if where == "parent" else str(victim)
    (cache / "manifest.json").write_text(json.dumps(manifest))
    proc = run_here("verify", cache, check=False)
    assert proc.returncode == 2 and "damaged" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(CacheError, match="damaged"):
        _extract_tiny(cache)  # the plain re-run that used to "repair" (delete) the victim
    with pytest.raises(CacheError, match="damaged"):
        featcache.open_cache(cache)
    assert victim.read_bytes() == PRECIOUS
    # --overwrite replaces the cache, still without following the hostile path
    _extract_tiny(cache, overwrite=True)
    assert victim.read_bytes() == PRECIOUS and featcache.open_cache(cache).verify() == []


def test_a_card_naming_a_file_outside_the_model_directory_is_refused(tiny_cache, tmp_path):
    model = tmp_path / "model"
    featcache.train(tiny_cache, "lda", out=model)
    victim = tmp_path / "victim.joblib"
    shutil.copy(model / "head.joblib", victim)
    before = victim.read_bytes()
    card = json.loads((model / "card.json").read_text())
    card["file"] = "../victim.joblib"
    (model / "card.json").write_text(json.dumps(card))
    with pytest.raises(FeatcacheError, match="always 'head.joblib' beside the card"):
        load_model_dir(model)
    proc = run_here("predict", model, tmp_path, check=False)
    assert proc.returncode == 2 and "beside the card" in proc.stderr and "Traceback" not in proc.stderr
    # retraining into it is refused too: without a valid card nothing there is provably ours
    with pytest.raises(FeatcacheError, match="did not write"):
        featcache.train(tiny_cache, "lda", out=model)
    assert victim.read_bytes() == before


@pytest.mark.parametrize("card", ["[1, 2]", "{}", '{"format": "featcache-model/1", "kind": "pickle"}', "not json"])
def test_a_broken_card_is_a_one_line_error(tiny_cache, tmp_path, card):
    model = tmp_path / "model"
    featcache.train(tiny_cache, "lda", out=model)
    (model / "card.json").write_text(card)
    proc = run_here("predict", model, tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --------------------------------------------------------------------------- 2, 3. --out and --overwrite


def test_a_shards_folder_of_someone_else_is_refused_untouched(tmp_path):
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    with h5py.File(out / "shards" / "00000.h5", "w") as f:  # an HDF5 file featcache did not write
        f["data"] = np.arange(10)
    (out / "shards" / "00001.h5").write_bytes(PRECIOUS)
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    with pytest.raises(CacheError, match="not empty and is not a featcache cache"):
        _extract_tiny(out)
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before


def test_overwrite_removes_only_what_featcache_wrote(tiny_cache, tmp_path):
    cache = _copy(tiny_cache, tmp_path)
    (cache / "notes.txt").write_bytes(PRECIOUS)
    (cache / "shards" / "db-part1.dat").write_bytes(PRECIOUS)
    proc = run_here("extract", "fashion_mnist:test", "--limit", "8", "--backbone", "mobilenet_v2", "--weights",
                         "none", "--image-size", "32", "--out", cache, "--overwrite", "--quiet", check=False)
    if proc.returncode == 2 and "dataset-fashion-mnist" in proc.stderr:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    assert proc.returncode == 0, proc.stderr
    assert "left alone: notes.txt" in proc.stderr and "left alone: shards/db-part1.dat" in proc.stderr
    assert (cache / "notes.txt").read_bytes() == PRECIOUS
    assert (cache / "shards" / "db-part1.dat").read_bytes() == PRECIOUS
    assert len(featcache.open_cache(cache)) == 8


def test_overwrite_refuses_a_web_app_manifest_and_another_programs_features_file(tmp_path):
    out = tmp_path / "webapp"
    (out / "shards").mkdir(parents=True)
    (out / "manifest.json").write_text('{"name": "My App", "start_url": "/", "icons": []}')
    with h5py.File(out / "features.h5", "w") as f:
        f["embeddings"] = np.ones((3, 4))
    (out / "shards" / "db-part1.dat").write_bytes(PRECIOUS)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(CacheError, match="refusing to replace"):
        _extract_tiny(out, overwrite=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_bench_and_train_refuse_an_out_directory_that_is_not_theirs(tiny_cache, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_bytes(PRECIOUS)
    proc = run_here("bench", tiny_cache, "--heads", "lda", "--out", site, check=False)
    assert proc.returncode == 2 and "holds no featcache report" in proc.stderr
    proc = run_here("train", tiny_cache, "--head", "lda", "--out", site, check=False)
    assert proc.returncode == 2 and "did not write" in proc.stderr
    assert sorted(p.name for p in site.iterdir()) == ["index.html"] and (site / "index.html").read_bytes() == PRECIOUS
    a_file = tmp_path / "plain.txt"
    a_file.write_bytes(PRECIOUS)
    proc = run_here("train", tiny_cache, "--head", "lda", "--out", a_file, check=False)
    assert proc.returncode == 2 and "not a model directory" in proc.stderr
    assert a_file.read_bytes() == PRECIOUS
    # a model directory of ours with a file of the user's in it is not replaced either
    model = tmp_path / "model"
    featcache.train(tiny_cache, "lda", out=model)
    (model / "README.txt").write_bytes(PRECIOUS)
    with pytest.raises(FeatcacheError, match="README.txt"):
        featcache.train(tiny_cache, "lda", out=model)
    assert (model / "README.txt").read_bytes() == PRECIOUS
    # an export never replaces a .keras file it did not write
    other = tmp_path / "theirs.keras"
    other.write_bytes(PRECIOUS)
    keras_model = tmp_path / "km"
    featcache.train(tiny_cache, "keras_linear", out=keras_model, params={"epochs": 2})
    with pytest.raises(FeatcacheError, match="not a model featcache exported"):
        featcache.export(keras_model, other)
    assert other.read_bytes() == PRECIOUS


def test_a_report_directory_of_ours_is_reused(tiny_cache, tmp_path):
    report = tmp_path / "r"
    featcache.bench(tiny_cache, ["lda"], out=report, baseline_heads=(), save_best=False)
    rows = featcache.bench(tiny_cache, ["lda"], out=report, baseline_heads=(), save_best=False)
    assert [r["head"] for r in rows] == ["lda"] and (report / "results.jsonl").is_file()


# --------------------------------------------------------------------------- 5. a kill while a model directory is replaced


@pytest.mark.slow
def test_a_kill_while_a_model_directory_is_replaced_leaves_the_old_or_the_new_model(tiny_cache, tmp_path):
    model = tmp_path / "model"
    run_here("train", tiny_cache, "--head", "logreg", "--param", "C=0.5", "--out", model)
    train = ("train", tiny_cache, "--head", "logreg", "--param", "C=2.0", "--out", model)

    kill_at("before-swap:model", tmp_path / "paused-1", *train)
    pipe, card = load_model_dir(model)  # the old model, whole
    assert card["head_params"] == {"C": 0.5} and pipe.predict(np.zeros((1, 1280), np.float32)).shape == (1,)

    kill_at("after-swap:model", tmp_path / "paused-2", *train)
    pipe, card = load_model_dir(model)  # the new model, whole
    assert card["head_params"] == {"C": 2.0}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")]
    assert leftovers  # the old model, still in its hidden sibling after the kill

    run_here("train", *train[1:])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")] == []
    assert load_model_dir(model)[1]["head_params"] == {"C": 2.0}


# --------------------------------------------------------------------------- 11. full and read-only disks




def _remount(mnt, option):
    subprocess.run(["mount", "-o", f"remount,{option}", str(mnt)], check=True)


def _temporaries(root):
    return [p for p in Path(root).rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.slow
def test_a_complete_cache_on_read_only_media_is_readable_and_a_rerun_is_a_no_op(tiny_cache, small_disk, tmp_path):
    cache = small_disk / "cache"
    shutil.copytree(tiny_cache, cache)
    _remount(small_disk, "ro")
    assert len(featcache.open_cache(cache)) == 12
    again, summary = featcache.extract(
        featcache.ArraySource(*_images(), splits=["train"] * 8 + ["val", "test", "test", "val"], name="tiny"),
        out=cache, shard_size=4, return_summary=True, **TINY)
    assert summary.noop and len(again) == 12
    # training and benchmarking onto the read-only disk: one-line errors, nothing left behind
    proc = run_here("train", cache, "--head", "lda", "--out", small_disk / "model", check=False)
    assert proc.returncode == 2 and "Read-only" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_here("bench", cache, "--heads", "lda", "--out", small_disk / "report", check=False)
    assert proc.returncode == 2 and "Read-only" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["cache"]


@pytest.mark.slow
def test_a_full_disk_while_training_is_a_clear_error_and_the_old_model_stays(tiny_cache, small_disk):
    model = small_disk / "model"
    featcache.train(tiny_cache, "logreg", out=model)
    before = (model / "head.joblib").read_bytes()
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk to the last block
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    proc = run_here("train", tiny_cache, "--head", "random_forest", "--out", model, check=False)
    assert proc.returncode == 2 and "No space left" in proc.stderr and "Traceback" not in proc.stderr
    assert (model / "head.joblib").read_bytes() == before and load_model_dir(model)[1]["head"] == "logreg"
    assert _temporaries(small_disk) == []


# --------------------------------------------------------------------------- 12. a backbone that fails to load


def test_a_backbone_that_fails_to_load_does_not_claim_the_directory(tmp_path):
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="code")(inputs)
    keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(x)).save(tmp_path / "lambda.keras")
    imgs, labels = _images()
    out = tmp_path / "c"
    with pytest.raises(FeatcacheError, match="safe_mode|Lambda|lambda"):
        featcache.extract(imgs, labels=labels, backbone=str(tmp_path / "lambda.keras"), out=out)
    assert not out.exists()  # created by the run, removed again: nothing claimed
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(FeatcacheError, match="safe_mode|Lambda|lambda"):
        featcache.extract(imgs, labels=labels, backbone=str(tmp_path / "lambda.keras"), out=existing)
    assert not (existing / "manifest.json").exists()
    # the corrected run needs no --overwrite
    assert len(featcache.extract(imgs, labels=labels, out=existing, **TINY)) == 12


# --------------------------------------------------------------------------- found by a hostile review


def test_a_lock_file_that_is_a_link_or_not_ours_is_never_written_through(tiny_cache, tmp_path):
    victim = tmp_path / "thesis.tex"
    victim.write_bytes(PRECIOUS)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".lock").symlink_to(victim)
    with pytest.raises(CacheError, match="symbolic link"):
        _extract_tiny(linked)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / ".lock").write_bytes(PRECIOUS)
    with pytest.raises(CacheError, match="not featcache's lock file"):
        _extract_tiny(theirs)
    assert victim.read_bytes() == PRECIOUS and (theirs / ".lock").read_bytes() == PRECIOUS
    assert (linked / ".lock").is_symlink()
    a_dir = tmp_path / "lockdir"
    (a_dir / ".lock").mkdir(parents=True)  # a folder where the lock file goes: one line, not IsADirectoryError
    with pytest.raises(CacheError, match="lock file"):
        _extract_tiny(a_dir)


def test_a_shards_folder_that_is_a_link_is_refused_even_under_a_manifest(tiny_cache, tmp_path):
    cache = _copy(tiny_cache, tmp_path)
    outside = tmp_path / "userdir"
    shutil.move(cache / "shards", outside)
    for p in outside.iterdir():
        p.write_bytes(PRECIOUS)
    (cache / "shards").symlink_to(outside)
    with pytest.raises(CacheError, match="symbolic link"):
        _extract_tiny(cache)
    assert all(p.read_bytes() == PRECIOUS for p in outside.iterdir())


def test_predict_and_pretrain_never_replace_a_file_they_did_not_write(tiny_cache, tmp_path):
    model = tmp_path / "m"
    featcache.train(tiny_cache, "lda", out=model)
    grades = tmp_path / "grades.csv"
    grades.write_bytes(PRECIOUS)
    images = tmp_path / "imgs"
    _folder(images, n=2)
    with pytest.raises(FeatcacheError, match="not a predictions file featcache wrote"):
        featcache.predict(model, images, out=grades, cache_dir=tmp_path / "pc")
    ours = tmp_path / "ours.csv"
    featcache.predict(model, images, out=ours, cache_dir=tmp_path / "pc")
    featcache.predict(model, images, out=ours, cache_dir=tmp_path / "pc")  # its own file: replaced
    mine = tmp_path / "mymodel.keras"
    mine.write_bytes(PRECIOUS)
    proc = run_here("pretrain", images, "--epochs", "1", "--out", mine, check=False)
    assert proc.returncode == 2 and "not a model featcache pre-trained" in proc.stderr
    assert grades.read_bytes() == PRECIOUS and mine.read_bytes() == PRECIOUS


def test_an_empty_results_file_does_not_make_a_folder_a_report(tiny_cache, tmp_path):
    report = tmp_path / "rep"
    report.mkdir()
    (report / "results.jsonl").write_text("")
    (report / "report.md").write_bytes(PRECIOUS)
    with pytest.raises(FeatcacheError, match="holds no featcache report"):
        featcache.bench(tiny_cache, ["lda"], out=report, baseline_heads=())
    assert (report / "report.md").read_bytes() == PRECIOUS


@pytest.mark.parametrize("damage", ["no params", "no dataset", "skipped of numbers"])
def test_a_manifest_missing_what_every_cache_records_is_a_one_line_error(tiny_cache, tmp_path, damage):
    cache = _copy(tiny_cache, tmp_path)
    manifest = json.loads((cache / "manifest.json").read_text())
    if damage == "no params":
        del manifest["params"]
    elif damage == "no dataset":
        del manifest["dataset"]
    else:
        manifest["shards"][0]["skipped"] = [1]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    proc = run_here("info", cache, check=False)
    assert proc.returncode == 2 and "damaged" in proc.stderr and "Traceback" not in proc.stderr


def test_train_out_dot_from_inside_a_model_directory(tiny_cache, tmp_path):
    model = tmp_path / "m"
    featcache.train(tiny_cache, "lda", out=model)
    run_here("train", tiny_cache, "--head", "logreg", "--out", ".", cwd=model)
    assert load_model_dir(model)[1]["head"] == "logreg"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")] == []


def test_prediction_caches_under_the_default_home_are_bounded_and_only_ours_are_pruned(tiny_cache, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FEATCACHE_PREDICTION_CACHES", "2")
    model = tmp_path / "m"
    featcache.train(tiny_cache, "lda", out=model)
    home = tmp_path / "home" / "predictions"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "mine.txt").write_bytes(PRECIOUS)
    used = []
    for k in range(3):
        _folder(tmp_path / f"imgs{k}", n=1, names=(f"c{k}",))
        featcache.predict(model, tmp_path / f"imgs{k}")
        used.append({p.name for p in home.iterdir()} - {"notes"})
    assert len(used[1]) == 2 and len(used[2]) == 2 and used[2] != used[1]  # the oldest went first
    assert (home / "notes" / "mine.txt").read_bytes() == PRECIOUS
