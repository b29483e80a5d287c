"""A grow on the Ray engine: only the new images (and their views) go through the CNN, on the workers."""

import os

import numpy as np
import pytest

import featcache
from featcache import ArraySource

from conftest import TINY

if os.environ.get("CI"):
    import ray  # noqa: F401 - CI installs the ray extra; a missing one must fail, not skip
else:
    pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_ray_grow_computes_only_the_new_images_and_equals_a_fresh_cache(tmp_path):
    rng = np.random.default_rng(11)
    X, y = (rng.random((140, 32, 32, 3)) * 255).astype(np.uint8), rng.integers(0, 3, 140)
    ids = [f"r{i:03d}" for i in range(140)]
    out = tmp_path / "c"
    featcache.extract(ArraySource(X[:110], y[:110], ids=ids[:110]), out=out, views=1, **TINY)
    src = ArraySource(X[10:], y[10:], ids=ids[10:])  # 10 removed, 30 new
    grown, s = featcache.extract(src, out=out, views=1, engine="ray", workers=2, return_summary=True, **TINY)
    timings = grown.manifest["timings"]
    assert s.grow["new"] == 30 and timings["engine"] == "ray"
    new_train = sum(i >= "r110" for i in grown.view_ids(1))
    assert timings["images_computed"] == 30 + new_train  # the new images' plain rows and their views alone
    fresh = featcache.extract(src, out=tmp_path / "fresh", views=1, **TINY)
    assert grown.ids() == fresh.ids() and grown.view_ids(1) == fresh.view_ids(1)
    np.testing.assert_array_equal(grown.features(), fresh.features())
    np.testing.assert_array_equal(grown.views_of(np.arange(len(fresh))), fresh.views_of(np.arange(len(fresh))))
