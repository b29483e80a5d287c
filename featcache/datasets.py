"""Named datasets: ``fashion_mnist``, ``cifar10``, ``cifar100`` (``:train`` / ``:test``).

Fashion-MNIST never needs the network when a copy is on disk: it is looked
for in the folder the user names (``data_dir`` or ``$FEATCACHE_DATA``), then
Debian's ``dataset-fashion-mnist`` package, then the Keras cache, and only
then downloaded through ``keras.datasets``. CIFAR loads through
``keras.datasets`` (its cache, else a download).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .errors import SourceError
from .homes import keras_home

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_NAMES = ("fashion_mnist", "cifar10", "cifar100")
SPLITS = ("train", "test")


def names() -> list[str]:
    return list(_NAMES)


def is_dataset_name(text: str) -> bool:
    return text.split(":", 1)[0] in _NAMES


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST format)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)  # at once, not through GzipFile's small reads: every run opens the dataset
        except (EOFError, OSError, zlib.error) as exc:
            raise SourceError(f"{path} is not a readable gzip file: {exc}") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise SourceError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SourceError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def fashion_mnist_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order."""
    dirs = []
    for d in (data_dir, os.environ.get("FEATCACHE_DATA")):
        if d:
            dirs += [Path(d), Path(d) / "fashion-mnist"]
    dirs.append(DEBIAN_FASHION_MNIST)
    dirs.append(keras_home() / "datasets" / "fashion-mnist")
    return dirs


def load_fashion_mnist(split: str, data_dir=None) -> tuple[np.ndarray, np.ndarray, str]:
    """Return (images N x 28 x 28 uint8, labels, where they came from)."""
    img_name, lab_name = _FILES[split]
    for d in fashion_mnist_dirs(data_dir):
        if (d / img_name).is_file() and (d / lab_name).is_file():
            return _read_idx(d / img_name), _read_idx(d / lab_name).astype(np.int64), str(d)
    try:
        import keras

        (xtr, ytr), (xte, yte) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:
        searched = ", ".join(str(d) for d in fashion_mnist_dirs(data_dir))
        raise SourceError(
            f"Fashion-MNIST is not on disk (looked in {searched}) and the download failed: {exc}. "
            "Install Debian's dataset-fashion-mnist or pass data_dir=/--data-dir."
        ) from None
    return (xtr, ytr.astype(np.int64), "keras.datasets") if split == "train" else (xte, yte.astype(np.int64), "keras.datasets")


def _load_cifar(name: str, split: str):
    try:
        import keras

        mod = keras.datasets.cifar10 if name == "cifar10" else keras.datasets.cifar100
        (xtr, ytr), (xte, yte) = mod.load_data()
    except Exception as exc:
        raise SourceError(f"{name} could not be loaded through keras.datasets (cache or download): {exc}") from None
    x, y = (xtr, ytr) if split == "train" else (xte, yte)
    return x, np.asarray(y).reshape(-1).astype(np.int64), "keras.datasets"


def load_arrays(dataset: str, data_dir=None) -> dict:
    """Load ``name`` or ``name:split`` as arrays: ``images``, ``labels``, ``splits``, ``ids``, ``class_names``.

    Without a split both are loaded, train first, and each item carries its
    split name; ids are ``name/split/index``. :func:`featcache.sources.load_dataset`
    wraps the result as a source.
    """
    name, _, split = dataset.partition(":")
    if name not in _NAMES:
        raise SourceError(f"unknown dataset {name!r}; known: {', '.join(_NAMES)}")
    if split and split not in SPLITS:
        raise SourceError(f"unknown split {split!r} for {name}; use {name}:train or {name}:test")
    images, labels, ids, splits = [], [], [], []
    for s in ([split] if split else list(SPLITS)):
        if name == "fashion_mnist":
            x, y, _origin = load_fashion_mnist(s, data_dir)
        else:
            x, y, _origin = _load_cifar(name, s)
        width = len(str(len(x) - 1))
        images.append(x)
        labels.append(y)
        ids += [f"{name}/{s}/{i:0{width}d}" for i in range(len(x))]
        splits += [s] * len(x)
    classes = {"fashion_mnist": FASHION_MNIST_CLASSES, "cifar10": CIFAR10_CLASSES}.get(name)
    if classes is None:
        classes = [str(i) for i in range(100)]
    return {"images": np.concatenate(images), "labels": np.concatenate(labels), "splits": splits, "ids": ids,
            "class_names": classes}
