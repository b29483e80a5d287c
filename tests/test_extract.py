"""Stage one end to end: real images, real Keras models, real HDF5 on disk."""

import shutil

import numpy as np
import pytest

import featcache
from featcache import store
from featcache.errors import CacheError

from conftest import TINY, TINY_ARGS, run_featcache, run_here


def test_cli_extract_writes_a_complete_cache(fm_cache):
    out, proc = fm_cache
    assert "extraction summary" in proc.stdout and "600" in proc.stdout
    assert "img/s" in proc.stderr  # the progress bar ran
    # the size the features will take, said once the model is built and before any image runs through it
    assert "2,560 bytes per image: about 1.5 MiB of features for 600 images" in proc.stderr
    assert proc.stderr.index("bytes per image") < proc.stderr.index("img/s")
    cache = featcache.open_cache(out)
    assert cache.complete and len(cache) == 600
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.h5", "00001.h5", "00002.h5"]
    feats = cache.features()
    assert feats.shape == (600, 1280) and feats.dtype == np.float16
    assert np.isfinite(feats).all() and feats.astype(np.float32).std(axis=0).mean() > 1e-3
    assert cache.labels()[:3].tolist() == [9, 2, 1]
    assert cache.ids()[0] == "fashion_mnist/test/0000"
    assert cache.splits()[:2] == ["test", "test"]
    m = cache.manifest
    assert m["format_version"] == 1 and m["counts"] == {"items": 600, "rows": 600, "skipped": 0, "alpha": 0}
    assert [s["rows"] for s in m["shards"]] == [[0, 256], [256, 512], [512, 600]]
    for s in m["shards"]:
        assert store.sha256_path(out / s["file"]) == s["sha256"]
    assert m["params"]["weights"]["kind"] == "random" and m["params"]["image_size"] == [32, 32]
    assert m["versions"]["backend"] == "tensorflow" and m["timings"]["images_computed"] == 600


def test_second_identical_run_is_a_noop(fm_cache):
    out, _ = fm_cache
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    manifest_before = (out / "manifest.json").read_bytes()
    proc = run_here("extract", "fashion_mnist:test", *TINY_ARGS, "--first", "600", "--shard-size", "256",
                         "--out", out)
    assert "nothing to do" in proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    assert (out / "manifest.json").read_bytes() == manifest_before


def test_info_reports_parameters_counts_and_completeness(fm_cache):
    out, _ = fm_cache
    proc = run_here("info", out)
    for text in ("complete", "yes", "mobilenet_v2", "random", "32x32", "Ankle boot", "size on disk"):
        assert text in proc.stdout, text
    # per-class counts add up to the rows
    counts = featcache.open_cache(out).labels()
    assert f"│ 9     │ Ankle boot  │ {int((counts == 9).sum())}" in proc.stdout
    cache = featcache.open_cache(out)  # MobileNetV2's 1,280 pooled features, float16
    assert cache.output_info()["shape"] == [1280] and cache.output_info()["dtype"] == "float16"
    assert f"bytes per image  2,560 (" in proc.stdout and f"for all {cache.n_items:,} items)" in proc.stdout


def test_changed_parameter_is_a_clear_error_and_overwrite_replaces(fm_cache, tmp_path):
    out, _ = fm_cache
    proc = run_here("extract", "fashion_mnist:test", *TINY_ARGS, "--first", "600", "--shard-size", "256",
                         "--pooling", "max", "--out", out, check=False)
    assert proc.returncode == 2
    assert "pooling: cache has 'avg', this run asks for 'max'" in proc.stderr
    assert "--overwrite" in proc.stderr
    assert featcache.open_cache(out).params["pooling"] == "avg"  # nothing was touched
    # a different dataset is named too, under --frozen (without it, the cache would grow)
    proc = run_here("extract", "fashion_mnist:test", *TINY_ARGS, "--first", "300", "--shard-size", "256",
                         "--out", out, "--frozen", check=False)
    assert proc.returncode == 2 and "dataset" in proc.stderr
    # --overwrite on a copy replaces the cache
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    run_here("extract", "fashion_mnist:test", *TINY_ARGS, "--first", "600", "--shard-size", "256",
                  "--pooling", "max", "--out", copy, "--overwrite")
    assert featcache.open_cache(copy).params["pooling"] == "max"


