"""bench of regression and multi-label targets on one real cache of Fashion-MNIST zoom and mosaic tasks."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache.bench.targets import DEFAULT_TARGET_HEADS, PIXEL_HEADS, bench_targets
from featcache.errors import FeatcacheError
from featcache.store import attach_targets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.target_tasks import mosaic_task, zoom_task  # noqa: E402
from tests.conftest import TINY  # noqa: E402


@pytest.fixture(scope="module")
def target_cache(tmp_path_factory, fashion_mnist_available):
    """200 zoomed garments (32 px PNGs in class folders, so the pixel baseline can read them again) with a
    zoom target and a mosaic-derived multi-label target."""
    from PIL import Image

    from featcache.datasets import load_fashion_mnist

    images, labels, _ = load_fashion_mnist("test", fashion_mnist_available)
    canvases, zoom = zoom_task(images[:200], canvas=32)
    _, present = mosaic_task(images[:400], labels[:400], 200, tile=8)
    root = tmp_path_factory.mktemp("tgt")
    for i, (img, lab) in enumerate(zip(canvases, labels[:200])):
        (root / "png" / f"c{lab}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "png" / f"c{lab}" / f"{i:04d}.png")
    cache = featcache.extract(str(root / "png"), out=root / "cache", **TINY)
    ids = list(cache.ids())
    row = [int(Path(i).stem) for i in ids]  # each image's index in the task arrays
    attach_targets(cache, {"id": ids, "zoom": list(zoom[row])}, kind="regression")
    tags = {"id": ids, **{f"c{k}": list(present[row, k]) for k in range(present.shape[1])}}
    attach_targets(cache, tags, name="tags", kind="multilabel")
    return cache


def test_rows_per_target_with_baseline_and_one_best(target_cache, tmp_path):
    rows = bench_targets(target_cache, "zoom,tags,label", out=tmp_path)
    by = {}
    for r in rows:
        by.setdefault(r["target"], []).append(r)
    assert set(by) == {"zoom", "tags"}  # label is featcache.bench's own
    for name, kind, base in (("zoom", "regression", "train_mean"), ("tags", "multilabel", "label_frequency")):
        heads = [(r["head"], r["features"]) for r in by[name]]
        pixel_head = PIXEL_HEADS[kind]  # the default baseline head, logreg, fits classes only: its kind's own
        assert heads == [*[(h, "cache") for h in DEFAULT_TARGET_HEADS[kind]], (pixel_head, "pixels 16x16"),
                         (base, "-")]
        assert sum(bool(r.get("best")) for r in by[name]) == 1
        assert not any(r.get("best") for r in by[name] if r["baseline"])  # neither pixels nor the trivial one
        px = next(r for r in by[name] if r["features"].startswith("pixels"))
        assert px["status"] == "ok" and px["baseline"]
    # a known transform is learnable (on val: 36 test rows of random-weight features are too few to promise)
    zr = {r["head"]: r for r in by["zoom"] if r["features"] != "pixels 16x16"}
    assert zr["ridge"]["val_r2"] > zr["train_mean"]["val_r2"]
    assert zr["ridge"]["r2_lo"] <= zr["ridge"]["r2"] <= zr["ridge"]["r2_hi"]
    # the pixel baseline is the same head fitted by hand on the raw 16x16 pixels of the same rows
    from sklearn.metrics import r2_score

    from featcache.bench.pixels import pixel_features
    from featcache.store import split_masks

    t = target_cache.target("zoom")
    m = {s: v & t.mask for s, v in split_masks(target_cache).items()}
    X = pixel_features(target_cache, 16)
    ridge = next(r for r in by["zoom"] if r["features"] == "pixels 16x16")["pipe"]
    ours = next(r for r in by["zoom"] if r["features"] == "pixels 16x16")["r2"]
    assert ours == pytest.approx(r2_score(t.values[m["test"]], ridge.predict(X[m["test"]])))
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
        assert [(r["head"], r["features"]) for r in csv.DictReader(f)] == [
            ("ridge", "cache"), ("knn", "cache"), ("ridge", "pixels 16x16"), ("train_mean", "-")]
    assert main(["bench", str(target_cache.path), "--target", "zoom", "--baseline-heads", "",
                 "--out", str(tmp_path / "r2")]) == 0
    with open(tmp_path / "r2" / "target_results.csv") as f:
        assert [r["head"] for r in csv.DictReader(f)] == ["ridge", "knn", "train_mean"]


def test_arrays_have_no_pixel_baseline_and_say_so(tmp_path, fashion_mnist_available):
    from featcache.datasets import load_fashion_mnist
    from featcache.errors import FeatcacheWarning

    images, _, _ = load_fashion_mnist("test", fashion_mnist_available)
    canvases, zoom = zoom_task(images[:60], canvas=32)
    cache = featcache.extract(canvases, out=tmp_path / "c", **TINY)
    attach_targets(cache, {"id": list(cache.ids()), "zoom": list(zoom)}, kind="regression")
    with pytest.warns(FeatcacheWarning, match="no raw-pixel baseline"):
        rows = bench_targets(cache, "zoom", heads=["ridge"])
    assert [r["head"] for r in rows] == ["ridge", "train_mean"]


def test_report_has_a_section_and_plots_per_target_kept_by_a_later_report(target_cache, tmp_path):
    from featcache.report import write_report

    bench_targets(target_cache, "zoom,tags", heads=["ridge", "logreg"], out=tmp_path)
    page, md = (tmp_path / "report.html").read_text(), (tmp_path / "report.md").read_text()
    for f in ("target_zoom_predicted.png", "target_zoom_residuals.png", "target_zoom_deciles.png",
              "target_tags_ap.png", "target_tags_pr.png"):
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG" and f"![{f}]({f})" in md
    assert "<h2>zoom (regression), test split</h2>" in page and page.count("data:image/png;base64,") == 5
    assert "## tags (multilabel), test split" in md and "pixels 16x16" in md
    write_report(tmp_path, [])  # a later label bench rewrites the report: the targets section stays, once
    page = (tmp_path / "report.html").read_text()
    assert page.count("<h2>zoom (regression), test split</h2>") == 1 and page.rstrip().endswith("</html>")
    bench_targets(target_cache, "zoom", heads=["ridge"], out=tmp_path)  # a new targets run replaces it
    md = (tmp_path / "report.md").read_text()
    assert md.count("# Targets") == 1 and "tags (multilabel)" not in md and "# featcache benchmark" in md
