"""Source-domain pre-training: the training loop's batches and validation rows."""

import json

import numpy as np
from PIL import Image

from featcache.pretrain import pretrain, shuffled_batches, validation_split


def test_fit_sees_a_new_seeded_permutation_every_epoch():
    """Keras' own ``fit(X, y, shuffle=True)`` under a fixed seed replays one permutation on TensorFlow."""
    import keras

    def batches_fit_sees(seed):
        seen = []

        class Recorder(keras.Model):
            def train_step(self, data):
                seen.append(sorted(np.asarray(data[0]).ravel().astype(int).tolist()))
                return {"n": 0.0}

        keras.utils.set_random_seed(0)
        inputs = keras.Input((1,))
        model = Recorder(inputs, keras.layers.Dense(1)(inputs))
        model.compile("sgd", "mse", run_eagerly=True)
        model.fit(shuffled_batches(np.arange(24).reshape(-1, 1), np.zeros(24), 8, seed), epochs=3, verbose=0)
        return [seen[e * 3:(e + 1) * 3] for e in range(3)]

    epochs = batches_fit_sees(seed=5)
    assert len(epochs) == 3
    for batches in epochs:  # every epoch is a permutation of all rows in batches of 8
        assert sorted(sum(batches, [])) == list(range(24)) and all(len(b) == 8 for b in batches)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert batches_fit_sees(seed=5) == epochs
    assert batches_fit_sees(seed=6) != epochs


def test_validation_rows_are_stratified_and_seeded():
    y = np.repeat([0, 1, 2], 20)  # sorted by class, as a folder source is
    train, val = validation_split(y, 0.1, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(60))
    assert len(val) == 6 and np.bincount(y[val]).tolist() == [2, 2, 2]
    assert np.array_equal(validation_split(y, 0.1, seed=0)[1], val)
    assert not np.array_equal(validation_split(y, 0.1, seed=1)[1], val)
    train, val = validation_split(y[:8], 0.1, seed=0)
    assert len(val) == 0 and len(train) == 8


def test_pretrain_on_a_class_sorted_folder_trains_on_every_class(tmp_path):
    """Keras' validation_split holds out the last rows: here, every image of the small last class."""
    import keras

    rng = np.random.default_rng(0)

    def images(grey, n):
        return np.clip(grey + rng.normal(0, 15, (n, 16, 16, 3)), 0, 255).astype(np.uint8)

    for name, grey, n in (("dark", 50, 36), ("pale", 200, 4)):  # folder order: the pale class comes last
        (tmp_path / "images" / name).mkdir(parents=True)
        for i, px in enumerate(images(grey, n)):
            Image.fromarray(px).save(tmp_path / "images" / name / f"{i}.png")
    summary = pretrain(str(tmp_path / "images"), epochs=10, batch_size=8, learning_rate=3e-3,
                       out=tmp_path / "cnn.keras")
    assert (summary["train_rows"], summary["val_rows"]) == (36, 4)
    model = keras.saving.load_model(tmp_path / "cnn.keras")
    fresh = np.concatenate([images(50, 8), images(200, 8)])
    fresh = np.stack([np.asarray(Image.fromarray(px).resize((64, 64))) for px in fresh]).astype(np.float32)
    assert model.predict(fresh, verbose=0).argmax(1).tolist() == [0] * 8 + [1] * 8
    again = pretrain(str(tmp_path / "images"), epochs=10, batch_size=8, learning_rate=3e-3,
                     out=tmp_path / "cnn.keras")
    assert again["skipped"] and again["val_accuracy"] == summary["val_accuracy"]
    # a model trained under the old protocol (its sidecar predates "shuffle"/"validation") is retrained
    sidecar = tmp_path / "cnn.keras.json"
    old = json.loads(sidecar.read_text())
    del old["settings"]["shuffle"], old["settings"]["validation"]
    sidecar.write_text(json.dumps(old))
    redone = pretrain(str(tmp_path / "images"), epochs=10, batch_size=8, learning_rate=3e-3,
                      out=tmp_path / "cnn.keras")
    assert not redone["skipped"] and json.loads(sidecar.read_text())["settings"]["shuffle"] == "per epoch"
