"""Predict with a saved head on raw images, and export end-to-end Keras models.

Sits above the engine and the heads: it rebuilds the exact backbone and
preprocessing recorded in a model card, extracts features through the cache
machinery (so predicting the same images twice costs nothing the second
time), checks the features match what the head was trained on, and applies
the head.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from .plan import ExtractOptions, make_plan
from .runner import run
from .errors import FeatcacheError, is_integer
from .files import atomic_save, atomic_write_bytes, remove_stale_temporaries, spreadsheet_safe
from .homes import featcache_home
from .model_dir import feature_mismatch, load_model_dir, read_card
from .sources import ArraySource, CsvSource, FileListSource, FolderSource, Source
from .store import MANIFEST, Cache, is_our_manifest, open_cache


#: prediction feature caches kept under the default home (oldest removed first); FEATCACHE_PREDICTION_CACHES sets it
PREDICTION_CACHES_KEPT = 32
_PREDICTION_CACHE = re.compile(r"^[0-9a-f]{24}$")


def predictions_home() -> Path:
    return featcache_home() / "predictions"


def prune_prediction_caches(keep: int | None = None, *, spare: Path | None = None) -> list[Path]:
    """Remove the oldest prediction caches under the default home beyond ``keep``; returns what was removed.

    Only featcache's own: directories named by a cache key that hold a
    featcache manifest. A ``--cache-dir`` of the user's is never pruned.
    """
    if keep is None:
        keep = int(os.environ.get("FEATCACHE_PREDICTION_CACHES", PREDICTION_CACHES_KEPT))
    home = predictions_home()
    if not home.is_dir():
        return []
    ours = [d for d in home.iterdir() if _PREDICTION_CACHE.match(d.name) and not d.is_symlink() and d.is_dir()
            and is_our_manifest(d / MANIFEST) and d != spare]
    ours.sort(key=lambda d: d.stat().st_mtime)  # last used: predict touches the cache it reads
    room = max(0, keep - (spare is not None))  # the cache just used counts against the bound too
    removed = []
    for d in ours[:max(0, len(ours) - room)]:
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _mismatch_error(card, params, what):
    diffs = feature_mismatch(card, params)
    if diffs:
        lines = [f"the head in this model was trained on other features than {what}:"]
        lines += [f"  {k}: head expects {a!r}, got {b!r}" for k, (a, b) in diffs.items()]
        raise FeatcacheError("\n".join(lines))


#: the first columns of a predictions CSV (then one p_CLASS column per class)
CSV_HEADER = "id,label,class,probability,error"


def source_for(inputs) -> Source | Cache:
    """Files, a folder, a CSV manifest, an existing cache directory, or uint8 images ``N x H x W [x 1|3]``."""
    if isinstance(inputs, (Source, Cache)):
        return inputs
    if isinstance(inputs, np.ndarray):
        return ArraySource(inputs, name="images")
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if len(items) == 1:
        p = Path(items[0])
        if p.is_dir() and is_our_manifest(p / MANIFEST):  # a folder of images may hold a web app's manifest.json
            return open_cache(p)
        if p.is_dir():
            return FolderSource(p)
        if p.suffix.lower() == ".csv":
            return CsvSource(p)
    return FileListSource(items)


def features_for(card: dict, inputs, *, cache_dir=None, progress: bool = False) -> Cache:
    """A cache of ``inputs`` with exactly the features the card's head expects."""
    target = source_for(inputs)
    if isinstance(target, Cache):
        _mismatch_error(card, target.params, str(target.path))
        return target
    feats = card["features"]
    params = feats["params"]
    opts = ExtractOptions(image_size=tuple(params["image_size"]), pooling=params["pooling"],
                          outputs=params.get("outputs"), preprocess=params["preprocess"],
                          dtype=feats.get("dtype") or "float16", compute_dtype=params["compute_dtype"])
    base = Path(cache_dir) if cache_dir else predictions_home()
    if not cache_dir:
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # no --out was given: say which directory, and how to choose another
            raise FeatcacheError(f"cannot create the predictions directory {base} ({exc.strerror or exc}); set "
                                 "FEATCACHE_HOME to a writable folder, or pass --cache-dir") from None
    backbone, weights, layer = card_backbone(card)
    plan = make_plan(target, backbone, None, opts, weights=weights, layer=layer)
    _mismatch_error(card, plan.params, "the backbone as it is now (did its weights file change?)")
    cache, _summary = run(plan.at(base / plan.key[:24]), progress=progress)  # one cache per set of images
    if not cache_dir:
        os.utime(cache.path)  # used now: pruning removes the least recently used first
        prune_prediction_caches(spare=cache.path)
    return cache


