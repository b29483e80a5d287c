"""bench's best model is always its row's own protocol's fit, also when the row was kept from an earlier run."""

import shutil

import pytest
from sklearn.frozen import FrozenEstimator

import featcache
from featcache.model_dir import load_model_dir

QUICK = dict(baseline_heads=(), learning_curve=(), leakage=False)


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