def test_corrupt_image_in_folder_is_skipped_and_reported(photo_folder, copy_folder, tmp_path):
    root = copy_folder(photo_folder)
    (root / "train" / "china" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "train" / "flower" / "zz_empty.png").write_bytes(b"")
    cache, summary = featcache.extract(root, out=tmp_path / "c", return_summary=True, **TINY)
    assert summary.skipped == 2 and len(cache) == 24
    reasons = {s["id"]: s["reason"] for s in cache.skipped}
    assert set(reasons) == {"train/china/zz_broken.jpg", "train/flower/zz_empty.png"}
    assert "empty file" in reasons["train/flower/zz_empty.png"]
    assert cache.manifest["counts"]["skipped"] == 2
    assert "train/china/zz_broken.jpg" not in cache.ids()
    assert sorted(set(cache.splits())) == ["test", "train"]
    info = run_here("info", tmp_path / "c")
    assert "zz_broken.jpg" in info.stdout and "skipped items (2)" in info.stdout


def test_array_source_resize_in_graph_and_outputs(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 255, (40, 20, 24, 3), dtype=np.uint8)
    cache = featcache.extract(imgs, labels=np.arange(40) % 4, out=tmp_path / "a", pooling="none",
                              shard_size=16, **TINY)
    assert cache.params["input_size"] == [20, 24] and cache.params["image_size"] == [32, 32]
    assert cache.features("map").shape == (40, 1, 1, 1280)
    multi = featcache.extract(imgs, labels=np.arange(40) % 4, out=tmp_path / "b",
                              outputs=["block_3_expand_relu", "out_relu"], **TINY)
    assert multi.outputs == ["block_3_expand_relu", "out_relu"]
    assert multi.features("block_3_expand_relu").shape == (40, 144)
    with pytest.raises(CacheError, match="no output 'avg'"):
        multi.features("avg")


def test_user_keras_model_cut_at_a_layer(tmp_path):
    import keras

    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    path = tmp_path / "source_cnn.keras"
    keras.Model(inputs, outputs).save(path)
    imgs = np.random.default_rng(2).integers(0, 255, (10, 24, 24, 3), dtype=np.uint8)
    cache = featcache.extract(imgs, backbone=str(path), layer="conv_a", out=tmp_path / "c")
    assert cache.features().shape == (10, 8)
    assert cache.params["weights"]["kind"] == "keras_file" and len(cache.params["weights"]["sha256"]) == 64
    # the features are the user's layer, pooled: check against Keras directly
    model = keras.saving.load_model(path)
    cut = keras.Model(model.input, model.get_layer("conv_a").output)
    expected = cut.predict(imgs.astype("float32"), verbose=0).mean(axis=(1, 2))
    np.testing.assert_allclose(cache.features().astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(CacheError, match="not empty"):
        featcache.extract(np.zeros((2, 8, 8, 3), np.uint8), out=tmp_path, **TINY)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_backbones_lists_the_registry():
    proc = run_here("backbones")
    for name in ("mobilenet_v2", "resnet50", "efficientnet_b3", "convnext_tiny", "xception", "densenet121"):
        assert name in proc.stdout
    lines = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") > 3}
    assert "no (offline)" in lines["efficientnet_lite0"]
    assert "no (offline)" in lines["mobilenet_v2_torchvision"]
    assert "1280" in lines["efficientnet_lite0"] and "224" in lines["efficientnet_lite0"]


def test_default_backbone_extracts_a_photo_folder_offline(photo_folder, tmp_path):
    """The offline ImageNet default: no --backbone, no network."""
    out = tmp_path / "photos"
    proc = run_featcache("extract", photo_folder, "--out", out, "--quiet",
                         env={"KERAS_HOME": str(tmp_path / "no-keras-cache"), "https_proxy": "http://127.0.0.1:9",
                              "http_proxy": "http://127.0.0.1:9"})
    assert "extraction summary" in proc.stdout
    cache = featcache.open_cache(out)
    assert cache.params["backbone"] == "efficientnet_lite0" and cache.params["weights"]["kind"] == "pth"
    feats = cache.features().astype(np.float32)
    assert feats.shape == (24, 1280)
    # ImageNet features separate the two photos' crops: each crop is closer to its own class's mean
    labels = cache.labels()
    centroids = np.stack([feats[labels == k].mean(0) for k in (0, 1)])
    nearest = np.linalg.norm(feats[:, None] - centroids[None], axis=2).argmin(1)
    assert (nearest == labels).mean() >= 0.9
