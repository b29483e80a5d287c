"""bench's best model is always its row's own protocol's fit, also when the row was kept from an earlier run."""

import shutil

import numpy as np
import pytest
from sklearn.frozen import FrozenEstimator

import featcache
from featcache.model_dir import load_model_dir

from conftest import TINY

QUICK = dict(baseline_heads=(), learning_curve=(), leakage=False)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    """Three classes of random 16 px images, brightness per class plus noise, 150 rows."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (150, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(150) % 3
    images[labels == 1] //= 2
    images[labels == 2] //= 4
    return featcache.extract(images, labels=labels, out=tmp_path_factory.mktemp("best") / "cache", **TINY)


def test_a_kept_best_row_without_its_fit_is_fitted_again_by_its_own_protocol(small_cache, tmp_path):
    out = tmp_path / "r"
    rows = featcache.bench(small_cache, ["ridge"], out=out, **QUICK)
    assert rows[0]["status"] == "ok", rows
    shutil.rmtree(out / "best_model")  # the row is kept; its fit is gone with the run that made it
    again = featcache.bench(small_cache, ["ridge"], out=out, **QUICK)
    assert again[0]["settings"] == rows[0]["settings"]  # nothing ran again as a row
    pipe, card = load_model_dir(out / "best_model")
    clf = pipe.steps[-1][1]
    # calibrated on val around the frozen train fit, as the row was: not a 3-fold calibration refit
    assert isinstance(clf.estimator, FrozenEstimator) and clf.method == "temperature"
    assert card["fit_splits"] == rows[0]["fit_splits"] == ["train"]
    assert card["metrics"]["test"]["accuracy"] == pytest.approx(rows[0]["accuracy"])
    assert card["head_params"] == rows[0]["best_params"]
