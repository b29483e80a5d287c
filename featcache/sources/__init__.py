"""Image sources: folders, CSV manifests, in-memory arrays and named datasets.

A source lists :class:`Item` s in a deterministic order (each with a stable
id, an integer label, -1 when unlabeled, and a split name where the source
has one), reads batches of them as uint8 RGB arrays, and fingerprints itself
for the cache key. Sources know nothing about models or caches.
"""


from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..decode import DEFAULT_MAX_PIXELS
from ..errors import SourceError
from .arrays import ArraySource
from .base import (LIMIT_SEED, SPLIT_DIRS, Batch, Item, PickedSource, Source, SubsetSource, SubsetWarning, check_class_names,
                   dense_labels, stratified_sample)
from .files import CsvSource, FileListSource, FileSource, FolderSource, same_file_key

__all__ = ["LIMIT_SEED", "SPLIT_DIRS", "ArraySource", "Batch", "CsvSource", "FileListSource", "FileSource",
           "FolderSource", "Item", "PickedSource", "Source", "SubsetSource", "SubsetWarning", "check_class_names", "dense_labels",
           "load_dataset", "open_source", "reopen", "same_file_key", "stratified_sample"]


def load_dataset(name: str, data_dir=None) -> ArraySource:
    """A named dataset (``fashion_mnist:test``, ``cifar10``, ...) as an array source that can be reopened."""
    from .. import datasets

    src = ArraySource(**datasets.load_arrays(name, data_dir=data_dir), name=name)
    src.address = {"dataset": name, "data_dir": None if data_dir is None else str(data_dir)}
    return src


def reopen(address: dict | None) -> Source:
    """Open a source again from the ``address`` a cache's manifest recorded (``Cache.source_address``)."""
    if not address:
        raise SourceError("this cache was made from in-memory arrays; its source cannot be reopened")
    if "folder" in address:
        return FolderSource(address["folder"])
    if "csv" in address:
        return CsvSource(address["csv"], allow_outside=address.get("allow_outside", False),
                         class_names=address.get("class_names"))
    if "dataset" in address:
        return load_dataset(address["dataset"], data_dir=address.get("data_dir"))
    if "subset" in address:
        parent = reopen(address["subset"])
        if "limit_seed" not in address:  # written before limit became a sample: it meant the first N
            return parent.subset(classes=address.get("classes"), first=address.get("limit"))
        with warnings.catch_warnings():  # said when the cache was made
            warnings.simplefilter("ignore", SubsetWarning)
            return parent.subset(classes=address.get("classes"), limit=address.get("limit"),
                                 first=address.get("first"), limit_seed=address["limit_seed"])
    raise SourceError(f"unknown source address {address!r}")


def open_source(source, *, allow_outside: bool = False, labels=None, class_names=None, splits=None,
                max_pixels: int = DEFAULT_MAX_PIXELS, data_dir: str | os.PathLike | None = None) -> Source:
    """Turn what a user passed into a :class:`Source`.

    ``source`` may be a Source, a folder path, a ``.csv`` path, a named dataset
    such as ``"fashion_mnist:test"``, or a uint8 array (with ``labels``,
    ``class_names`` and ``splits``, which only an array takes).
    """
    if isinstance(source, np.ndarray):
        return ArraySource(source, labels, class_names=class_names, splits=splits)
    given = [n for n, v in (("labels", labels), ("class_names", class_names), ("splits", splits)) if v is not None]
    if given:
        raise SourceError(f"{', '.join(given)} go with an array of images; a folder, CSV or dataset names its own")
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        path = Path(text)
        if path.is_dir():
            return FolderSource(path, max_pixels=max_pixels)
        if path.suffix.lower() == ".csv":
            if not path.exists():
                raise SourceError(f"CSV manifest {path} does not exist")
            return CsvSource(path, allow_outside=allow_outside, max_pixels=max_pixels)
        from .. import datasets

        if datasets.is_dataset_name(text):
            return load_dataset(text, data_dir=data_dir)
        raise SourceError(
            f"{text!r} is not a folder, a .csv manifest or a dataset name "
            f"(known datasets: {', '.join(datasets.names())}, each with :train or :test)"
        )
    raise SourceError(f"cannot use {type(source).__name__} as an image source")
