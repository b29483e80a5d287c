"""Heads and bench rows know their data changed (issue 29): a card and a bench row record which rows they learnt
from (the cache's rows_key), so a grow that changed rows retrains and reruns them, and one that changed nothing
but the files' dates (the cache key) keeps them."""

import json
import os

import numpy as np
from PIL import Image

import featcache
from featcache import ArraySource
from featcache.pipeline import run

from conftest import TINY, TINY_PIPE

PIPE = TINY_PIPE + """[train]
heads = ["logreg"]
[bench]
heads = ["logreg"]
baseline_heads = []
n_jobs = 1
"""


def _said(capsys) -> str:
    said = capsys.readouterr()
    return (said.out + said.err).replace("\n", " ")


def test_a_pipeline_retrains_only_when_the_rows_changed_and_says_why(tmp_path, photo_folder, copy_folder, capsys):
    root = copy_folder(photo_folder / "train")
    (tmp_path / "pipelines").mkdir()
    path = tmp_path / "pipelines" / "p.toml"
    path.write_text(PIPE.format(source=root))
    run(path, progress=False)
    card = json.loads((tmp_path / "out" / "t" / "models" / "a-logreg" / "card.json").read_text())
    assert card["features"]["rows"] == 16 and len(card["features"]["rows_key"]) == 16
    capsys.readouterr()

    for p in root.rglob("*.png"):  # new dates, same bytes: the cache key changes, its rows do not
        os.utime(p, ns=(1, 1))
    run(path, progress=False)
    said = _said(capsys)
    assert "grew: 0 new, 16 reused" in said
    assert "logreg: up to date" in said and "report.html: up to date" in said

    Image.fromarray(np.full((40, 40, 3), 9, np.uint8)).save(root / "china" / "new.png")
    run(path, progress=False)
    said = _said(capsys)
    assert "grew: 1 new, 16 reused" in said
    assert "logreg: retrained, the cache's rows changed (16 rows then, 17 now)" in said
    assert "report.html: up to date" not in said
    card = json.loads((tmp_path / "out" / "t" / "models" / "a-logreg" / "card.json").read_text())
    assert card["features"]["rows"] == 17


def _arrays(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 32, 32, 3)) * 255).astype(np.uint8), rng.integers(0, 3, n)


def _lines(report):
    return [json.loads(line) for line in (report / "results.jsonl").read_text().splitlines()]


def test_bench_reruns_the_rows_of_the_cache_whose_rows_changed_and_keeps_the_others(tmp_path):
    X, y = _arrays(90)
    ids = [f"i{i}" for i in range(90)]
    a, b = tmp_path / "a", tmp_path / "b"
    featcache.extract(ArraySource(X[:60], y[:60], ids=ids[:60]), out=a, **TINY)
    featcache.extract(ArraySource(X[30:], y[30:], ids=ids[30:]), out=b, **TINY)
    report = tmp_path / "report"
    featcache.bench([a, b], ["logreg"], out=report, baseline_heads=[], n_jobs=1)
    first = _lines(report)
    assert len(first) == 2 and len({r["rows_key"] for r in first}) == 2

    y2 = y.copy()
    y2[:5] = (y2[:5] + 1) % 3  # relabel five of a's rows: a's key and rows change, b's do not
    grown = featcache.extract(ArraySource(X[:60], y2[:60], ids=ids[:60]), out=a, **TINY)
    rows = featcache.bench([a, b], ["logreg"], out=report, baseline_heads=[], n_jobs=1)
    again = _lines(report)
    assert len(again) == 3 and again[2]["cache_key"] == grown.key  # one new row: a's
    assert again[2]["rows_key"] == grown.rows_key != first[0]["rows_key"]
    assert {r["cache_key"] for r in rows} == {grown.key, featcache.open_cache(b).key}


def test_the_rows_key_follows_the_rows_not_the_shard_size_or_the_files(tmp_path):
    X, y = _arrays(40)
    ids = [f"i{i}" for i in range(40)]
    one = featcache.extract(ArraySource(X, y, ids=ids), out=tmp_path / "one", **TINY)
    other = featcache.extract(ArraySource(X, y, ids=ids), out=tmp_path / "two", **{**TINY, "shard_size": 7})
    assert one.rows_key == other.rows_key
    y2 = y.copy()
    y2[3] = (y2[3] + 1) % 3
    ids2 = ids[:39] + ["renamed"]
    X2 = X.copy()
    X2[0, 0, 0, 0] ^= 1
    keys = {featcache.extract(ArraySource(*args, ids=i), out=tmp_path / n, **TINY).rows_key
            for n, args, i in (("label", (X, y2), ids), ("id", (X, y), ids2), ("bytes", (X2, y), ids))}
    assert len(keys | {one.rows_key}) == 4