def card_backbone(card: dict) -> tuple[str, str | None, str | None]:
    """``(backbone, weights, layer)`` that rebuild the backbone a head's features came from."""
    params, ref = card["features"]["params"], card["features"].get("backbone_ref") or {}
    return (ref.get("backbone", params["backbone"]), ref.get("weights", "imagenet"),
            ref.get("layer", params.get("layer")))


#: what :func:`predict` can return
RETURN_AS = ("rows", "labels", "proba", "frame")


def predict(model_dir, inputs, *, out=None, cache_dir=None, progress: bool = False, return_as: str = "rows"):
    """Classify raw images with a saved head: the exact backbone of its card, then the head.

    A model directory is code (a scikit-learn head is a pickle): load only
    ones from people you trust. The head file's sha256 is checked against its
    card first, and the features are checked to be exactly those it learned on.

    Args:
        model_dir: a directory written by :func:`featcache.train` (or ``bench``'s ``best_model``).
        inputs: image files, a folder, a CSV manifest, a cache directory, or
            a uint8 array of images ``N x H x W [x 1|3]`` (any size: they are
            resized as the head's training images were).
        out: also write the rows to a ``.csv`` (formula-safe cells) or ``.json`` file.
        cache_dir: where the images' feature cache goes (default
            ``$FEATCACHE_HOME/predictions``); predicting the same images again
            costs nothing.
        progress: show a progress bar.
        return_as: ``rows`` (a list of dicts), ``labels`` (an array of class
            names, as scikit-learn's ``predict``), ``proba`` (an ``N x classes``
            array in ``class_names`` order, as ``predict_proba``) or ``frame``
            (a pandas DataFrame of the rows; needs pandas). ``labels`` and
            ``proba`` follow the order of ``inputs`` (a folder: sorted by class
            folder and file name); an image that could not be read is ``None``
            / a row of NaN there.

    Returns:
        By default one dict per image: ``id``, ``label``, ``class``,
        ``probability`` and ``probabilities``; skipped images come back with
        ``error``. See ``return_as`` for the others.

    Examples:
        >>> rows = featcache.predict("models/fm", "new_images/")  # doctest: +SKIP
        >>> rows[0]["class"], rows[0]["probability"]             # doctest: +SKIP
        >>> featcache.predict("models/fm", images, return_as="labels")  # uint8 N x H x W x 3  # doctest: +SKIP
        array(['Bag', 'Sneaker', ...], dtype=object)
    """
    if return_as not in RETURN_AS:
        raise FeatcacheError(f"return_as must be one of {', '.join(RETURN_AS)}, got {return_as!r}")
    if return_as == "frame":
        try:
            import pandas
        except ImportError:
            raise FeatcacheError("return_as='frame' needs pandas (pip install pandas); 'rows', 'labels' and "
                                 "'proba' need nothing more") from None
    if out is not None:
        out = _check_predictions_target(out)
    if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise FeatcacheError(f"--cache-dir {cache_dir} exists and is not a directory")
    pipe, card = load_model_dir(model_dir)
    target = source_for(inputs)
    cache = features_for(card, target, cache_dir=cache_dir, progress=progress)
    output = card["features"]["output"]
    X = cache.features(output)
    X = X.reshape(len(X), -1).astype(np.float32)
    from .heads import proba_and_labels

    proba, labels = proba_and_labels(pipe, X) if len(X) else (np.zeros((0, len(card["classes"]))), [])
    names = card["class_names"]
    column = {c: k for k, c in enumerate(card["classes"])}
    rows = []
    for rid, p, label in zip(cache.ids(), proba, labels):
        k = column[label.item() if hasattr(label, "item") else label]
        rows.append({"id": rid, "label": card["classes"][k], "class": names[k], "probability": float(p[k]),
                     "probabilities": {n: float(v) for n, v in zip(names, p)}})
    for s in cache.skipped:
        rows.append({"id": s["id"], "label": None, "class": None, "probability": None, "error": s["reason"]})
    if out is not None:
        write_predictions(rows, out, names)
    if return_as == "rows":
        return rows
    if return_as == "frame":
        return pandas.DataFrame([{k: v for k, v in r.items() if k != "probabilities"}
                                 | {f"p_{n}": (r.get("probabilities") or {}).get(n) for n in names} for r in rows])
    ids = [it.id for it in target.items] if isinstance(target, Source) else cache.ids()
    known = set(ids)
    order = ids + [r["id"] for r in rows if r["id"] not in known]  # a skipped id is among the items already
    if return_as == "labels":
        by_id = {r["id"]: r["class"] for r in rows}
        return np.array([by_id.get(i) for i in order], dtype=object)
    by_id = {r["id"]: [r["probabilities"][n] for n in names] for r in rows if r.get("probabilities")}
    nan = [float("nan")] * len(names)
    return np.array([by_id.get(i, nan) for i in order], dtype=np.float64).reshape(len(order), len(names))


