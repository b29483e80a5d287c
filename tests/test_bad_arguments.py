"""Bad arguments, through the real CLI: one line naming the problem, exit code 2, no traceback, nothing written."""

import json

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.plan import ExtractOptions
from featcache.errors import FeatcacheError
from featcache.model_dir import load_model_dir

from conftest import REPO, TINY, TINY_ARGS, run_here


def assert_refused(proc, message):
    """Exit 2 with one ``error:`` line that says ``message``, and no Python traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ") or ": error: " in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """40 random images, two classes, through the tiny random MobileNetV2."""
    images = np.random.default_rng(1).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    return featcache.extract(images, labels=np.arange(40) % 2, out=tmp_path_factory.mktemp("c") / "cache", **TINY)


# --------------------------------------------------------------------------- extract


@pytest.mark.parametrize("flag, value, message", [
    ("--decode-threads", "-1", "decode_threads must be an integer of at least 1, got -1"),
    ("--decode-threads", "0", "decode_threads must be an integer of at least 1, got 0"),
    ("--jit", "banana", "argument --jit: invalid choice: 'banana'"),
    ("--wait", "-3", "wait must be a number of seconds >= 0, got -3.0"),
])
def test_extract_refuses_a_bad_option_before_writing(folder, tmp_path, flag, value, message):
    proc = run_here("extract", folder, *TINY_ARGS, flag, value, "--out", tmp_path / "c", "--quiet", check=False)
    assert_refused(proc, message)
    assert not (tmp_path / "c").exists()


def test_extract_options_are_checked_for_the_python_api_too(tmp_path):
    for bad in (dict(decode_threads=0), dict(decode_threads=-1), dict(jit="banana"), dict(batch_size="64"),
                dict(prefetch=2.5), dict(image_size=(32, 0)), dict(image_size=True)):
        with pytest.raises(FeatcacheError):
            ExtractOptions(**bad).check()
    for good in (dict(jit=True), dict(jit="false"), dict(decode_threads=2), dict(image_size=(32, 48))):
        ExtractOptions(**good).check()
    images = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(FeatcacheError, match="wait must be"):
        featcache.extract(images, labels=[0, 1, 0, 1], out=tmp_path / "c", wait=-1, **TINY)
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- train


@pytest.mark.parametrize("args, message", [
    (["--param", "C=abc"], "invalid parameter for head 'logreg': The 'C' parameter of LogisticRegression must be a "
                           "float in the range (0.0, inf]. Got 'abc' instead."),
    (["--param", "C=-1"], "The 'C' parameter of LogisticRegression must be a float in the range (0.0, inf]. Got -1"),
    (["--head", "keras_linear", "--param", "epochs=-1"],
     "invalid parameter for head 'keras_linear': The 'epochs' parameter of KerasHeadClassifier must be an int in the "
     "range [1, inf). Got -1 instead."),
    (["--preprocess", "pca:abc"], "preprocess 'pca:abc': in 'pca:abc', N must be a number of components"),
    (["--preprocess", "pca:0"], "preprocess 'pca:0': in 'pca:0', N must be a number of components"),
    (["--head", "keras_mlp", "--preprocess", "standard"], "use preprocess 'none'"),
])
def test_train_refuses_bad_head_settings_before_any_work(cache, tmp_path, args, message):
    proc = run_here("train", cache.path, *args, "--out", tmp_path / "m", check=False)
    assert_refused(proc, message)
    assert not (tmp_path / "m").exists()


def test_train_hidden_as_an_int_means_one_hidden_layer(cache, tmp_path):
    run_here("train", cache.path, "--head", "keras_linear", "--param", "hidden=8", "--param", "epochs=2",
                  "--out", tmp_path / "m")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["head_params"] == {"hidden": 8, "epochs": 2} and card["keras_head"]["params"]["hidden"] == 8
    pipe, _card = load_model_dir(tmp_path / "m")
    dense = pipe.steps[-1][1].model_.get_layer("dense_0")  # one hidden layer of 8 units, then the softmax
    assert [w.shape for w in dense.get_weights()] == [(cache.features().shape[1], 8), (8,)]


def test_train_a_head_the_cache_cannot_satisfy_is_one_line(cache, tmp_path):
    proc = run_here("train", cache.path, "--head", "knn", "--param", "n_neighbors=1000", "--out", tmp_path / "m",
                         check=False)
    assert_refused(proc, "head 'knn' cannot be trained on this cache: Expected n_neighbors <= n_samples_fit")
    assert not (tmp_path / "m").exists()
    one_each = featcache.extract(np.random.default_rng(2).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
                                 labels=[0, 1, 2, 3], out=tmp_path / "one", **TINY)
    proc = run_here("train", one_each.path, "--head", "lda", "--out", tmp_path / "m", check=False)
    assert_refused(proc, "head 'lda' cannot be trained on this cache: The number of samples must be more than the "
                         "number of classes.")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- bench


@pytest.mark.parametrize("args, message", [
    (["--n-jobs", "0"], "n_jobs must be a non-zero integer (-1: every CPU), got 0"),
    (["--timeout", "-1"], "timeout must be a number > 0 (or None), got -1.0"),
])
def test_bench_refuses_bad_settings_before_any_work(cache, tmp_path, args, message):
    proc = run_here("bench", cache.path, "--heads", "logreg", *args, "--out", tmp_path / "r", check=False)
    assert_refused(proc, message)
    assert not (tmp_path / "r").exists()


def test_bench_checks_every_setting_and_head_parameter_up_front(cache, tmp_path):
    bad = [dict(cv=1), dict(cv=2.5), dict(pixel_size=0), dict(timeout=float("nan")), dict(timeout=float("inf")),
           dict(n_jobs=True), dict(backend="nope"), dict(params={"knn": {"n_neighbors": -3}}),
           dict(baseline_heads=("xgboost",))]
    for kw in bad:
        with pytest.raises(FeatcacheError):
            featcache.bench(cache.path, ["logreg", "knn"], out=tmp_path / "r", **kw)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- predict


def test_predict_help_and_readme_say_a_model_directory_is_code():
    sentence = "a model directory is code (a scikit-learn head is a pickle)"
    proc = run_here("predict", "--help")
    assert sentence in " ".join(proc.stdout.lower().split()) and "someone you trust" in " ".join(proc.stdout.split())
    readme = (REPO / "README.md").read_text()
    tour = readme.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    assert sentence in " ".join(tour.lower().split()) and "featcache predict" in tour
