"""Export a trained Keras head as one end-to-end Keras model: images in, class probabilities out.

Not to be confused with :mod:`featcache.feature_export`, which writes cached
features to other tools. This module rebuilds the backbone recorded in a
model card, puts preprocessing, backbone and head in one Keras graph, stores
the class names inside the ``.keras`` file (``featcache.json``), and can also
write an OpenVINO IR beside it. Keras is imported only where a graph is
built, so importing featcache stays fast.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from .backbones import resolve
from .bench.results import RESULTS
from .errors import FeatcacheError, is_integer
from .files import atomic_save, remove_stale_temporaries
from .linear_export import refusal
from .model_dir import load_model_dir, other_kind, read_card, warn_precision_drift
from .predict import card_backbone
from .ir_export import check_ir_target, export_ir, retire_ir

#: the entry of an exported .keras file (a zip) that names its classes and how it was made
EXPORT_INFO = "featcache.json"


#: what :func:`export` writes beside the ``.keras`` file
EXPORT_FORMATS = ("keras", "openvino")


def export(model_dir, out, *, input_size: tuple[int, int] | None = None, format: str = "keras") -> Path:
    """Write one end-to-end Keras model: images in, class probabilities out.

    Preprocessing, the frozen backbone and the head in one graph of Keras'
    own layers and ops, so ``keras.models.load_model`` reads it with nothing
    else installed. Keras heads and the linear scikit-learn heads export; a
    forest or boosting is refused, naming the nearest head that exports. The model takes:

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
        model_dir: a model directory of a Keras head (``keras_linear``, ``keras_mlp``, ``classic``) or of
            a linear scikit-learn head (``logreg``, ``ridge``, ``lda``, ``linear_svm``, ``sgd``,
            ``knn_cosine``), whose scaler, PCA and classifier become Dense layers
            (:mod:`featcache.linear_export`).
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
    dirs = model_dirs(model_dir)
    if len(dirs) > 1 or other_kind(read_card(dirs[0])):  # targets, or several tasks on one backbone run
        return export_heads(dirs, out, input_size=input_size, format=format)
    model_dir = dirs[0]
    out = _check_export_arguments(model_dir, out, input_size, format)
    pipe, card = load_model_dir(model_dir)
    warn_precision_drift(card, None, "the exported model computes", stacklevel=2)
    backbone = _current_backbone(card)
    model = _end_to_end(backbone, card, pipe, tuple(input_size) if input_size else (None, None))
    _save_with_info(model, out, _export_record(card, input_size), openvino=format == "openvino")
    if format == "openvino":  # the IR takes one fixed size: OpenVINO has no antialiased resize for the graph
        fixed = input_size or card["features"]["params"]["image_size"]
        export_ir(out, model=model if input_size else _end_to_end(backbone, card, pipe, tuple(fixed)))
    return out


def model_dirs(model_dir) -> list:
    """One model directory, several (a list, or ``a,b`` naming no directory of its own), as a list."""
    if isinstance(model_dir, (list, tuple)):
        dirs = list(model_dir)
    elif isinstance(model_dir, str) and "," in model_dir and not Path(model_dir).is_dir():
        dirs = [d.strip() for d in model_dir.split(",")]
    else:
        dirs = [model_dir]
    if not dirs or any(not str(d) for d in dirs):
        raise FeatcacheError(f"export needs one model directory or several (a,b,c), got {model_dir!r}")
    return dirs


def _check_export_arguments(model_dir, out, input_size, format) -> Path:
    """Every argument judged, and the target proven writable, before Keras is loaded or a file written."""
    if format not in EXPORT_FORMATS:
        raise FeatcacheError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    out = _check_export_target(out)
    if format == "openvino":
        check_ir_target(out)
    if input_size is not None:
        if (not isinstance(input_size, (tuple, list)) or len(input_size) != 2
                or not all(is_integer(v) and v >= 1 for v in input_size)):
            raise FeatcacheError(f"input_size must be (height, width) of positive integers or None, got {input_size!r}")
    card = read_card(model_dir)
    results = Path(model_dir).parent / RESULTS  # a bench's best_model/ sits beside its results.jsonl
    why = None if card.get("kind") == "keras" else refusal(str(card.get("head")), results,
                                                           card.get("features", {}).get("cache_key"))
    if why:
        raise FeatcacheError(f"{model_dir}: {why}")
    return out


