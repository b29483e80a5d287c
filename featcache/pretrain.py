"""Source-domain pre-training: train a small CNN on one domain, then use it as a frozen extractor.

``featcache pretrain SOURCE --arch small_cnn --epochs N --out model.keras``
trains on any image source (a class filter makes a source domain out of part
of a dataset) and saves a ``.keras`` model; ``--backbone model.keras
--layer conv3 --pooling none`` then extracts features for another domain.
The last convolutional map is the layer to transfer: the dense ``features``
layer on top of it is tuned to the source classes (on Fashion-MNIST 0-4 ->
5-9, logistic regression on it scored 93.1% on the target test split, raw
pixels 92.7%, the conv3 map 96.1%). The model takes 0..255 float pixels (its
own Rescaling layer normalises), the convention for user backbones.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .errors import FeatcacheError
from .files import atomic_save, atomic_write_bytes
from .params import Param, check, defaults
from .sources import LIMIT_SEED, Source, open_source

ARCHS = {
    "small_cnn": (32, 64, 128),
    "wide_cnn": (64, 128, 256),
}
FEATURE_LAYER = "features"


def transfer_layer(arch: str) -> str:
    """The layer to cut at for another domain: the last convolution (used with pooling none)."""
    return f"conv{len(ARCHS[arch])}"


def build_cnn(arch: str, input_shape, n_classes: int):
    import keras
    from keras import layers

    if arch not in ARCHS:
        raise FeatcacheError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    for i, width in enumerate(ARCHS[arch]):
        # no batch norm: with a few epochs its moving statistics lag and the frozen
        # extractor (inference mode) would see other activations than training did
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        if i < len(ARCHS[arch]) - 1:
            x = layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    # a learned dense representation keeps the spatial layout that global pooling would average away
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, activation="relu", name=FEATURE_LAYER)(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=f"featcache_{arch}")


def _load_all(src: Source) -> tuple[np.ndarray, np.ndarray]:
    size = src.native_size or (64, 64)
    parts, labels = [], []
    for a in range(0, len(src), 1024):
        batch = src.read(src.items[a:a + 1024], size)
        parts.append(batch.images)
        labels += [it.label for it in batch.items]
    return np.concatenate(parts), np.asarray(labels)


def validation_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified train/validation row indices (no validation below 10 rows).

    Not Keras' ``validation_split``, which holds out the *last* rows: on a
    folder source, sorted by class, those are the last class's, so validation
    measures that class alone, and a class smaller than the held-out share is
    never trained on at all.
    """
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    n_val = int(round(len(y) * fraction))
    if len(y) < 10 or n_val < 1:
        return rows, rows[:0]
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 and n_val >= len(counts) else None
    train, val = train_test_split(rows, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(val)


def shuffled_batches(X: np.ndarray, y: np.ndarray, batch_size: int, seed: int, views: np.ndarray | None = None):
    """A Keras ``PyDataset`` that draws a new seeded permutation every epoch.

    Not ``model.fit(X, y, shuffle=True)``: with a seeded run on the TensorFlow
    backend that replays one permutation in every epoch (its tf.data shuffle is
    re-created per epoch from the same seed), which cost about two points of
    accuracy in benchmarks/run.py's figure 3. Batches are cast to float32 one
    at a time, so the uint8 images are never copied whole. With ``views``
    (``(K, len(X), ...)``, a cache's augmented views of each row), each epoch
    shows every row once, as itself or one of its K views
    (:func:`featcache.heads.views.drawing`, as the Keras heads draw them).
    """
    import keras

    from .heads.views import drawing

    def take_plain(idx):
        return X[idx].astype(np.float32)

    draw = None if views is None else drawing(
        take_plain, [lambda idx, V=V: V[idx].reshape((len(idx),) + X.shape[1:]).astype(np.float32) for V in views],
        seed, len(y))

    class _Shuffled(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(y))
            self.take = take_plain if draw is None else draw(0)

        def __len__(self):
            return -(-len(y) // batch_size)

        def __getitem__(self, i):
            idx = np.sort(self.order[i * batch_size:(i + 1) * batch_size])
            return self.take(idx), y[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(y))
            self.take = take_plain if draw is None else draw(self.epoch)

    return _Shuffled()


def _is_ours(out: Path, sidecar: Path) -> bool:
    """An earlier pre-training of featcache's: a file beside our sidecar, which names it."""
    try:
        summary = json.loads(sidecar.read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return out.is_file() and isinstance(summary, dict) and "settings" in summary and "model" in summary


#: every keyword of :func:`pretrain` but the source and out, declared once (``featcache pretrain``'s flags and
#: the pipeline's ``[pretrain]`` table come from here)
PRETRAIN: tuple[Param, ...] = (
    Param("arch", "small_cnn", "the CNN to train", choices=tuple(sorted(ARCHS))),
    Param("epochs", 5, "passes over the training rows", int, minimum=1),
    # the source's flags are extract's too (cli.arguments._add_source_args)
    Param("classes", None, "keep only these labels", int, minimum=0, many=True, cli=False),
    Param("limit", None, "use a sample of N images, stratified by class (and split)", int, minimum=1, cli=False),
    Param("first", None, "use the first N images in source order instead", int, minimum=1, cli=False),
    Param("limit_seed", LIMIT_SEED, "seed of limit's sample", int, cli=False),
    Param("batch_size", 128, "images per step", int, minimum=1),
    Param("learning_rate", 1e-3, "Adam's learning rate", float, minimum=0, bounds="(]"),
    Param("seed", 0, "seeds the validation split, the initialisation and the shuffle", int, minimum=0),
    Param("data_dir", None, "folder to look in first for named datasets", Path, cli=False, pipeline=False),
)
_D = defaults(PRETRAIN)


def pretrain(source, *, arch: str = _D["arch"], epochs: int = _D["epochs"], out, classes=None, limit=None,
             first=None, limit_seed: int = _D["limit_seed"], batch_size: int = _D["batch_size"],
             learning_rate: float = _D["learning_rate"], seed: int = _D["seed"], data_dir=None) -> dict:
    """Train ``arch`` on ``source`` and save it to ``out`` (.keras); returns a summary dict.

    A JSON sidecar (``out`` + ``.json``) records the settings and the source
    fingerprint, so pipelines re-train only when something changed.
    """
    check(PRETRAIN, {"arch": arch, "epochs": epochs, "classes": classes, "limit": limit, "first": first,
                     "limit_seed": limit_seed, "batch_size": batch_size, "learning_rate": learning_rate,
                     "seed": seed, "data_dir": data_dir})
    import keras

    out = Path(out)
    if out.suffix != ".keras":
        raise FeatcacheError(f"pretrain writes a .keras file, not {out.name}")
    src = open_source(source, data_dir=data_dir)
    if classes is not None or limit is not None or first is not None:
        src = src.subset(classes=classes, limit=limit, first=first, limit_seed=limit_seed)
    settings = {"source": src.describe(), "fingerprint": src.fingerprint(), "arch": arch, "epochs": int(epochs),
                "batch_size": int(batch_size), "learning_rate": float(learning_rate), "seed": int(seed),
                # the training protocol: a model trained under an older one is stale (retrained)
                "shuffle": "per epoch", "validation": "stratified 0.1"}
    sidecar = out.with_name(out.name + ".json")
    if out.is_symlink() or os.path.lexists(out) and not _is_ours(out, sidecar):
        raise FeatcacheError(f"--out {out} exists and is not a model featcache pre-trained "
                             f"(no sidecar {sidecar.name}); choose a new file name")
    if out.is_file() and sidecar.is_file():
        try:
            if json.loads(sidecar.read_text()).get("settings") == settings:
                return {**json.loads(sidecar.read_text()), "feature_layer": transfer_layer(arch), "skipped": True}
        except ValueError:
            pass
    X, y = _load_all(src)
    keep = y >= 0
    X, y = X[keep], y[keep]
    if len(X) == 0:
        raise FeatcacheError("the pre-training source has no labelled images")
    classes_ = np.unique(y)
    y_enc = np.searchsorted(classes_, y)
    train_idx, val_idx = validation_split(y_enc, 0.1, int(seed))
    keras.utils.set_random_seed(int(seed))
    model = build_cnn(arch, X.shape[1:], len(classes_))
    model.compile(optimizer=keras.optimizers.Adam(float(learning_rate)), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    t0 = time.perf_counter()
    val = (X[val_idx].astype(np.float32), y_enc[val_idx]) if len(val_idx) else None
    hist = model.fit(shuffled_batches(X[train_idx], y_enc[train_idx], int(batch_size), int(seed)),
                     epochs=int(epochs), validation_data=val, verbose=0)
    seconds = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(out, model.save, ".keras")
    summary = {"settings": settings, "model": str(out), "feature_layer": transfer_layer(arch),
               "classes": classes_.tolist(), "input_shape": list(X.shape[1:]), "seconds": round(seconds, 2),
               "train_accuracy": float(hist.history["accuracy"][-1]),
               "val_accuracy": float(hist.history["val_accuracy"][-1]) if val is not None else None,
               "train_rows": int(len(train_idx)), "val_rows": int(len(val_idx)), "skipped": False}
    atomic_write_bytes(sidecar, (json.dumps(summary, indent=2) + "\n").encode())
    return summary
