"""The data side as a Keras or scikit-learn user meets it: samples, splits, adapters, arrays and exports (issue #18)."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

import featcache
from conftest import REPO, SORTED_NAMES as NAMES, TINY, TINY_ARGS, class_sorted_images, run_here
from featcache.errors import FeatcacheError

NOTEBOOK = """
import numpy as np, keras, featcache
rng = np.random.default_rng(0)
images = rng.integers(0, 120, (120, 32, 32, 3), dtype=np.uint8)
names = np.repeat(["cat", "dog", "fox"], 40)                   # sorted by class, as folders are
for k, name in enumerate(["cat", "dog", "fox"]):
    images[names == name, :, :, k] += 120
splits = np.tile(["train"] * 28 + ["val"] * 4 + ["test"] * 8, 3)
cache = featcache.extract(images, labels=names, splits=splits, out="cache", backbone="mobilenet_v2",
                          weights="none", image_size=32, batch_size=32, shard_size=32)
assert cache.class_names == ["cat", "dog", "fox"], cache.class_names

X_train, y_train = cache.split("train")
X_val, y_val = cache.split("val")
assert len(X_train) == 84 and len(X_val) == 12 and np.bincount(y_train).tolist() == [28, 28, 28]
masks = featcache.split_masks(cache)
assert np.array_equal(cache.features()[masks["test"]], cache.split("test")[0])

seen = [i for b in cache.iter_batches(16, split="train", shuffle=True, seed=0) for i in b.ids]
assert sorted(seen) == sorted(np.array(cache.ids())[masks["train"]].tolist())
assert seen != sorted(seen)

