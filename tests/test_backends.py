"""Stage one runs under JAX too, with the same features as under TensorFlow."""

import importlib.util

import numpy as np
import pytest

import featcache

from conftest import TINY_ARGS, run_featcache, run_here


@pytest.mark.jax
@pytest.mark.slow
def test_jax_backend_gives_the_same_features_as_tensorflow(tmp_path, fashion_mnist_available):
    if importlib.util.find_spec("jax") is None:
        pytest.fail("jax must be installed in the test environment (pip install -e .[test])")
    args = ["extract", "fashion_mnist:test", *TINY_ARGS, "--limit", "200", "--shard-size", "128", "--quiet"]
    run_here(*args, "--out", tmp_path / "tf")  # this process runs TensorFlow (conftest): only JAX needs a fresh one
    run_featcache(*args, "--out", tmp_path / "jax", env={"KERAS_BACKEND": "jax"})
    tf_cache, jax_cache = featcache.open_cache(tmp_path / "tf"), featcache.open_cache(tmp_path / "jax")
    assert tf_cache.manifest["versions"]["backend"] == "tensorflow"
    assert jax_cache.manifest["versions"]["backend"] == "jax"
    assert tf_cache.key == jax_cache.key  # the backend does not change what the features are
    a = tf_cache.features().astype(np.float32)
    b = jax_cache.features().astype(np.float32)
    assert a.std() > 1e-3  # the comparison is not between two arrays of zeros
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2 * float(np.abs(a).max()))
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.9999
    assert tf_cache.ids() == jax_cache.ids()


_PORTED_UNDER_JAX = """
import numpy as np
from featcache.backbones.testing import check_matches_reference
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
ref = np.load("tests/fixtures/torch_reference.npz")
check_matches_reference("efficientnet_lite0", ref["images"][:3], ref["lite0_pooled"][:3])
check_matches_reference("mobilenet_v2_torchvision", ref["images"][:3], ref["mobilenet_v2_pooled"][:3])
print("ported backbones match PyTorch under", keras.backend.backend())
"""


@pytest.mark.jax
@pytest.mark.slow
def test_offline_backbones_match_pytorch_under_jax():
    import os
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run([sys.executable, "-c", _PORTED_UNDER_JAX], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "match PyTorch under jax" in proc.stdout
