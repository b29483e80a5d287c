"""featcache compare: one extraction per candidate through the normal path (caches keyed as usual), one bench
with repeats on the same draws, one recommendation by the best-row rule with the paired test as its evidence,
LogME and the extraction cost beside it; bad candidates refused in one line before any work."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import class_sorted_images, run_here
from featcache.bench.select import best_row
from featcache.bench.stats import corrected_ttest

CANDIDATES = "mobilenet_v2,mobilenet_v2:block_3_expand_relu"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """120 images of three classes (one bright channel each) in class folders: hash splits, no source split."""
    root = tmp_path_factory.mktemp("cmp") / "images"
    images, labels = class_sorted_images(n_per_class=40, size=32)
    for i, (img, name) in enumerate(zip(images, labels)):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def compared(folder, tmp_path_factory):
    work = tmp_path_factory.mktemp("cmp-run")
    proc = run_here("compare", folder, "--backbones", CANDIDATES, "--weights", "none", "--image-size", "32",
                    "--sample", "0", "--repeats", "3", "--heads", "logreg,knn_cosine", "--quiet", cwd=work)
    return work, proc


def test_one_recommendation_by_the_best_row_rule_with_the_paired_test_on_the_same_draws(compared):
    work, proc = compared
    doc = json.loads((work / "compare" / "compare.json").read_text())
    rows = json.loads((work / "compare" / "bench" / "results.json").read_text())
    best = best_row(rows)
    assert [r["verdict"] for r in doc["rows"]].count("best") == 1
    winner = next(r for r in doc["rows"] if r["verdict"] == "best")
    assert winner["cache"] == best["cache"] and winner["head"] == best["head"] == winner["head"]
    assert doc["recommended"] == winner["backbone"] and f"use {winner['backbone']}" in proc.stdout
    other = next(r for r in doc["rows"] if r["verdict"] != "best")
    assert other["verdict"] in ("tie", "below")
    mine = best_row([r for r in rows if r["cache"] == other["cache"]])
    assert mine["draws_key"] == best["draws_key"] and len(best["val_draws"]) == 3  # paired: the same rows drawn
    assert other["p_value"] == pytest.approx(corrected_ttest(best["val_draws"], mine["val_draws"], best["val_ratio"]))
    assert other["verdict"] == ("tie" if other["p_value"] >= 0.05 else "below")


def test_each_row_has_logme_and_the_measured_cost_of_extracting_everything(compared):
    work, _ = compared
    doc = json.loads((work / "compare" / "compare.json").read_text())
    assert doc["images"] == doc["sample"] == 120
    for r in doc["rows"]:
        assert np.isfinite(r["logme"]) and r["logme_seconds"] < 30
        assert r["images_per_s"] > 0 and r["all_seconds"] > 0
    assert "Recommendation:" in (work / "compare" / "compare.md").read_text()


def test_the_candidates_caches_are_the_normal_extract_path_s(compared, folder):
    work, _ = compared
    doc = json.loads((work / "compare" / "compare.json").read_text())
    cut = next(r for r in doc["rows"] if r["backbone"].endswith(":block_3_expand_relu"))
    again = run_here("extract", folder, "--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32",
                     "--layer", "block_3_expand_relu", "--out", cut["cache"], "--quiet", cwd=work)
    assert "nothing to do" in again.stdout
    rerun = run_here("compare", folder, "--backbones", CANDIDATES, "--weights", "none", "--image-size", "32",
                     "--sample", "0", "--repeats", "3", "--heads", "logreg,knn_cosine", "--quiet", cwd=work)
    assert json.loads((work / "compare" / "compare.json").read_text())["recommended"] == doc["recommended"]
    assert "use " in rerun.stdout


@pytest.mark.parametrize("backbones, message", [
    ("mobilenet_v2,nosuch", "unknown backbone 'nosuch'"),
    ("mobilenet_v2,missing.keras", "no such .keras file"),
    ("mobilenet_v2,mobilenet_v2", "named twice"),
    ("mobilenet_v2", "two or more backbones"),
])
def test_a_bad_candidate_is_one_line_before_any_work(folder, tmp_path, backbones, message):
    proc = run_here("compare", folder, "--backbones", backbones, "--weights", "none", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_head_or_a_foreign_out_is_refused_before_any_extraction(folder, tmp_path):
    proc = run_here("compare", folder, "--backbones", CANDIDATES, "--heads", "logreg,nohead", check=False,
                    cwd=tmp_path)
    assert proc.returncode == 2 and "nohead" in proc.stderr and list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    proc = run_here("compare", folder, "--backbones", CANDIDATES, "--out", "mine", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "holds no featcache comparison" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