train = featcache.keras_dataset(cache, "train", batch_size=16)
assert len(set(train[0][1].tolist())) > 1                       # a batch is not one class
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input(X_train.shape[1:]), keras.layers.Dense(3, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(train, validation_data=featcache.keras_dataset(cache, "val", shuffle=False), epochs=2,
                    verbose=0)
assert len(history.history["val_accuracy"]) == 2
model.fit(featcache.tf_dataset(cache, "train", batch_size=16), epochs=1, verbose=0)

featcache.export_features(cache, "features.npz")
data = np.load("features.npz")
assert data["features"].tobytes() == cache.features().tobytes()
assert data["class_names"].tolist() == ["cat", "dog", "fox"]
assert (data["split"] == "train").sum() == 84
print("NOTEBOOK OK")
"""


@pytest.mark.slow
def test_a_notebook_session_runs_as_a_user_would_write_it(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", NOTEBOOK], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NOTEBOOK OK" in proc.stdout


def _fit_accuracy(x_or_dataset, y, x_test, y_test, init_weights, epochs=12):
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input(x_test.shape[1:]), keras.layers.Dense(10, activation="softmax")])
    model.set_weights(init_weights)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    if y is None:
        model.fit(x_or_dataset, epochs=epochs, shuffle=False, verbose=0)  # the dataset shuffles itself
    else:
        model.fit(x_or_dataset, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    return model.evaluate(x_test, y_test, verbose=0)[1]


@pytest.mark.slow
def test_model_fit_on_the_pydataset_reaches_the_in_memory_accuracy(tmp_path, fashion_mnist_available):
    import keras

    from featcache.datasets import load_arrays

    arrays = load_arrays("fashion_mnist:test")
    order = np.argsort(arrays["labels"][:1500], kind="stable")  # class-sorted: the trap of issue #18
    cache = featcache.extract(arrays["images"][:1500][order], labels=arrays["labels"][:1500][order],
                              class_names=arrays["class_names"], out=tmp_path / "c", shard_size=256, **TINY)
    X_train, y_train = cache.split("train")
    X_test, y_test = cache.split("test")
    scale = float(np.abs(X_train.astype(np.float32)).max())
    X_train, X_test = X_train.astype(np.float32) / scale, X_test.astype(np.float32) / scale
    keras.utils.set_random_seed(0)
    init = keras.Sequential([keras.Input(X_train.shape[1:]), keras.layers.Dense(10)]).get_weights()
    in_memory = _fit_accuracy(X_train, y_train, X_test, y_test, init)

    class Scaled(keras.utils.PyDataset):  # what a user adds on top: here a fixed scale
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            x, y = self.inner[i]
            return x / scale, y

        def on_epoch_end(self):
            self.inner.on_epoch_end()

    dataset = featcache.keras_dataset(cache, "train", batch_size=32, seed=0)
    first_epoch = dataset[0][1].tolist()
    lazy = _fit_accuracy(Scaled(dataset), None, X_test, y_test, init)
    assert dataset.epoch >= 12 and dataset[0][1].tolist() != first_epoch  # reshuffled after each epoch
    assert in_memory > 0.3, in_memory  # well above chance (0.1): the features carry the classes
    assert abs(lazy - in_memory) <= 0.04, (lazy, in_memory)
    # the tf.data adapter too
    tf_ds = featcache.tf_dataset(cache, "train", batch_size=32, seed=0).map(lambda x, y: (x / scale, y))
    via_tf = _fit_accuracy(tf_ds, None, X_test, y_test, init)
    assert abs(via_tf - in_memory) <= 0.04, (via_tf, in_memory)


def test_array_labels_as_names_reach_the_cache_and_its_splits(tmp_path):
    images, labels = class_sorted_images(8)
    splits = np.tile(["train"] * 6 + ["test"] * 2, 3)
    cache = featcache.extract(images, labels=labels, splits=splits, class_names=["fox", "dog", "cat"],
                              out=tmp_path / "c", **TINY)
    assert cache.class_names == ["fox", "dog", "cat"]
    assert cache.labels().tolist() == [2] * 8 + [1] * 8 + [0] * 8
    assert cache.splits() == splits.tolist()
    with pytest.raises(FeatcacheError, match="go with an array"):
        featcache.extract("fashion_mnist:test", labels=[0, 1], out=tmp_path / "d", **TINY)


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".parquet"])
def test_each_export_format_round_trips_bit_for_bit(sorted_cache, tmp_path, suffix):
    cache = sorted_cache
    out = featcache.export_features(cache, tmp_path / f"features{suffix}")
    X = cache.features()
    masks = cache.split_masks()
    expected_split = np.full(len(cache), "", dtype=object)
    for name, m in masks.items():
        expected_split[m] = name
    # read with the format's own library, as another tool would
    if suffix == ".npz":
        with np.load(out) as d:
            features, labels, ids = d["features"], d["labels"], d["ids"].tolist()
            split, class_names = d["split"].tolist(), d["class_names"].tolist()
    elif suffix == ".h5":
        with h5py.File(out, "r") as f:
            features, labels = f["features"][()], f["labels"][()]
            ids = [v.decode() for v in f["ids"][()]]
            split = [v.decode() for v in f["split"][()]]
            class_names = [v.decode() if isinstance(v, bytes) else v for v in f.attrs["class_names"]]
            assert not f["features"].is_virtual
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert table.schema.field("features").type.value_type == pa.float16()
        features = table.column("features").combine_chunks().values.to_numpy().reshape(X.shape)
        labels, ids, split = table.column("label").to_numpy(), table.column("id").to_pylist(), \
            table.column("split").to_pylist()
        assert table.column("class_name").to_pylist()[:1] == ["cat"]
        import json

        class_names = json.loads(table.schema.metadata[b"featcache_export"])["class_names"]
    assert features.dtype == X.dtype and features.shape == X.shape
    assert features.tobytes() == X.tobytes()
    assert labels.tolist() == cache.labels().tolist() and ids == cache.ids()
    assert split == expected_split.tolist() and class_names == NAMES
    back = featcache.load_features(out)
    assert back["features"].tobytes() == X.tobytes() and back["ids"] == cache.ids()
    assert back["record"]["cache_key"] == cache.key
    # ours: replaced; someone else's (or a link): refused untouched
    featcache.export_features(cache, out)
    foreign = tmp_path / f"thesis{suffix}"
    foreign.write_bytes(b"not featcache's")
    with pytest.raises(FeatcacheError, match="not a featcache feature export"):
        featcache.export_features(cache, foreign)
    assert foreign.read_bytes() == b"not featcache's"
    link = tmp_path / f"link{suffix}"
    link.symlink_to(out)
    with pytest.raises(FeatcacheError, match="not a featcache feature export"):
        featcache.export_features(cache, link)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_an_npz_that_another_program_wrote_is_not_replaced(sorted_cache, tmp_path):
    theirs = tmp_path / "theirs.npz"
    np.savez(theirs, features=np.zeros(3))
    before = theirs.read_bytes()
    with pytest.raises(FeatcacheError, match="not a featcache feature export"):
        featcache.export_features(sorted_cache, theirs)
    assert theirs.read_bytes() == before


def test_export_features_on_the_command_line(sorted_cache, tmp_path):
    out = tmp_path / "f.h5"
    proc = run_here("export-features", sorted_cache.path, out)
    assert out.is_file() and str(out) in proc.stdout
    (tmp_path / "notes.h5").write_text("mine")
    proc = run_here("export-features", sorted_cache.path, tmp_path / "notes.h5", check=False)
    assert proc.returncode == 2 and "not a featcache feature export" in proc.stderr
    proc = run_here("export-features", sorted_cache.path, tmp_path / "f.csv", check=False)
    assert proc.returncode == 2 and ".npz, .parquet or .h5" in proc.stderr


@pytest.mark.slow
def test_limit_samples_every_class_of_a_folder_and_first_warns(tmp_path):
    root = tmp_path / "images"
    for k, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.full((8, 8, 3), 40 * i, np.uint8)
            pixels[..., k] = 255
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    proc = run_here("extract", root, *TINY_ARGS, "--first", "6", "--out", tmp_path / "first", "--quiet")
    assert "warning: first=6 keeps 6 images and no image of 2 class(es): dog, fox" in proc.stderr
    assert set(featcache.open_cache(tmp_path / "first").labels().tolist()) == {0}
    proc = run_here("extract", root, *TINY_ARGS, "--limit", "6", "--out", tmp_path / "limit", "--quiet")
    assert "warning" not in proc.stderr
    cache = featcache.open_cache(tmp_path / "limit")
    assert np.bincount(cache.labels()).tolist() == [2, 2, 2]
    assert cache.ids() == sorted(cache.ids())  # source order
    proc = run_here("extract", root, *TINY_ARGS, "--limit", "6", "--first", "6", "--out", tmp_path / "x",
                         check=False)
    assert proc.returncode == 2 and "not both" in proc.stderr and not (tmp_path / "x").exists()
