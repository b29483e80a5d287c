"""Persistence of trained heads: a model directory with the head and its card.

``MODEL_DIR/head.joblib`` (scikit-learn) or ``MODEL_DIR/head.keras`` (Keras,
with the wrapper's parameters in the card) and ``MODEL_DIR/card.json``: the
cache key and feature parameters the head was trained on, class names,
metrics per split, training time, versions, and the sha256 of the head file,
which is checked before anything is unpickled or loaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path

from .errors import FeatcacheError, FeatcacheWarning, is_integer
from .files import atomic_write_bytes, commit_directory, fsync_file, remove_stale_siblings, sha256_path, temporary_name
from .versions import HEAD_PACKAGES, versions

CARD = "card.json"
CARD_FORMAT = "featcache-model/1"
SKLEARN_FILE, KERAS_FILE = "head.joblib", "head.keras"
#: the head file of each kind of head: the only name a card may give
HEAD_FILES = {"sklearn": SKLEARN_FILE, "keras": KERAS_FILE}
#: every file featcache writes into a model directory
OWN_FILES = frozenset({CARD, SKLEARN_FILE, KERAS_FILE})
#: cache parameters that define what the features are; a head only fits features that agree on all of them
FEATURE_PARAMS = ("backbone", "origin", "weights", "layer", "image_size", "preprocess", "pooling", "outputs",
                  "compute_dtype")


def feature_params(cache_params: dict) -> dict:
    return {k: cache_params.get(k) for k in FEATURE_PARAMS}


def precision_drift(card: dict, cache_params: dict | None, what: str) -> str | None:
    """Why the features ``what`` computes differ from the reduced-precision ones the head learnt on, or None.

    The precision is not a feature parameter: an f32 graph computes features
    close to a bf16 or int8 one's (a per-row cosine of 0.98 or more on photos,
    docs/PERFORMANCE.md), so a head still applies, with that drift said. A card
    from before the precision was recorded says nothing of it: no warning.
    """
    feats = card["features"]
    learnt, have = feats.get("precision"), (cache_params or {}).get("precision", "f32")
    if learnt is None or learnt == have and feats.get("calibration") == (cache_params or {}).get("calibration"):
        return None
    got = f"{have} ones" if learnt != have else "int8 ones from another calibration"
    return (f"this head learnt on {learnt} features and {what} {got}, which differ from them by a per-row cosine "
            "of 0.98 or more on photos: train on a cache of the precision you deploy at to remove that drift")


def warn_precision_drift(card: dict, cache_params: dict | None, what: str, stacklevel: int) -> None:
    """:func:`precision_drift` as a :class:`FeatcacheWarning` (one line in the CLI), when there is one."""
    drift = precision_drift(card, cache_params, what)
    if drift:
        warnings.warn(drift, FeatcacheWarning, stacklevel=stacklevel + 1)


def feature_mismatch(card: dict, cache_params: dict) -> dict:
    want = card["features"]["params"]
    have = feature_params(cache_params)
    return {k: (want.get(k), have.get(k)) for k in FEATURE_PARAMS if want.get(k) != have.get(k)}


def _foreign_files(path: Path) -> list[str]:
    """What in a model directory featcache did not write: anything but a valid card and its head files."""
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return []
    try:
        read_card(path)
    except FeatcacheError:
        return names  # no card of ours: nothing here is provably featcache's
    return [n for n in names if n not in OWN_FILES or (path / n).is_symlink() or not (path / n).is_file()]


def check_model_dir_target(path) -> Path:
    """Refuse, before any work, a ``--out`` that featcache may not replace; returns it as a Path.

    A model directory may be written where nothing is, or over a model
    directory of featcache's that holds nothing else.
    """
    path = Path(os.path.abspath(path))  # "." and ".." have no name to stage a sibling under
    if path.is_symlink() or path.exists() and not path.is_dir():
        raise FeatcacheError(f"--out {path} exists and is not a model directory; choose a new --out")
    if path.is_dir():
        foreign = _foreign_files(path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise FeatcacheError(f"--out {path} holds files that featcache did not write ({shown}); "
                                 "choose a new or empty --out directory")
    return path


def _is_staged_model_dir(path: Path) -> bool:
    """A model directory featcache staged: only our file names, and a card that passes every check if any."""
    if not all(p.name in OWN_FILES and p.is_file() and not p.is_symlink() for p in path.iterdir()):
        return False
    if not (path / CARD).exists():
        return True  # killed before the card was written
    try:
        read_card(path)
    except FeatcacheError:
        return False
    return True


def save_model_dir(path, pipeline, card: dict) -> Path:
    """Write the head and its card into ``path`` as one unit; returns the directory.

    Everything is written into a hidden sibling first and swapped in with one
    rename (an atomic exchange where ``path`` already holds a model), so a
    kill at any moment leaves the old model or the new one, both loadable.
    """
    import joblib

    from .heads import is_keras

    path = check_model_dir_target(path)
    keras_head = is_keras(pipeline)
    if keras_head and len(pipeline.steps) > 1:
        raise FeatcacheError("Keras heads carry their preprocessing inside the model; use preprocess='none'")
    card = dict(card)
    staged = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(path, _is_staged_model_dir)
        if staged.exists():
            shutil.rmtree(staged)
        staged.mkdir()
        if keras_head:
            head = pipeline.steps[-1][1]
            fname = KERAS_FILE
            head.model_.save(staged / fname)
            card["kind"] = "keras"
            card["keras_head"] = {"params": head.get_params(), "n_features_in": int(head.n_features_in_),
                                  "n_iter": int(head.n_iter_), "steps": [name for name, _ in pipeline.steps[:-1]],
                                  **_keras_fitted(head)}
        else:
            fname = SKLEARN_FILE
            joblib.dump(pipeline, staged / fname)
            card["kind"] = "sklearn"
        fsync_file(staged / fname)
        card.update({"format": CARD_FORMAT, "file": fname, "sha256": sha256_path(staged / fname),
                     "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "versions": versions(HEAD_PACKAGES, backend=False)})
        atomic_write_bytes(staged / CARD, (json.dumps(card, indent=2, default=_json_default) + "\n").encode())
        commit_directory(staged, path)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        raise FeatcacheError(f"cannot write the model directory {path}: {exc.strerror or exc}; "
                             "nothing was changed there") from None
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return path


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple)):
        return list(obj)
    return str(obj)


def read_card(path) -> dict:
    """The card of a model directory, checked field by field before anything trusts it."""
    card_path = Path(path) / CARD
    if not Path(path).is_dir():
        raise FeatcacheError(f"{path} is not a featcache model directory (not a directory)")
    try:
        card = json.loads(card_path.read_text("utf-8"))
    except FileNotFoundError:
        raise FeatcacheError(f"{path} is not a featcache model directory (no {CARD})") from None
    except (OSError, ValueError) as exc:
        raise FeatcacheError(f"{card_path} cannot be read as JSON: {exc}") from None
    except RecursionError:
        raise FeatcacheError(f"{card_path} is nested too deeply to be a featcache model card") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        got = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise FeatcacheError(f"{card_path} has format {got!r}, expected {CARD_FORMAT}")
    problem = _card_problem(card)
    if problem:
        raise FeatcacheError(f"{card_path} is damaged: {problem}")
    return card


def current_card(path, head: str, cache_key: str, params: dict, views: int = 0,
                 views_mode: str | None = None, rows_key: str | None = None) -> dict | None:
    """The card at ``path`` if it holds ``head`` trained with ``params`` on the cache ``cache_key``, else None.

    What the benchmark's best model and a pipeline's heads ask before
    retraining; a missing or damaged card is simply not current. ``views``:
    the augmented views it must have trained on (the cache key does not
    change when a cache gains views), and ``views_mode`` how, when given.
    ``rows_key`` (the cache's :attr:`~featcache.store.Cache.rows_key`): a card
    trained on the same rows is current though the cache key changed, as it
    does when a grow finds every image unchanged.
    """
    try:
        card = read_card(path)
    except FeatcacheError:
        return None
    feats = card["features"]
    same = (card["head"] == head
            and (feats["cache_key"] == cache_key or (rows_key is not None and feats.get("rows_key") == rows_key))
            and card.get("head_params") == json.loads(json.dumps(params, default=_json_default))
            and (card.get("views") or {}).get("count", 0) == views
            and (views_mode is None or not views or card["views"].get("mode") == views_mode))
    return card if same else None


def stale_rows(path, rows_key: str, rows: int) -> str | None:
    """Why the card at ``path`` is stale if it is its cache's rows that changed (one phrase), else None."""
    try:
        feats = read_card(path)["features"]
    except FeatcacheError:
        return None
    if feats.get("rows_key") in (None, rows_key):
        return None
    was = feats.get("rows")
    return f"the cache's rows changed ({was:,} rows then, {rows:,} now)" if is_integer(was) else \
        "the cache's rows changed"


def _is_size(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(is_integer(v) and 1 <= v <= 65536 for v in value)


# What predict and export read of a card's features to rebuild its backbone: name -> (check, what it must be).
_FEATURE_FIELDS = {
    "params.backbone": (lambda v: isinstance(v, str) and v != "", "a backbone name"),
    "params.image_size": (_is_size, "[height, width]"),
    "params.compute_dtype": (lambda v: isinstance(v, str), "a dtype name"),
    "params.preprocess": (lambda v: isinstance(v, str), "text"),  # its value is the backbones' to judge
    "params.pooling": (lambda v: isinstance(v, str), "text"),
    "params.layer": (lambda v: v is None or isinstance(v, str), "a layer name or null"),
    "params.outputs": (lambda v: v is None or (isinstance(v, list) and all(isinstance(o, str) for o in v)),
                       "a list of layer names or null"),
    "backbone_ref.backbone": (lambda v: isinstance(v, str) and v != "", "a backbone name or file"),
    "backbone_ref.weights": (lambda v: isinstance(v, str), "text"),
    "backbone_ref.layer": (lambda v: v is None or isinstance(v, str), "a layer name or null"),
    "input_size": (lambda v: v is None or _is_size(v), "[height, width] or null"),
    "dtype": (lambda v: v in ("float16", "float32"), "float16 or float32"),
    "shape": (lambda v: isinstance(v, list) and 1 <= len(v) <= 4 and all(is_integer(d) and d >= 1 for d in v),
              "a list of positive sizes"),
}
_MISSING = object()


def _features_problem(feats: dict) -> str | None:
    """The first field of ``features`` that predict or export could not use, said as one phrase."""
    for name, (ok, what) in _FEATURE_FIELDS.items():
        value = feats
        for part in name.split("."):
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING and (name in ("params.layer", "params.outputs", "input_size")
                                  or (name.startswith("backbone_ref.") and not feats.get("backbone_ref"))):
            continue  # predict rebuilds these from the rest when an older card omits them
        if value is _MISSING or not ok(value):
            return f"features.{name} is {'missing' if value is _MISSING else repr(value)[:40]}, not {what}"
    return None


def other_kind(card: dict) -> str | None:
    """The card's target kind when it is regression or multi-label; None for a classifier (of ``label`` or of
    another classification target, whose card is a classifier's with a ``target`` record beside)."""
    t = card.get("target")
    return t.get("kind") if isinstance(t, dict) and t.get("kind") != "classification" else None


def _target_problem(t) -> str | None:
    """What is wrong with a regression or multi-label card's ``target`` record (train --target), or None."""
    if not isinstance(t, dict) or t.get("kind") not in ("regression", "multilabel"):
        return "target must be a record of kind regression or multilabel"
    if not isinstance(t.get("name"), str) or not isinstance(t.get("names"), list) or not t["names"] \
            or not all(isinstance(n, str) for n in t["names"]):
        return "target must hold its name and the names of its outputs or labels"
    if t["kind"] == "multilabel":
        th = t.get("thresholds")
        if not isinstance(th, list) or len(th) != len(t["names"]) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in th):
            return "target.thresholds must be one finite number per label"
    return None


def _card_problem(card: dict) -> str | None:
    kind = card.get("kind")
    if kind not in HEAD_FILES:
        return f"kind is {kind!r}, not sklearn or keras"
    if card.get("file") != HEAD_FILES[kind]:
        # the head file is named by featcache, inside the directory: a card cannot point anywhere else
        return f"file is {card.get('file')!r}; a {kind} head is always {HEAD_FILES[kind]!r} beside the card"
    target = "target" in card and card["target"] is not None and other_kind(card) is not None
    if card.get("target") is not None and not target and not (
            isinstance(card["target"].get("name"), str) and isinstance(card["target"].get("names"), list)):
        return "target must hold its name and the names of its classes"
    for key, kinds in (("sha256", str), ("head", str), ("features", dict),
                       *(() if target else (("classes", list), ("class_names", list)))):
        if not isinstance(card.get(key), kinds):
            return f"{key!r} is missing or not a {kinds.__name__}"
    if target:
        return _target_problem(card["target"]) or _features_problem(card["features"])
    if len(card["classes"]) != len(card["class_names"]) or len(card["classes"]) < 2:
        return "classes and class_names must be two or more, one name per class"
    if not all(is_integer(c) for c in card["classes"]) or len(set(card["classes"])) != len(card["classes"]):
        return "classes must be distinct integers"
    if not all(isinstance(n, str) for n in card["class_names"]):
        bad = next(n for n in card["class_names"] if not isinstance(n, str))
        return f"class_names must all be strings, one is {type(bad).__name__} {bad!r:.40}"
    feats = card["features"]
    for key, kinds in (("params", dict), ("output", str), ("cache_key", str)):
        if not isinstance(feats.get(key), kinds):
            return f"features.{key} is missing or not a {kinds.__name__}"
    if "rows_key" in feats and not isinstance(feats["rows_key"], str):
        return f"features.rows_key is {feats['rows_key']!r:.40}, not text"
    if "rows" in feats and not (is_integer(feats["rows"]) and feats["rows"] >= 0):
        return f"features.rows is {feats['rows']!r:.40}, not a row count"
    if "n_features" in feats and not (is_integer(feats["n_features"]) and feats["n_features"] >= 1):
        return f"features.n_features is {feats['n_features']!r:.40}, not a positive integer"
    problem = _features_problem(feats)
    if problem:
        return problem
    for key, kinds in (("metrics", dict), ("head_params", dict), ("preprocess", str)):
        if key in card and not isinstance(card[key], kinds):
            return f"{key!r} is not a {kinds.__name__}"
    if kind == "keras":
        info = card.get("keras_head")
        if not isinstance(info, dict) or not isinstance(info.get("params"), dict) \
                or not isinstance(info.get("classes"), list) or not isinstance(info.get("n_features_in"), int) \
                or not isinstance(info.get("n_iter"), int):
            return "keras_head must hold params, classes, n_features_in and n_iter"
        if info["classes"] != card["classes"]:
            return f"keras_head.classes ({len(info['classes'])}) differ from the card's classes ({len(card['classes'])})"
        if "n_features" in feats and info["n_features_in"] != feats["n_features"]:
            return f"keras_head.n_features_in {info['n_features_in']} differs from features.n_features {feats['n_features']}"
    return None


def _head_problem(pipe, card: dict) -> str | None:
    """How a loaded head disagrees with its card (classes, output width, input width), or None.

    A head swapped in with the sha256 updated, or a card edited, must fail
    here in one line, not as a KeyError mid-prediction or an exported model
    whose outputs do not match its class names.
    """
    import numpy as np

    if other_kind(card):
        return _target_head_problem(pipe, card)
    if not hasattr(pipe, "steps") or not hasattr(pipe, "predict_proba"):
        return f"the head is a {type(pipe).__name__}, not a featcache Pipeline with predict_proba"
    want, width = card["classes"], card["features"].get("n_features")
    clf = pipe.steps[-1][1]
    if card["kind"] == "keras":
        model = getattr(clf, "model_", None)
        try:
            n_in, n_out = model.inputs[0].shape[-1], model.outputs[0].shape[-1]
        except (AttributeError, IndexError, TypeError):
            return "the Keras head has no single input and output"
        if n_out != len(want):
            return f"the Keras head has {n_out} outputs but the card names {len(want)} classes"
        if width is not None and n_in != width:
            return f"the Keras head takes {n_in} features but the card's features have {width}"
        return None
    got = getattr(clf, "classes_", None)
    if got is None:
        return "the head has no classes_"
    got = np.asarray(got).tolist()
    if got != want:
        return f"the head predicts {len(got)} classes ({_preview(got)}) but the card names {len(want)} ({_preview(want)})"
    n_in = getattr(pipe, "n_features_in_", None)
    if width is not None and n_in is not None and n_in != width:
        return f"the head takes {n_in} features but the card's features have {width}"
    return None


def _target_head_problem(pipe, card: dict) -> str | None:
    """A regression head must predict, a multi-label one give per-label probabilities, of the card's width."""
    t, width = card["target"], card["features"].get("n_features")
    if not hasattr(pipe, "steps") or not hasattr(pipe, "predict_proba" if t["kind"] == "multilabel" else "predict"):
        return f"the head is a {type(pipe).__name__}, not a featcache Pipeline for a {t['kind']} target"
    n_in = getattr(pipe, "n_features_in_", None)
    if width is not None and n_in is not None and n_in != width:
        return f"the head takes {n_in} features but the card's features have {width}"
    clf = pipe.steps[-1][1]
    n_out = len(getattr(clf, "classes_", [])) if t["kind"] == "multilabel" else None  # one per label (OvR, KNN)
    if n_out and n_out != len(t["names"]):
        return f"the head has {n_out} labels but the card names {len(t['names'])}"
    return None


def _preview(values: list) -> str:
    return ", ".join(map(str, values[:3])) + (", ..." if len(values) > 3 else "")


def _keras_fitted(head) -> dict:
    """A Keras head's fitted facts beyond its model: classes (or labels), and a regression head's class and
    target scaler (its model already ends in the un-standardising; the card says what it is)."""
    import numpy as np

    out = {"classes": np.asarray(head.classes_).tolist()} if hasattr(head, "classes_") else {}
    if type(head).__name__ != "KerasHeadClassifier":
        out["estimator"] = type(head).__name__
    if hasattr(head, "y_mean_"):
        out["target_scaler"] = {"mean": np.asarray(head.y_mean_).tolist(), "scale": np.asarray(head.y_scale_).tolist(),
                                "one_output": bool(head._one_output)}
    return out


def load_model_dir(path):
    """Return ``(pipeline, card)``; refuses a head file whose sha256 differs from the card's."""
    import joblib

    path = Path(path)
    card = read_card(path)
    head_file = path / card["file"]
    if head_file.is_symlink() or not head_file.is_file():
        raise FeatcacheError(f"{head_file} is missing or not a plain file")
    digest = sha256_path(head_file)
    if digest != card["sha256"]:
        raise FeatcacheError(f"{head_file} does not match its card (sha256 {digest[:12]}… != {card['sha256'][:12]}…); "
                             "refusing to load a file that may have been tampered with")
    if card["kind"] == "sklearn":
        return _checked(joblib.load(head_file), card, head_file)
    import keras
    import numpy as np
    from sklearn.pipeline import Pipeline

    from .heads.keras_targets import ESTIMATORS

    info = card["keras_head"]
    params = dict(info["params"])
    if isinstance(params.get("hidden"), list):
        params["hidden"] = tuple(params["hidden"])
    estimator = ESTIMATORS.get(info.get("estimator", "KerasHeadClassifier"))
    if estimator is None:
        raise FeatcacheError(f"{head_file}: its card names Keras head {info.get('estimator')!r}, which featcache "
                             "does not know")
    head = estimator(**params)
    head.model_ = keras.saving.load_model(head_file, compile=False, safe_mode=True)
    if "classes" in info:
        head.classes_ = np.asarray(info["classes"])
    scaler = info.get("target_scaler")
    if isinstance(scaler, dict) and all(isinstance(scaler.get(k), list) for k in ("mean", "scale")):
        head.y_mean_, head.y_scale_ = np.asarray(scaler["mean"]), np.asarray(scaler["scale"])
        head.n_outputs_, head._one_output = len(head.y_mean_), bool(scaler.get("one_output", True))
    head.n_features_in_ = int(info["n_features_in"])
    head.n_iter_ = int(info["n_iter"])
    return _checked(Pipeline([("clf", head)]), card, head_file)


def _checked(pipe, card: dict, head_file: Path):
    """``(pipe, card)`` once the head agrees with its card; a one-line error naming the head file otherwise."""
    problem = _head_problem(pipe, card)
    if problem:
        raise FeatcacheError(f"{head_file} does not match its card: {problem}; refusing to use it")
    return pipe, card
