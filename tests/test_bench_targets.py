"""bench of regression and multi-label targets on one real cache of Fashion-MNIST zoom and mosaic tasks."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.bench.targets import DEFAULT_TARGET_HEADS, bench_targets
from featcache.errors import FeatcacheError
from featcache.store import attach_targets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.target_tasks import mosaic_task, zoom_task  # noqa: E402
from tests.conftest import TINY  # noqa: E402


@pytest.fixture(scope="module")
def target_cache(tmp_path_factory, fashion_mnist_available):
    """200 zoomed garments (32 px canvas) with a zoom target and a mosaic-derived multi-label target."""
    from featcache.datasets import load_fashion_mnist

    images, labels, _ = load_fashion_mnist("test", fashion_mnist_available)
    canvases, zoom = zoom_task(images[:200], canvas=32)
    _, present = mosaic_task(images[:400], labels[:400], 200, tile=8)
    cache = featcache.extract(canvases, labels=labels[:200], out=tmp_path_factory.mktemp("tgt") / "cache", **TINY)
    ids = list(cache.ids())
    attach_targets(cache, {"id": ids, "zoom": list(zoom)}, kind="regression")
    tags = {"id": ids, **{f"c{k}": list(present[:, k]) for k in range(present.shape[1])}}
    attach_targets(cache, tags, name="tags", kind="multilabel")
    return cache


def test_rows_per_target_with_baseline_and_one_best(target_cache, tmp_path):
    rows = bench_targets(target_cache, "zoom,tags,label", out=tmp_path)
    by = {}
    for r in rows:
        by.setdefault(r["target"], []).append(r)
    assert set(by) == {"zoom", "tags"}  # label is featcache.bench's own
    for name, kind, base in (("zoom", "regression", "train_mean"), ("tags", "multilabel", "label_frequency")):
        heads = [r["head"] for r in by[name]]
        assert heads == [*DEFAULT_TARGET_HEADS[kind], base]
        assert sum(bool(r.get("best")) for r in by[name]) == 1
        assert not next(r for r in by[name] if r["head"] == base).get("best")
    # a known transform is learnable: ridge beats predicting the train mean
    zr = {r["head"]: r for r in by["zoom"]}
    assert zr["ridge"]["r2"] > zr["train_mean"]["r2"]
    assert zr["ridge"]["r2_lo"] <= zr["ridge"]["r2"] <= zr["ridge"]["r2_hi"]
    with open(tmp_path / "target_results.csv") as f:
        table = list(csv.DictReader(f))
    assert {"target", "r2", "r2_lo", "r2_hi", "map", "subset_accuracy_hi"} <= set(table[0])
    assert len(table) == len(rows)
    md = (tmp_path / "targets.md").read_text()
    assert "## zoom (regression)" in md and "## tags (multilabel)" in md


def test_heads_that_serve_no_kind_are_refused(target_cache):
    with pytest.raises(FeatcacheError, match="serve regression"):
        bench_targets(target_cache, "zoom", heads=["lda"])
    with pytest.raises(FeatcacheError, match="target names"):
        bench_targets(target_cache, "zoom,,tags")
    assert np.isfinite([r["map"] for r in bench_targets(target_cache, "tags", heads=["logreg"])]).all()


def test_cli_bench_target_flag(target_cache, tmp_path):
    from featcache.cli import main

    assert main(["bench", str(target_cache.path), "--target", "zoom", "--out", str(tmp_path / "r")]) == 0
    with open(tmp_path / "r" / "target_results.csv") as f:
        assert [r["head"] for r in csv.DictReader(f)] == ["ridge", "knn", "train_mean"]
