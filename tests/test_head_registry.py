"""Adding a head is one registration: a HeadSpec holds every fact bench and train read about it."""

import numpy as np
import pytest
from sklearn.neighbors import NearestCentroid

import featcache
from featcache.bench import estimate_seconds
from featcache.errors import FeatcacheError
from featcache.heads import HEADS, HeadSpec, register_head, unregister_head
from featcache.model_dir import load_model_dir

GRID = [None, 0.2, 0.5]


@pytest.fixture
def centroid():
    """A head featcache has never heard of, registered with one call (and removed after the test)."""
    spec = register_head(HeadSpec("centroid", NearestCentroid, "sklearn", "standard", "nearest centroid",
                                  grid={"shrink_threshold": GRID}, row_cap=60, cost_10k=123.0))
    yield spec
    unregister_head("centroid")


def test_a_registered_head_is_benched_end_to_end_in_its_own_process(small_cache, centroid, tmp_path):
    out = tmp_path / "r"
    rows = featcache.bench(small_cache, ["centroid", "lda"], out=out, baseline_heads=(), learning_curve=(),
                           leakage=False, params={"lda": {}})
    row = {r["head"]: r for r in rows}["centroid"]
    assert row["status"] == "ok", row
    assert row["best_params"]["shrink_threshold"] in GRID  # its grid, chosen on val
    assert "train subsampled to 60 images" in row["note"]  # its row cap
    assert row["fit_splits"] == ["train", "val"]  # a grid's choice is refit on train+val
    assert 0 <= row["accuracy"] <= 1 and row["accuracy_ci"]
    best = max((r for r in rows if r["status"] == "ok"), key=lambda r: r["val_accuracy"])
    _, card = load_model_dir(out / "best_model")
    assert card["head"] == best["head"]


def test_a_registered_head_trains_saves_and_predicts(small_cache, centroid, tmp_path):
    result = featcache.train(small_cache, "centroid", params={"shrink_threshold": 0.2}, out=tmp_path / "m")
    assert result.card["head"] == "centroid" and result.card["preprocess"] == "standard"
    assert 0 <= result.metrics["test"]["accuracy"] <= 1
    labels = featcache.predict(tmp_path / "m", small_cache.path, return_as="labels")
    assert {str(v) for v in np.asarray(labels).tolist()} <= {"0", "1", "2"}  # the class names


def test_the_estimate_reads_the_registered_cost(centroid):
    assert estimate_seconds(["centroid"], 50, 200 * 1280) == pytest.approx(1.5 + 123.0)  # its cost, unscaled
    assert estimate_seconds(["centroid"], 10_000, 1280) == estimate_seconds(["centroid"], 10 ** 6, 1280)  # capped


def test_a_name_is_registered_once_and_a_bad_spec_is_refused(centroid):
    with pytest.raises(FeatcacheError, match="already registered"):
        register_head(HeadSpec("centroid", NearestCentroid, "sklearn", "none", "another"))
    with pytest.raises(FeatcacheError, match="selection must be one of"):
        HeadSpec("x", NearestCentroid, "sklearn", "none", "x", selection="best guess")
    with pytest.raises(FeatcacheError, match="path_param"):
        HeadSpec("x", NearestCentroid, "sklearn", "none", "x", selection="path")
    unregister_head("centroid")
    assert "centroid" not in HEADS
