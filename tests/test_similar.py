"""featcache similar: exact search equal to brute force, the approximate index proven, rebuilt and kill-safe."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.cli import main
from featcache.errors import FeatcacheError, FeatcacheWarning
from featcache.store import index_path

from conftest import TINY, kill_at


def _write_images(root, n, start=0):
    """Four classes of 32 px PNGs: noise at a class's brightness, so neighbours are mostly of one class."""
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        cls = f"c{i % 4}"
        (root / cls).mkdir(parents=True, exist_ok=True)
        img = (rng.random((32, 32, 3)) * (64 + 60 * (i % 4))).astype(np.uint8)
        Image.fromarray(img).save(root / cls / f"img{i:04d}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("similar") / "images"
    _write_images(root, 240)
    return root


@pytest.fixture(scope="module")
def cache(folder):
    return featcache.extract(folder, out=folder.parent / "cache", **TINY)


def _brute(cache, vectors, k):
    F = cache.features().reshape(len(cache), -1).astype(np.float32)
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    q = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = q @ F.T
    order = np.lexsort((np.broadcast_to(np.arange(len(F)), sims.shape), -sims), axis=1)[:, :k]
    return order, np.take_along_axis(sims, order, 1)


def _rows(result):
    return [[n["row"] for n in r["neighbours"]] for r in result]


def test_a_file_an_id_and_a_vector_equal_brute_force(cache, folder, tmp_path):
    F = cache.features().reshape(len(cache), -1).astype(np.float32)
    ids = cache.ids()
    vectors = F[[3, 50, 111]] + np.float32(0.01)
    got = featcache.similar(cache, vectors, k=7, index="exact")
    rows, sims = _brute(cache, vectors, 7)
    assert _rows(got) == rows.tolist()
    assert np.allclose([[n["cosine"] for n in r["neighbours"]] for r in got], sims, atol=1e-5)
    by_id = featcache.similar(cache.path, ids[42], k=3)[0]["neighbours"]
    assert by_id[0]["id"] == ids[42] and by_id[0]["cosine"] == pytest.approx(1, abs=1e-5)
    image = folder / ids[10]
    by_file = featcache.similar(cache, [str(image)], k=3, cache_dir=tmp_path / "q")[0]
    assert by_file["neighbours"][0]["id"] == ids[10] and by_file["neighbours"][0]["cosine"] > 0.999
    assert by_file["neighbours"][0]["class"] == cache.class_name(cache.labels()[10])
    np.save(tmp_path / "v.npy", vectors[:2])
    assert main(["similar", str(cache.path), str(tmp_path / "v.npy"), ids[5], "-k", "4", "--format", "json"]) == 0


def test_the_cli_prints_csv_and_json(cache, capsys):
    ids = cache.ids()
    assert main(["similar", str(cache.path), ids[0], "-k", "2", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query,rank,row,id,label,class,cosine" and len(lines) == 3 and lines[1].split(",")[3] == ids[0]
    assert main(["similar", str(cache.path), ids[1], "-k", "2", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["neighbours"][0]["id"] == ids[1]


def test_the_index_finds_the_exact_neighbours_and_is_rebuilt_when_stale_or_damaged(folder, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(folder, root)
    cache = featcache.extract(root, out=tmp_path / "cache", **TINY)
    queries = cache.ids()[::12]
    exact = _rows(featcache.similar(cache, queries, k=10, index="exact"))
    ann = _rows(featcache.similar(cache, queries, k=10, index="ann"))
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ann, exact)]) >= 0.95
    path = index_path(cache)
    assert path.is_file()
    with open(path, "r+b") as f:  # truncated: the record's sha256 no longer matches
        f.truncate(path.stat().st_size // 2)
    with pytest.warns(FeatcacheWarning, match="damaged"):
        assert _rows(featcache.similar(cache, queries, k=10, index="ann")) == ann
    record = path.with_name("record.json")
    forged = json.loads(record.read_text())
    forged["files"]["index.usearch"] = "0" * 64
    record.write_text(json.dumps(forged))
    with pytest.warns(FeatcacheWarning, match="damaged"):
        featcache.similar(cache, queries[:1], k=3, index="ann")
    _write_images(root, 1, start=240)  # one more image: the cache grows, the index is stale
    grown = featcache.extract(root, out=tmp_path / "cache", **TINY)
    assert len(grown) == len(cache) + 1
    with pytest.warns(FeatcacheWarning, match="stale"):
        new = featcache.similar(grown, ["c0/img0240.png"], k=1, index="ann")
    assert new[0]["neighbours"][0]["id"] == "c0/img0240.png"
    assert json.loads(record.read_text())["rows"] == len(grown)


@pytest.mark.parametrize("args, message", [
    (["ID0", "-k", "0"], "k must be"),
    (["nobody"], "neither a file nor a row id"),
    (["missing/file.png"], "no such image file"),
    (["WIDE"], "this cache's vectors are"),
])
def test_bad_input_is_one_line_and_exit_2(cache, tmp_path, capsys, args, message):
    np.save(tmp_path / "wide.npy", np.ones(7, np.float32))
    args = [cache.ids()[0] if a == "ID0" else str(tmp_path / "wide.npy") if a == "WIDE" else a for a in args]
    assert main(["similar", str(cache.path), *args]) == 2
    err = capsys.readouterr()
    text = (err.out + err.err).strip()
    assert message in text and len(text.splitlines()) == 1, text
    with pytest.raises(FeatcacheError):
        featcache.similar(cache, np.zeros(cache.output_info()["shape"][-1], np.float32))


@pytest.mark.slow
def test_a_build_killed_before_its_record_is_not_trusted(folder, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(folder, root)
    cache = featcache.extract(root, out=tmp_path / "cache", **TINY)
    kill_at("similar-index-before-record", tmp_path / "marker", "similar", cache.path, cache.ids()[0],
            "--index", "ann")
    assert index_path(cache).is_file() and not index_path(cache).with_name("record.json").exists()
    with pytest.warns(FeatcacheWarning, match="no record"):
        got = featcache.similar(cache, cache.ids()[0], k=1, index="ann")
    assert got[0]["neighbours"][0]["id"] == cache.ids()[0]
    assert index_path(cache).with_name("record.json").is_file()


@pytest.mark.slow
def test_a_build_killed_while_adding_rows_leaves_nothing_and_restarts(folder, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(folder, root)
    cache = featcache.extract(root, out=tmp_path / "cache", **TINY)
    kill_at("similar-index-adding", tmp_path / "marker", "similar", cache.path, cache.ids()[0], "--index", "ann")
    left = list(index_path(cache).parent.iterdir()) if index_path(cache).parent.exists() else []
    assert left == []  # a graph half built lives in memory only: no file, no temporary, no record
    got = featcache.similar(cache, cache.ids()[:5], k=3, index="ann")
    assert _rows(got) == _rows(featcache.similar(cache, cache.ids()[:5], k=3, index="exact"))
    assert index_path(cache).with_name("record.json").is_file()
