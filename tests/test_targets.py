"""Targets attached to a cache (featcache/store/targets.py, docs/TARGETS.md): real tables, real forged files."""

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.datasets import load_fashion_mnist
from featcache.errors import CacheError, FeatcacheError
from featcache.files import sha256_path
from featcache.sources import FolderSource
from featcache.store import TargetError, foreign_entries

from conftest import REPO, TINY, kill_at, run_here

sys.path.insert(0, str(REPO / "data"))
import make_tasks  # noqa: E402


@pytest.fixture
def cache(small_cache, tmp_path):
    """A private copy of the shared 150-row cache: attaching writes into the directory."""
    dst = tmp_path / "cache"
    shutil.copytree(small_cache.path, dst)
    return featcache.open_cache(dst)


def write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def feature_files(directory: Path) -> dict:
    """sha256 of everything extraction wrote: the manifest, the view and every shard."""
    return {str(p.relative_to(directory)): sha256_path(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and (p.name in ("manifest.json", "features.h5") or p.parent.name == "shards")}


def index(cache) -> dict:
    return json.loads((cache.path / "targets.json").read_text())["targets"]


def test_a_table_makes_one_target_per_column_of_its_inferred_kind_aligned_to_the_rows(cache, tmp_path):
    ids = cache.ids()
    rows = [[ids[i], 0.5 * i, "red|blue" if i // 2 % 2 else "blue", ["s", "m", "l"][i % 3]] for i in range(0, 150, 2)]
    made = featcache.attach_targets(cache, write_csv(tmp_path / "t.csv", ["id", "age", "tags", "size"], rows))
    assert list(made) == ["age", "tags", "size"]
    targets = cache.targets()
    assert list(targets) == ["label", "age", "size", "tags"]
    label = targets["label"]
    assert (label.kind, label.names, label.n) == ("classification", tuple(cache.class_names), 150)
    np.testing.assert_array_equal(label.values, cache.labels())
    age, tags, size = targets["age"], targets["tags"], targets["size"]
    assert (age.kind, tags.kind, size.kind) == ("regression", "multilabel", "classification")
    assert age.n == tags.n == size.n == 75 and age.coverage == 0.5  # the odd rows have no value
    np.testing.assert_array_equal(age.mask, np.arange(150) % 2 == 0)
    np.testing.assert_allclose(age.values[::2], 0.5 * np.arange(0, 150, 2))
    assert np.isnan(age.values[1::2]).all()
    assert tags.names == ("blue", "red") and tags.values.shape == (150, 2)
    np.testing.assert_array_equal(tags.values[[0, 2]], [[1, 0], [1, 1]])
    assert size.names == ("l", "m", "s") and size.values[0] == 2 and size.values[1] == -1
    rec = index(cache)["age"]
    assert rec["rows"] == 75 and rec["names"] == ["age"] and rec["kind"] == "regression"
    assert rec["sha256"] == sha256_path(cache.path / rec["file"]) and rec["file"].startswith("targets/age-")


def test_several_columns_make_one_target_and_kind_overrides_the_inference(cache, tmp_path):
    ids = cache.ids()
    pos = featcache.attach_targets(cache, {"id": ids, "x": list(range(150)), "y": [2.5] * 150}, name="pos")["pos"]
    assert pos.kind == "regression" and pos.names == ("x", "y") and pos.values.shape == (150, 2)
    ind = write_csv(tmp_path / "colours.csv", ["id", "red", "blue"], [[i, k % 2, 1] for k, i in enumerate(ids)])
    colours = featcache.attach_targets(cache, ind)["colours"]  # 0/1 columns: one multi-label target, named by file
    assert colours.kind == "multilabel" and colours.names == ("red", "blue")
    np.testing.assert_array_equal(colours.values[:2], [[0, 1], [1, 1]])
    stars = featcache.attach_targets(cache, {"id": ids, "stars": [k % 5 + 1 for k in range(150)]},
                                     kind="classification")["stars"]
    assert stars.kind == "classification" and stars.names == ("1", "2", "3", "4", "5")
    tagged = featcache.attach_targets(cache, {"id": ids[:3], "t": [["a", "b"], ["b"], ["c"]]})["t"]
    assert tagged.kind == "multilabel" and tagged.names == ("a", "b", "c") and tagged.n == 3


def test_attaching_again_replaces_the_target_and_remove_detaches_it(cache):
    ids = cache.ids()
    featcache.attach_targets(cache, {"id": ids, "age": [1.0] * 150})
    first = index(cache)["age"]["file"]
    featcache.attach_targets(cache, {"id": ids[:10], "age": [7.0] * 10})
    second = index(cache)["age"]["file"]
    assert second != first and not (cache.path / first).exists()  # the old file goes once the index moved on
    assert cache.target("age").n == 10 and cache.target("age").values[0] == 7.0
    assert sorted(os.listdir(cache.path / "targets")) == [Path(second).name]
    featcache.remove_targets(cache, "age")
    assert list(cache.targets()) == ["label"] and os.listdir(cache.path / "targets") == []
    with pytest.raises(CacheError, match="no target 'age'"):
        cache.target("age")
    with pytest.raises(TargetError, match="source's own label"):
        featcache.remove_targets(cache, "label")


def _bad_tables(ids):
    return {
        "unknown ids": ({"id": ids[:2] + ["nope/1", "nope/2"], "age": [1, 2, 3, 4]}, {},
                        r"2 ids are not in the cache \(first: 'nope/1', 'nope/2'\)"),
        "duplicate ids": ({"id": [ids[0], ids[0]], "age": [1, 2]}, {}, "appear more than once"),
        "nan": ({"id": ids[:2], "age": [1.0, float("nan")]}, {}, "has nan in row 2"),
        "inf": ({"id": ids[:2], "age": ["1", "inf"]}, {}, "has inf in row 2"),
        "mixed types": ({"id": ids[:3], "age": ["1", "cat", "2"]}, {}, "mixes numbers"),
        "empty column": ({"id": ids[:2], "age": ["", None]}, {}, "column 'age' is empty"),
        "no id column": ({"path": ids[:2], "age": [1, 2]}, {}, "has no 'id' column"),
        "unsafe name": ({"id": ids[:2], "my age": [1, 2]}, {}, "'my age' is not a safe identifier"),
        "label reserved": ({"id": ids[:2], "age": [1, 2]}, {"name": "label"}, "reserved for the source's own label"),
        "regression of text": ({"id": ids[:2], "age": ["a", "b"]}, {"kind": "regression"}, "needs numbers"),
    }


@pytest.mark.parametrize("case", list(_bad_tables([""])))
def test_a_bad_table_is_refused_in_one_line_and_nothing_is_written(cache, case):
    table, kwargs, message = _bad_tables(cache.ids())[case]
    with pytest.raises(FeatcacheError, match=message) as err:
        featcache.attach_targets(cache, table, **kwargs)
    assert "\n" not in str(err.value)
    assert not (cache.path / "targets.json").exists() and not (cache.path / "targets").exists()


def test_bad_tables_exit_2_through_the_cli_with_one_line(cache, tmp_path):
    ids = cache.ids()
    cases = {"unknown": ([["ghost.png", 1]], "1 ids are not in the cache"),
             "nan": ([[ids[0], "nan"]], "has nan in row 1"),
             "mixed": ([[ids[0], "1"], [ids[1], "tall"]], "mixes numbers")}
    for name, (rows, message) in cases.items():
        proc = run_here("targets", cache.path, write_csv(tmp_path / f"{name}.csv", ["id", "h"], rows),
                             check=False)
        assert proc.returncode == 2, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], proc.stderr
    proc = run_here("targets", cache.path, write_csv(tmp_path / "ok.csv", ["id", "h"], [[ids[0], 3]]),
                         "--name", "height")
    assert "height" in proc.stdout and "regression" in proc.stdout
    info = run_here("info", cache.path).stdout
    assert "height (regression, 1 of 150 rows (1%))" in info and "label (classification, 150 of 150" in info
    run_here("targets", cache.path, "--remove", "height")
    assert list(featcache.open_cache(cache.path).targets()) == ["label"]


def test_attaching_and_removing_leave_the_features_untouched(cache):
    before = feature_files(cache.path)
    featcache.attach_targets(cache, {"id": cache.ids(), "age": list(range(150))})
    featcache.remove_targets(cache, "age")
    featcache.attach_targets(cache, {"id": cache.ids(), "age": list(range(150))})
    assert feature_files(cache.path) == before
    again = featcache.open_cache(cache.path)
    assert again.verify() == [] and again.key == cache.key
    np.testing.assert_array_equal(again.features(), cache.features())


def _forge_index(cache, path: Path):
    """Point targets.json's ``age`` at ``path`` with its true size and sha256, as an attacker would."""
    sha = sha256_path(path)
    final = cache.path / "targets" / f"age-{sha[:16]}.h5"
    if path != final:
        os.replace(path, final)
    data = json.loads((cache.path / "targets.json").read_text())
    data["targets"]["age"].update(file=f"targets/{final.name}", sha256=sha, bytes=final.stat().st_size)
    (cache.path / "targets.json").write_text(json.dumps(data))


def test_a_target_file_that_does_not_match_its_record_is_refused(cache):
    featcache.attach_targets(cache, {"id": cache.ids(), "age": list(range(150))})
    path = cache.path / index(cache)["age"]["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="does not match its sha256"):
        cache.target("age")


def test_a_target_file_that_is_a_link_is_refused(cache, tmp_path):
    featcache.attach_targets(cache, {"id": cache.ids(), "age": list(range(150))})
    path = cache.path / index(cache)["age"]["file"]
    shutil.copy(path, tmp_path / "elsewhere.h5")
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.h5")  # same bytes, same sha256: only the link gives it away
    with pytest.raises(CacheError, match="is a link"):
        cache.target("age")
    assert "targets/" + path.name in foreign_entries(cache.path)


@pytest.mark.parametrize("forgery", ["external link", "external storage"])
def test_a_target_file_whose_bytes_live_elsewhere_is_refused(cache, tmp_path, forgery):
    featcache.attach_targets(cache, {"id": cache.ids(), "age": list(range(150))})
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["values"] = np.arange(150, dtype=np.float64).reshape(150, 1)
    raw = tmp_path / "raw.bin"
    np.arange(150, dtype=np.float64).tofile(raw)
    forged = cache.path / "targets" / "forged.h5"
    with h5py.File(forged, "w") as f:
        f.attrs["featcache_targets"], f.attrs["name"], f.attrs["kind"] = 1, "age", "regression"
        f.create_dataset("ids", data=np.array(cache.ids(), dtype=object), dtype=h5py.string_dtype())
        if forgery == "external link":
            f["values"] = h5py.ExternalLink(str(secret), "/values")
        else:
            f.create_dataset("values", shape=(150, 1), dtype=np.float64, external=[(str(raw), 0, 150 * 8)])
    _forge_index(cache, forged)
    with pytest.raises(CacheError, match="not a plain featcache target") as err:
        cache.target("age")
    assert ("ExternalLink" if forgery == "external link" else "external storage") in str(err.value)


def test_targets_count_as_ours_and_a_stranger_in_targets_does_not(cache):
    featcache.attach_targets(cache, {"id": cache.ids(), "age": list(range(150))})
    assert foreign_entries(cache.path) == []
    (cache.path / "targets" / "notes.txt").write_text("mine")
    assert foreign_entries(cache.path) == ["targets/notes.txt"]
    featcache.remove_targets(cache, "age")  # removes its own file, never the stranger
    assert (cache.path / "targets" / "notes.txt").read_text() == "mine"
    (cache.path / "targets.json").write_text('{"something": "else"}')
    assert "targets.json" in foreign_entries(cache.path)
    with pytest.raises(CacheError, match="not featcache's targets index"):
        cache.targets()


def test_a_parquet_table_attaches_like_a_csv(cache, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    ids = cache.ids()[:4]
    pq.write_table(pa.table({"id": ids, "weight": [1.5, None, 2.5, 3.0], "kind": ["a", "b", None, "a"]}),
                   tmp_path / "t.parquet")
    made = featcache.attach_targets(cache, tmp_path / "t.parquet")
    assert made["weight"].kind == "regression" and made["weight"].n == 3
    assert made["kind"].kind == "classification" and made["kind"].names == ("a", "b")


def test_make_tasks_targets_follow_from_the_images(tmp_path, fashion_mnist_available):
    images, labels, _ = load_fashion_mnist("test")
    for task in make_tasks.TASKS:
        out = tmp_path / task
        rows = make_tasks.make_task(task, out, limit=6, seed=3)
        with open(out / "targets.csv") as f:
            table = list(csv.DictReader(f))
        assert [r["id"] for r in table] == [r["id"] for r in rows]
        assert sorted(r["id"] for r in table) == sorted(it.id for it in FolderSource(out).items)
        for r in table:
            img = np.asarray(Image.open(out / r["id"]))
            if task == "zoom":  # the garment's footprint is its zoom: re-made from the numbers, pixel for pixel
                k = int(Path(r["id"]).stem)
                garment = images[np.sort(np.random.default_rng(3).choice(len(images), 6, replace=False))[k]]
                remade = make_tasks.zoom_image(garment, float(r["zoom"]), float(r["x"]), float(r["y"]))
                assert np.abs(remade.astype(int) - img).max() <= 1
            elif task == "mosaic":
                tiles = [img[:28, :28], img[:28, 28:], img[28:, :28], img[28:, 28:]]
                found = {make_tasks.FASHION_MNIST_CLASSES[lab] for t in tiles
                         for lab in labels[(images == t).all((1, 2))][:1]}
                assert found == set(r["garments"].split("|"))
            else:
                cells = [img[a:a + 28, b:b + 28] for a in (0, 28) for b in (0, 28)]
                assert sum(c.any() for c in cells) == int(r["count"])
                folders = {make_tasks._folder(k): k for k in range(10)}
                assert r["group"] == make_tasks.GROUPS[folders[Path(r["id"]).parent.name]]


def test_a_made_task_attaches_to_its_extracted_folder(tmp_path, fashion_mnist_available):
    make_tasks.make_task("multi", tmp_path / "multi", limit=8, seed=1)
    cache = featcache.extract(tmp_path / "multi", out=tmp_path / "cache", **TINY)
    made = featcache.attach_targets(cache, tmp_path / "multi" / "targets.csv")
    assert made["group"].kind == "classification" and made["count"].kind == "regression"
    assert made["group"].coverage == made["count"].coverage == 1.0


def test_a_kill_before_the_index_moves_keeps_the_old_target_and_the_next_attach_cleans_up(cache, tmp_path):
    ids = cache.ids()
    featcache.attach_targets(cache, {"id": ids, "h": [1.0] * 150})
    old = index(cache)["h"]
    table = write_csv(tmp_path / "new.csv", ["id", "h"], [[i, 2.0] for i in ids])
    kill_at("before-rename:targets.json", tmp_path / "marker", "targets", cache.path, table)
    assert index(cache)["h"] == old and cache.target("h").values[0] == 1.0  # the index never moved
    assert len(os.listdir(cache.path / "targets")) == 2 and foreign_entries(cache.path) == []  # ours, unlisted
    featcache.attach_targets(cache, {"id": ids, "h": [3.0] * 150})
    assert os.listdir(cache.path / "targets") == [Path(index(cache)["h"]["file"]).name]
    assert not [p for p in os.listdir(cache.path) if p.startswith(".targets.json.tmp-")]


def test_extract_attaches_targets_given_per_image_of_an_array(tmp_path):
    """extract(images, targets={...}): one value per image in the array's order, each kind inferred as a table's."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(40) % 2
    bright = images.mean(axis=(1, 2, 3))
    xy = rng.random((40, 2))
    tags = [["dark"] if b < bright.mean() else ["light", "odd"] if i % 2 else ["light"] for i, b in enumerate(bright)]
    cache = featcache.extract(images, labels=labels, out=tmp_path / "c", first=30,
                              targets={"bright": bright, "pos": xy, "tags": tags,
                                       "side": ["left" if i < 20 else "right" for i in range(40)]}, **TINY)
    assert {n: t.kind for n, t in cache.targets().items()} == {
        "label": "classification", "bright": "regression", "pos": "regression", "side": "classification",
        "tags": "multilabel"}
    order = [int(i.rpartition("/")[2]) for i in cache.ids()]  # first=30: the array's first 30 images
    assert order == list(range(30))
    assert np.allclose(cache.target("bright").values, bright[:30])
    assert cache.target("pos").names == ("pos_0", "pos_1") and np.allclose(cache.target("pos").values, xy[:30])
    t = cache.target("tags")
    assert t.names == ("dark", "light", "odd")
    assert [sorted(np.array(t.names)[v.astype(bool)]) for v in t.values] == [sorted(x) for x in tags[:30]]
    # refused before the CNN runs: a length that is not the array's, or values per image of a folder
    with pytest.raises(FeatcacheError, match=r"targets\['bright'\] has 3 values for the array's 40 images"):
        featcache.extract(images, labels=labels, out=tmp_path / "d", targets={"bright": [1.0, 2.0, 3.0]}, **TINY)
    assert not (tmp_path / "d").exists()
    with pytest.raises(FeatcacheError, match="table with an id column"):
        featcache.extract(str(tmp_path), out=tmp_path / "e", targets={"bright": [1.0]}, **TINY)