def _check_predictions_target(out) -> Path:
    """A .csv or .json path that is not a directory: checked before any prediction is made."""
    out = Path(out)
    if out.suffix.lower() not in (".csv", ".json"):
        raise FeatcacheError(f"predictions go to a .csv or .json file, not {out.name or out}")
    if out.is_dir():
        raise FeatcacheError(f"--out {out} is a directory; name a .csv or .json file")
    if out.is_symlink() or out.exists() and not _is_our_predictions(out):
        raise FeatcacheError(f"--out {out} exists and is not a predictions file featcache wrote; "
                             "choose a new file name")
    return out


def _is_our_predictions(path: Path) -> bool:
    """A predictions file of ours: our CSV header, or a JSON list of our rows."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, "rb") as f:
                return f.read(len(CSV_HEADER)) == CSV_HEADER.encode()
        rows = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(rows, list) and all(isinstance(r, dict) and "id" in r and "class" in r for r in rows)


def write_predictions(rows: list[dict], out, class_names) -> None:
    out = _check_predictions_target(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatcacheError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    if out.suffix.lower() == ".json":
        data = (json.dumps(rows, indent=2) + "\n").encode()  # ASCII: non-UTF-8 names travel as \udcXX escapes
    else:
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow([spreadsheet_safe(v) for v in CSV_HEADER.split(",") + [f"p_{n}" for n in class_names]])
        for r in rows:
            probs = r.get("probabilities") or {}
            w.writerow([spreadsheet_safe(v) for v in [r["id"], r["label"], r["class"], r["probability"],
                                                      r.get("error", "")]]
                       + [probs.get(n, "") for n in class_names])
        # surrogateescape: an image whose file name is not UTF-8 keeps its exact bytes in the id column
        data = text.getvalue().encode("utf-8", "surrogateescape")
    remove_stale_temporaries(out)
    try:
        atomic_write_bytes(out, data)
    except OSError as exc:
        raise FeatcacheError(f"cannot write {out}: {exc.strerror or exc}") from None


#: the entry of an exported .keras file (a zip) that names its classes and how it was made
EXPORT_INFO = "featcache.json"


#: what :func:`export` writes beside the ``.keras`` file
EXPORT_FORMATS = ("keras", "openvino")


def export(model_dir, out, *, input_size: tuple[int, int] | None = None, format: str = "keras") -> Path:
    """Write one end-to-end Keras model: images in, class probabilities out.

    Preprocessing, the frozen backbone and the head in one graph of Keras'
    own layers and ops, so ``keras.models.load_model`` reads it with nothing
    else installed. Only Keras heads can be exported. The model takes:

    * any image size (``input_size=None``, the default): each batch is resized
      in the graph to the size the backbone saw, as the cached route did;
      or a fixed ``(height, width)``;
    * RGB ``N x H x W x 3`` or grey ``N x H x W x 1`` images;
    * pixels as uint8 0-255 (what the cache was made from), float 0-255, or
      float 0-1: an image whose every pixel is at most 1.0 is read as 0-1 and
      scaled by 255 (so a uint8 image that is black save for values of 1 is
      taken for a 0-1 image: nearly black either way).

    The class names, the head and the backbone are stored inside the file
    (its ``featcache.json`` entry; :func:`export_info` reads it), and its
    output's columns follow ``class_names``.

    Args:
        model_dir: a model directory of a Keras head (``keras_linear``, ``keras_mlp``, ``classic``).
        out: the ``.keras`` file to write (new, or an earlier featcache export).
        input_size: a fixed ``(height, width)`` input instead of any size.
        format: ``openvino`` also writes an OpenVINO IR (``NAME.xml`` +
            ``NAME.bin``) beside it, for deployment with OpenVINO alone
            (compile it with ``{"INFERENCE_PRECISION_HINT": "f32"}``: on AMX
            and AVX512-BF16 CPUs OpenVINO's default is bfloat16). The IR
            takes ``input_size`` (default: the size the backbone saw), since
            OpenVINO has no antialiased resize to put in the graph.

    Returns:
        The path written.

    Examples:
        >>> featcache.export("models/fm", "fm.keras")                            # doctest: +SKIP
        >>> model = keras.models.load_model("fm.keras")                         # doctest: +SKIP
        >>> model.predict(uint8_images)  # N x H x W x 3, any H x W              # doctest: +SKIP
        >>> featcache.export_info("fm.keras")["class_names"]                    # doctest: +SKIP
    """
    import zipfile

    from .backbones import resolve

    if format not in EXPORT_FORMATS:
        raise FeatcacheError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    out = _check_export_target(out)
    if format == "openvino":
        from .runtimes import check_ir_target

        check_ir_target(out)  # before anything is written
    if input_size is not None:
        if (not isinstance(input_size, (tuple, list)) or len(input_size) != 2
                or not all(is_integer(v) and v >= 1 for v in input_size)):
            raise FeatcacheError(f"input_size must be (height, width) of positive integers or None, got {input_size!r}")
    card = read_card(model_dir)
    if card.get("kind") != "keras":
        raise FeatcacheError(f"{model_dir} holds a scikit-learn head ({card['head']}); only Keras heads "
                             "(keras_linear, keras_mlp, classic) export to one Keras model")
    pipe, card = load_model_dir(model_dir)
    head = pipe.steps[-1][1]
    feats = card["features"]
    params = feats["params"]
    name, weights, layer = card_backbone(card)
    backbone = resolve(name, weights=weights, layer=layer)
    if backbone.identity() != params["weights"]:
        raise FeatcacheError("the backbone's weights changed since the head was trained; cannot export")
    model = _end_to_end(backbone, card, head, tuple(input_size) if input_size else (None, None))
    info = {"format": "featcache-export/1", "class_names": card["class_names"], "classes": card["classes"],
            "head": card["head"], "backbone": name, "weights": params["weights"],
            "image_size": list(params["image_size"]), "input_size": list(input_size) if input_size else None,
            "input": "N x H x W x 3 (RGB) or x 1 (grey); uint8 0-255, float 0-255, or float 0-1",
            "cache_key": feats["cache_key"], "metrics": card.get("metrics", {})}

    def save(path):
        model.save(path)
        with zipfile.ZipFile(path, "a") as z:  # keras.models.load_model reads only its own entries
            z.writestr(EXPORT_INFO, json.dumps(info, indent=2, default=str))

    remove_stale_temporaries(out)  # what killed exports to this name left behind
    if format == "openvino":
        from .runtimes import retire_ir

        retire_ir(out)  # the old IR goes before the .keras changes: never an IR beside a .keras it does not match
    try:
        atomic_save(out, save, ".keras")
    except OSError as exc:
        raise FeatcacheError(f"cannot write {out}: {exc.strerror or exc}") from None
    if format == "openvino":
        from .runtimes import export_ir

        fixed = model if input_size else _end_to_end(backbone, card, head, tuple(params["image_size"]))
        export_ir(out, model=fixed)
    return out


def _end_to_end(backbone, card: dict, head, size: tuple):
    """Images of ``size`` (``(None, None)``: any) in, the head's probabilities out, in one Keras model."""
    import keras
    from keras import ops

    from .backbones.graph import build_extractor

    feats = card["features"]
    params = feats["params"]
    extractor, _names = build_extractor(backbone, input_size=size, image_size=tuple(params["image_size"]),
                                        pooling=params["pooling"], outputs=params.get("outputs"),
                                        preprocess=params["preprocess"], compute_dtype=params["compute_dtype"])
    images = keras.Input((size[0], size[1], None), dtype="float32", name="images")
    x = images + ops.repeat(ops.mean(images, axis=-1, keepdims=True) * 0.0, 3, axis=-1)  # grey -> RGB, RGB as is
    top = ops.max(x, axis=(1, 2, 3), keepdims=True)
    x = ops.where(top <= 1.0, x * 255.0, x)  # float 0-1 images to 0-255
    x = ops.cast(ops.round(ops.clip(x, 0.0, 255.0)), "uint8")  # the uint8 pixels the cache was made from
    x = extractor(x)[feats["output"]]
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten_features")(x)
    if feats.get("dtype") == "float16":  # the head learned on features stored as float16
        x = keras.layers.Activation("linear", dtype="float16", name="as_stored_float16")(x)
        x = keras.layers.Activation("linear", dtype="float32", name="as_float32")(x)
    probs = head.model_(x)
    return keras.Model(images, probs, name=f"featcache_{output_name_safe(card['head'])}")


def output_name_safe(text: str) -> str:
    """A model name Keras accepts: ``custom:SVC`` and other head names with odd characters."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def export_info(path) -> dict:
    """What an exported ``.keras`` file says of itself: class names, head, backbone, input contract.

    Args:
        path: a ``.keras`` file written by :func:`export`.

    Returns:
        The dict stored in its ``featcache.json`` entry (``class_names`` in
        the order of the model's output columns).

    Examples:
        >>> featcache.export_info("fm.keras")["class_names"][:2]  # doctest: +SKIP
        ['T-shirt/top', 'Trouser']
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            info = json.loads(z.read(EXPORT_INFO))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise FeatcacheError(f"{path} is not a model featcache exported ({type(exc).__name__})") from None
    if not isinstance(info, dict) or not isinstance(info.get("class_names"), list):
        raise FeatcacheError(f"{path}: its {EXPORT_INFO} holds no class names")
    return info


def _check_export_target(out) -> Path:
    """A ``.keras`` path that is new, or an earlier export of featcache's: never another program's file."""
    out = Path(out)
    if out.suffix != ".keras":
        raise FeatcacheError(f"export writes a .keras file, not {out.name}")
    if out.is_symlink() or out.exists() and not _is_our_export(out):
        raise FeatcacheError(f"{out} exists and is not a model featcache exported; choose a new file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatcacheError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    return out


def is_our_model_export(path) -> bool:
    """Whether ``path`` is a ``.keras`` model :func:`export` wrote (so it may be replaced)."""
    path = Path(path)
    return not path.is_symlink() and path.is_file() and _is_our_export(path)


def _is_our_export(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return isinstance(config, dict) and str(config.get("config", {}).get("name", "")).startswith("featcache_")