def _current_backbone(card: dict):
    """The backbone the head's features came from, refused when its weights changed since."""
    name, weights, layer = card_backbone(card)
    backbone = resolve(name, weights=weights, layer=layer)
    if backbone.identity() != card["features"]["params"]["weights"]:
        raise FeatcacheError("the backbone's weights changed since the head was trained; cannot export")
    return backbone


def _export_record(card: dict, input_size) -> dict:
    """The ``featcache.json`` entry: class names in output order, the head, the backbone, the input contract."""
    feats = card["features"]
    params = feats["params"]
    name, _weights, _layer = card_backbone(card)
    return {"format": "featcache-export/1", "class_names": card.get("class_names"), "classes": card.get("classes"),
            "head": card["head"], "backbone": name, "weights": params["weights"],
            "image_size": list(params["image_size"]), "input_size": list(input_size) if input_size else None,
            "input": "N x H x W x 3 (RGB) or x 1 (grey); uint8 0-255, float 0-255, or float 0-1",
            "cache_key": feats["cache_key"], "metrics": card.get("metrics", {})}


def _save_with_info(model, out: Path, info: dict, *, openvino: bool) -> None:
    """Save ``model`` to ``out`` atomically, with ``info`` as an extra zip entry."""
    def save(path):
        model.save(path)
        with zipfile.ZipFile(path, "a") as z:  # keras.models.load_model reads only its own entries
            z.writestr(EXPORT_INFO, json.dumps(info, indent=2, default=str))

    remove_stale_temporaries(out)  # what killed exports to this name left behind
    if openvino:
        retire_ir(out)  # the old IR goes before the .keras changes: never an IR beside a .keras it does not match
    try:
        atomic_save(out, save, ".keras")
    except OSError as exc:
        raise FeatcacheError(f"cannot write {out}: {exc.strerror or exc}") from None


def _end_to_end(backbone, card: dict, pipe, size: tuple):
    """Images of ``size`` (``(None, None)``: any) in, the head's probabilities out, in one Keras model."""
    import keras  # heavy: only an export builds a graph

    images, x = _features_graph(backbone, card, size)
    if card.get("kind") == "keras":
        probs = pipe.steps[-1][1].model_(x)
    else:  # a linear scikit-learn head: its scaler, PCA and classifier as Dense layers
        from .linear_export import probabilities

        probs = probabilities(pipe, x, name="head")
    return keras.Model(images, probs, name=f"featcache_{output_name_safe(card['head'])}")


def _features_graph(backbone, card: dict, size: tuple):
    """``(images input, features tensor)``: the pixels as the cache saw them through the backbone, as stored."""
    import keras  # heavy: only an export builds a graph
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
    outs = extractor(x)
    if feats["output"] not in outs:  # a forged card's output: say so, not a KeyError
        raise FeatcacheError(f"the card's features.output {feats['output']!r} is not an output of "
                             f"{params['backbone']}; it has {', '.join(outs)}")
    x = outs[feats["output"]]
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten_features")(x)
    if feats.get("dtype") == "float16":  # the head learned on features stored as float16
        x = keras.layers.Activation("linear", dtype="float16", name="as_stored_float16")(x)
        x = keras.layers.Activation("linear", dtype="float32", name="as_float32")(x)
    return images, x


