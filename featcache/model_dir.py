"""Persistence of trained heads: a model directory with the head and its card.

``MODEL_DIR/head.joblib`` (scikit-learn) or ``MODEL_DIR/head.keras`` (Keras,
with the wrapper's parameters in the card) and ``MODEL_DIR/card.json``: the
cache key and feature parameters the head was trained on, class names,
metrics per split, training time, versions, and the sha256 of the head file,
which is checked before anything is unpickled or loaded.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .errors import FeatcacheError
from .store import atomic_write_bytes, sha256_path

CARD = "card.json"
CARD_FORMAT = "featcache-model/1"
#: cache parameters that define what the features are; a head only fits features that agree on all of them
FEATURE_PARAMS = ("backbone", "origin", "weights", "layer", "image_size", "preprocess", "pooling", "outputs",
                  "compute_dtype")


def feature_params(cache_params: dict) -> dict:
    return {k: cache_params.get(k) for k in FEATURE_PARAMS}


def feature_mismatch(card: dict, cache_params: dict) -> dict:
    want = card["features"]["params"]
    have = feature_params(cache_params)
    return {k: (want.get(k), have.get(k)) for k in FEATURE_PARAMS if want.get(k) != have.get(k)}


def _versions() -> dict:
    out = {}
    for pkg in ("featcache", "scikit-learn", "keras", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def save_model_dir(path, pipeline, card: dict) -> Path:
    """Write the head and its card atomically into ``path``; returns the directory."""
    import joblib

    from .heads import is_keras

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    card = dict(card)
    if is_keras(pipeline):
        head = pipeline.steps[-1][1]
        fname = "head.keras"
        tmp = path / f".{fname}.tmp-{os.getpid()}.keras"
        head.model_.save(tmp)
        card["kind"] = "keras"
        card["keras_head"] = {"params": head.get_params(), "classes": head.classes_.tolist(),
                              "n_features_in": int(head.n_features_in_), "n_iter": int(head.n_iter_),
                              "steps": [name for name, _ in pipeline.steps[:-1]]}
        if len(pipeline.steps) > 1:
            raise FeatcacheError("Keras heads carry their preprocessing inside the model; use preprocess='none'")
    else:
        fname = "head.joblib"
        tmp = path / f".{fname}.tmp-{os.getpid()}"
        joblib.dump(pipeline, tmp)
        card["kind"] = "sklearn"
    os.replace(tmp, path / fname)
    card.update({"format": CARD_FORMAT, "file": fname, "sha256": sha256_path(path / fname),
                 "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _versions()})
    atomic_write_bytes(path / CARD, (json.dumps(card, indent=2, default=_json_default) + "\n").encode())
    return path


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    return str(obj)


def read_card(path) -> dict:
    card_path = Path(path) / CARD
    try:
        card = json.loads(card_path.read_text("utf-8"))
    except FileNotFoundError:
        raise FeatcacheError(f"{path} is not a featcache model directory (no {CARD})") from None
    except ValueError as exc:
        raise FeatcacheError(f"{card_path} is not valid JSON: {exc}") from None
    if card.get("format") != CARD_FORMAT:
        raise FeatcacheError(f"{card_path} has format {card.get('format')!r}, expected {CARD_FORMAT}")
    return card


def load_model_dir(path):
    """Return ``(pipeline, card)``; refuses a head file whose sha256 differs from the card's."""
    import joblib

    path = Path(path)
    card = read_card(path)
    head_file = path / card["file"]
    if not head_file.is_file():
        raise FeatcacheError(f"{head_file} is missing")
    digest = sha256_path(head_file)
    if digest != card["sha256"]:
        raise FeatcacheError(f"{head_file} does not match its card (sha256 {digest[:12]}… != {card['sha256'][:12]}…); "
                             "refusing to load a file that may have been tampered with")
    if card["kind"] == "sklearn":
        return joblib.load(head_file), card
    import keras
    import numpy as np
    from sklearn.pipeline import Pipeline

    from .heads.keras_head import KerasHeadClassifier

    info = card["keras_head"]
    params = dict(info["params"])
    if isinstance(params.get("hidden"), list):
        params["hidden"] = tuple(params["hidden"])
    head = KerasHeadClassifier(**params)
    head.model_ = keras.saving.load_model(head_file, compile=False, safe_mode=True)
    head.classes_ = np.asarray(info["classes"])
    head.n_features_in_ = int(info["n_features_in"])
    head.n_iter_ = int(info["n_iter"])
    return Pipeline([("clf", head)]), card
