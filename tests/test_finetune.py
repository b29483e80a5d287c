"""Top-block fine-tuning from cached maps: trains the block above the cut, keeps BatchNorm frozen, exports whole."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import featcache
from featcache.errors import FeatcacheError

from conftest import TINY, run_here

CUT = "block_15_add"  # MobileNetV2: block 16, Conv_1 and its BatchNorm lie above it


@pytest.fixture(scope="module")
def map_cache(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 90
    labels = np.arange(n) % 3
    imgs = rng.integers(0, 70, (n, 32, 32, 3)).astype(np.uint8)
    imgs[labels == 1, :16] += 150  # the classes differ in where the light is, not only how much
    imgs[labels == 2, :, :16] += 150
    d = tmp_path_factory.mktemp("ft")
    cache = featcache.extract(imgs, labels=labels, out=d / "cache", outputs=[CUT], pooling="none", **TINY)
    return cache, imgs, labels


def _bn_stats(model):
    import keras

    out = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            out[layer.name] = [np.asarray(w).copy() for w in layer.weights]
    return out


@pytest.mark.slow
def test_finetune_trains_the_block_keeps_batchnorm_and_exports_the_cached_route(map_cache, tmp_path):
    from featcache.finetune import build_top
    from featcache.model_dir import load_model_dir

    cache, imgs, labels = map_cache
    proc = run_here("finetune", cache.path, "--epochs", "6", "--head-epochs", "4", "--out", tmp_path / "ft")
    assert "top block above block_15_add" in proc.stdout
    card = json.loads((tmp_path / "ft" / "card.json").read_text())
    assert card["head"] == "finetune" and card["finetune"]["from_layer"] == CUT
    assert [h["phase"] for h in card["finetune"]["history"]] == ["head", "block+head"]
    pipe, _ = load_model_dir(tmp_path / "ft")
    tuned = pipe.steps[-1][1].model_
    fresh = build_top(cache, CUT)
    # BatchNorm: statistics and scale exactly the backbone's (the fine-tuning trap, keras-team/keras#9214)
    before, after = _bn_stats(fresh), _bn_stats(tuned)
    assert before and set(before) <= set(after)
    for name, weights in before.items():
        for a, b in zip(weights, after[name]):
            np.testing.assert_array_equal(a, b)
    # ... while the block's convolutions did train
    conv = [w for w in fresh.get_layer("block_16_project").weights]
    tuned_conv = tuned.get_layer("featcache_top_block").get_layer("block_16_project").weights
    assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(conv, tuned_conv))
    assert card["metrics"]["test"]["accuracy"] > 0.5  # three classes: chance is a third
    # one end-to-end model: raw images in, the cached route's probabilities out, in a process without featcache
    run_here("export", tmp_path / "ft", tmp_path / "ft.keras")
    np.save(tmp_path / "x.npy", imgs[:12])
    code = ("import sys, numpy as np, keras; m = keras.models.load_model(sys.argv[1]); "
            "assert 'featcache' not in sys.modules; np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))")
    run = subprocess.run([sys.executable, "-c", code, tmp_path / "ft.keras", tmp_path / "x.npy", tmp_path / "p.npy"],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr
    cached = featcache.predict(tmp_path / "ft", imgs[:12], cache_dir=tmp_path / "pc", return_as="proba")
    # the cached route's maps may come from OpenVINO (cosine >= 0.9999 to Keras'): agreement, not bits
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), cached, atol=1e-4)


def test_finetune_refuses_pooled_caches_and_unknown_layers_in_one_line(tmp_path, map_cache):
    cache, imgs, labels = map_cache
    pooled = featcache.extract(imgs[:30], labels=labels[:30], out=tmp_path / "pooled", **TINY)
    with pytest.raises(FeatcacheError, match="holds pooled features .* --outputs LAYER --pooling none"):
        featcache.finetune(pooled)
    with pytest.raises(FeatcacheError, match="holds no map of layer 'block_3_add'"):
        featcache.finetune(cache, from_layer="block_3_add")
    with pytest.raises(FeatcacheError, match="learning_rate must be a number > 0"):
        featcache.finetune(cache, learning_rate=0)
    proc = run_here("finetune", pooled.path, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