def export_heads(dirs: list, out, *, input_size: tuple[int, int] | None = None, format: str = "keras") -> Path:
    """One model for one regression or multi-label head, or several heads trained on one cache: one backbone
    run, then every head; several heads give one output each, named after its target (``TARGET_HEAD`` where
    two share a target). ``featcache.json`` lists each output's name, kind, names (classes, labels or
    outputs), head and, for multi-label, its per-label thresholds."""
    if format != "keras":
        raise FeatcacheError("format openvino exports one classification head; several heads or a target's head "
                             "export as .keras only")
    out = _check_export_target(out)
    if input_size is not None and (not isinstance(input_size, (tuple, list)) or len(input_size) != 2
                                   or not all(is_integer(v) and v >= 1 for v in input_size)):
        raise FeatcacheError(f"input_size must be (height, width) of positive integers or None, got {input_size!r}")
    cards = [read_card(d) for d in dirs]
    _check_heads_export(dirs, cards)
    pipes = [load_model_dir(d)[0] for d in dirs]
    for card in cards:
        warn_precision_drift(card, None, "the exported model computes", stacklevel=2)
    import keras  # heavy: only an export builds a graph

    images, x = _features_graph(_current_backbone(cards[0]), cards[0], tuple(input_size) if input_size else (None, None))
    outputs = _output_records(cards)
    tensors = {o["name"]: _head_tensor(p, c, x, o["name"]) for o, p, c in zip(outputs, pipes, cards)}
    model = keras.Model(images, tensors if len(dirs) > 1 else next(iter(tensors.values())),
                        name=f"featcache_{output_name_safe('_'.join(tensors))}"[:120])
    info = _export_record(cards[0], input_size) | {"outputs": outputs, "head": [c["head"] for c in cards]}
    info |= {"class_names": outputs[0]["names"] if len(outputs) == 1 else [], "classes": None,
             "metrics": {o["name"]: c.get("metrics", {}) for o, c in zip(outputs, cards)}}
    _save_with_info(model, out, info, openvino=False)
    return out


def _check_heads_export(dirs: list, cards: list) -> None:
    """Every head exportable, all trained on the same cache's features: each refusal in one line."""
    from .linear_export import target_refusal

    for d, card in zip(dirs, cards):
        t = other_kind(card)
        why = (None if card.get("kind") == "keras"  # every Keras head's model is Keras layers, of any kind
               else target_refusal(str(card.get("head")), t) if t else refusal(str(card.get("head"))))
        if why:
            raise FeatcacheError(f"{d}: {why}")
    keys = {c["features"]["cache_key"] for c in cards}
    if len(keys) > 1 or len({c["features"]["output"] for c in cards}) > 1:
        raise FeatcacheError("one model with several outputs needs heads trained on the same cache; these came from "
                             f"{len(keys)} caches ({', '.join(str(d) for d in dirs)})")


def _output_records(cards: list) -> list[dict]:
    """Each head's output: named after its target (``label`` for a classifier), ``TARGET_HEAD`` where two share one."""
    targets = [(c.get("target") or {}).get("name", "label") for c in cards]
    records = []
    for name, card in zip(targets, cards):
        t = card["target"] if other_kind(card) else {"kind": "classification", "names": card["class_names"]}
        out = name if targets.count(name) == 1 else f"{name}_{output_name_safe(card['head'])}"
        records.append({"name": out, "target": name, "kind": t["kind"], "names": list(t["names"]),
                        "head": card["head"], **({"thresholds": t["thresholds"]} if "thresholds" in t else {})})
    if len({r["name"] for r in records}) < len(records):
        raise FeatcacheError("two of the heads are the same head of the same target; export each once")
    return records


def _head_tensor(pipe, card: dict, x, name: str):
    """One head on the shared features: a classifier's probabilities, a regression's values or per-label
    probabilities, under a layer named ``name``."""
    import keras

    if card.get("kind") == "keras":  # a regression head's model ends in its targets' un-standardising
        model = pipe.steps[-1][1].model_  # renamed: two Keras heads in one model must not share a name
        y = keras.Model(model.inputs, model.outputs[0], name=f"{name}_head")(x)
    elif other_kind(card):
        from .linear_export import target_outputs

        y = target_outputs(pipe, x, card["target"]["kind"], name=f"{name}_head")
    else:
        from .linear_export import probabilities

        y = probabilities(pipe, x, name=f"{name}_head")
    return keras.layers.Identity(name=name)(y)


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
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return isinstance(config, dict) and str(config.get("config", {}).get("name", "")).startswith("featcache_")
