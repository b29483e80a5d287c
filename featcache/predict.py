"""Predict with a saved head on raw images (the end-to-end Keras export is :mod:`featcache.model_export`).

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

from .errors import FeatcacheError
from .files import atomic_write_bytes, remove_stale_temporaries, spreadsheet_safe
from .heads import proba_and_labels
from .homes import featcache_home
from .params import Param, check, defaults
from .plan import ExtractOptions, make_plan
from .runner import run
from .model_dir import feature_mismatch, load_model_dir, other_kind, warn_precision_drift
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


#: the first columns of a predictions CSV (then one p_CLASS column per class); true_*: empty for unlabelled images
CSV_HEADER = "id,predicted_label,predicted_class,probability,error,true_label,true_class"
#: the header featcache wrote before the true labels had columns (such a file is ours to replace)
OLD_CSV_HEADER = "id,label,class,probability,error"


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
        warn_precision_drift(card, target.params, f"the cache {target.path} holds", stacklevel=3)
        return target
    feats = card["features"]
    params = feats["params"]
    opts = ExtractOptions(image_size=tuple(params["image_size"]), pooling=params["pooling"],
                          outputs=params.get("outputs"), preprocess=params["preprocess"],
                          dtype=feats.get("dtype") or "float16", compute_dtype=params["compute_dtype"],
                          background=params.get("background", "white"))  # absent: the default white
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
    warn_precision_drift(card, plan.params, "predict computes", stacklevel=3)
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

#: every keyword of :func:`predict`, declared once (``featcache predict``'s flags come from here)
PREDICT: tuple[Param, ...] = (
    Param("out", None, "write predictions to a .csv or .json file", Path, pipeline=False),
    Param("cache_dir", None, "where prediction feature caches go (default ~/.cache/featcache/predictions)", Path,
          pipeline=False),
    Param("progress", False, "show a progress bar", bool, cli=False, pipeline=False),
    Param("return_as", "rows", "rows (a list of dicts), labels, proba or frame (needs pandas)", choices=RETURN_AS,
          cli=False, pipeline=False),
)
_D = defaults(PREDICT)


def predict(model_dir, inputs, *, out=_D["out"], cache_dir=_D["cache_dir"], progress: bool = _D["progress"],
            return_as: str = _D["return_as"]):
    """Classify raw images with a saved head: the exact backbone of its card, then the head.

    A model directory is code (a scikit-learn head is a pickle): load only
    ones from people you trust. The head file's sha256 is checked against its
    card first, and the features are checked to be exactly those it learned on.

    Args:
        model_dir: a directory written by :func:`featcache.train` (or ``bench``'s ``best_model``), or several
            trained on one cache (a list, or ``a,b``): one backbone run, ``OUTPUT:COLUMN`` columns (rows, frame).
        inputs: image files, a folder, a CSV manifest, a cache directory, or
            a uint8 array of images ``N x H x W [x 1|3]`` (any size: they are
            resized as the head's training images were).
        out: also write the rows to a ``.csv`` (formula-safe cells) or ``.json`` file.
        cache_dir: where the images' feature cache goes (default
            ``$FEATCACHE_HOME/predictions``); predicting the same images again
            costs nothing.
        progress: show a progress bar.
        return_as: ``rows`` (a list of dicts), ``labels`` (an array of class names, as scikit-learn's
            ``predict``), ``proba`` (an ``N x classes`` array in ``class_names`` order, as ``predict_proba``) or
            ``frame`` (a pandas DataFrame of the rows; needs pandas). ``labels`` and ``proba`` follow the order
            of ``inputs`` (a folder: sorted by class folder and file name); an image that could not be read is
            ``None`` / a row of NaN there.

    Returns:
        By default one dict per image: ``id``, ``label``, ``class`` (the
        predicted ones), ``probability`` and ``probabilities``, and, where the
        images carry their true class (class folders, a CSV's labels, a
        cache), ``true_label`` and ``true_class`` (:func:`score_predictions`
        scores them); skipped images come back with ``error``. A CSV names the
        predicted columns ``predicted_label`` and ``predicted_class``. See
        ``return_as`` for the others.

    Examples:
        >>> rows = featcache.predict("models/fm", "new_images/")  # doctest: +SKIP
        >>> rows[0]["class"], rows[0]["probability"]             # doctest: +SKIP
        >>> featcache.predict("models/fm", images, return_as="labels")  # uint8 N x H x W x 3  # doctest: +SKIP
        array(['Bag', 'Sneaker', ...], dtype=object)
    """
    check(PREDICT, {"out": out, "cache_dir": cache_dir, "progress": progress, "return_as": return_as})
    pandas, out = _check_predict_arguments(return_as, out, cache_dir)
    if len(dirs := _model_dirs(model_dir)) > 1:  # several heads, one backbone run: a column per output
        return _predict_several(dirs, inputs, out, cache_dir, progress, return_as, pandas)
    pipe, card = load_model_dir(model_dir)
    target = source_for(inputs)
    cache = features_for(card, target, cache_dir=cache_dir, progress=progress)
    if other_kind(card):  # a regression or multi-label head: values, or label sets with probabilities
        return _predict_target(pipe, card, cache, target, out, return_as, pandas)
    rows = _classify(pipe, card, cache)
    if out is not None:
        write_predictions(rows, out, card["class_names"])
    if return_as == "rows":
        return rows
    if return_as == "frame":
        names = card["class_names"]
        return pandas.DataFrame([{k: v for k, v in r.items() if k != "probabilities"}
                                 | {f"p_{n}": (r.get("probabilities") or {}).get(n) for n in names} for r in rows])
    return _in_input_order(rows, target, cache, card["class_names"], return_as)


def _model_dirs(model_dir) -> list:
    """One model directory, or several (a list, or ``a,b`` naming no directory of its own)."""
    if isinstance(model_dir, (list, tuple)):
        return list(model_dir)
    if isinstance(model_dir, str) and "," in model_dir and not Path(model_dir).is_dir():
        return [d.strip() for d in model_dir.split(",")]
    return [model_dir]


def _predict_several(dirs, inputs, out, cache_dir, progress, return_as: str, pandas):
    """Several heads trained on one cache's features: the backbone runs once, each head predicts; ``rows``: one
    dict per image with each output's row under its name; ``frame``/``out``: ``OUTPUT:COLUMN`` columns."""
    loaded = [load_model_dir(d) for d in dirs]
    cards = [c for _, c in loaded]
    if len({(c["features"]["cache_key"], c["features"]["output"]) for c in cards}) > 1:
        raise FeatcacheError(f"several heads predict together when trained on the same cache's features (one "
                             f"backbone run); {', '.join(map(str, dirs))} come from different ones")
    if return_as not in ("rows", "frame"):
        raise FeatcacheError("several heads predict return_as='rows' or 'frame' (a column per output); give one "
                             "model directory for 'labels' or 'proba'")
    target = source_for(inputs)
    cache = features_for(cards[0], target, cache_dir=cache_dir, progress=progress)
    targets = [(c.get("target") or {}).get("name", "label") for c in cards]
    names = [t if targets.count(t) == 1 else f"{t}_{c['head']}" for t, c in zip(targets, cards)]
    if len(set(names)) < len(names):
        raise FeatcacheError("two of the model directories are the same head of the same target; give each once")
    per, columns = {}, ["id"]
    for (pipe, card), name in zip(loaded, names):
        rows = _target_rows(pipe, card, cache) if other_kind(card) else _classify(pipe, card, cache)
        per[name] = {r["id"]: r for r in rows}
        own = _target_columns(card) if other_kind(card) else ["class", "probability",
                                                             *[f"p_{n}" for n in card["class_names"]]]
        columns += [f"{name}:{c}" for c in own]
    ids = list(per[names[0]])
    rows = [{"id": i, **{n: {k: v for k, v in per[n][i].items() if k != "id"} for n in names}} for i in ids]
    if return_as == "rows" and out is None:
        return rows
    table = [[i, *[v for card, n in zip(cards, names) for v in _cells(per[n][i], card)],
              next((per[n][i]["error"] for n in names if per[n][i].get("error")), "")] for i in ids]
    if out is not None:
        _write_table(out, columns + ["error"], table)
    return rows if return_as == "rows" else pandas.DataFrame(table, columns=columns + ["error"])


def _cells(r: dict, card: dict) -> list:
    """One head's cells of a row: a target's (:func:`_target_cells`), or a classifier's class, probability, p_*."""
    if other_kind(card):
        return _target_cells(r, card)
    probs = r.get("probabilities") or {}
    return [r.get("class"), r.get("probability"), *[probs.get(n) for n in card["class_names"]]]


def _write_table(out, header: list, table: list) -> None:
    """Rows of cells to ``out`` (.csv, formula-safe; .json: a list of objects)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatcacheError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    if out.suffix.lower() == ".json":
        data = (json.dumps([dict(zip(header, r)) for r in table], indent=2) + "\n").encode()
    else:
        text = io.StringIO(newline="")
        w = csv.writer(text)
        for r in [header, *table]:
            w.writerow([spreadsheet_safe(v) for v in r])
        data = text.getvalue().encode("utf-8", "surrogateescape")
    atomic_write_bytes(out, data)


def _target_rows(pipe, card: dict, cache: Cache) -> list[dict]:
    """Regression: ``value`` (one output) and ``values`` by output; multi-label: ``labels`` (each label's
    probability at or above its validation threshold) and ``probabilities``. ``class``: the prediction as text."""
    from .train_targets import _scores

    t = card["target"]
    X = cache.features(card["features"]["output"])
    X = X.reshape(len(X), -1).astype(np.float32)
    scores = _scores(pipe, X, t["kind"]).reshape(len(X), -1) if len(X) else np.zeros((0, len(t["names"])))
    rows = []
    for rid, s in zip(cache.ids(), scores):
        if t["kind"] == "regression":
            values = {n: float(v) for n, v in zip(t["names"], s)}
            row = {"id": rid, "target": t["name"], "values": values, "class": ", ".join(f"{v:.4g}" for v in s)}
            row |= {"value": float(s[0])} if len(s) == 1 else {}
        else:
            labels = [n for n, v, th in zip(t["names"], s, t["thresholds"]) if v >= th]
            row = {"id": rid, "target": t["name"], "labels": labels, "class": "|".join(labels),
                   "probabilities": {n: float(v) for n, v in zip(t["names"], s)}}
        rows.append(row | {"probability": None})
    for sk in cache.skipped:
        rows.append({"id": sk["id"], "target": t["name"], "class": None, "probability": None, "error": sk["reason"]})
    return rows


def _target_columns(card: dict) -> list[str]:
    """A target's prediction columns: ``predicted_OUTPUT`` per regression output, ``predicted_labels`` then
    ``p_LABEL`` per label."""
    t = card["target"]
    if t["kind"] == "regression":
        return [f"predicted_{n}" for n in t["names"]]
    return ["predicted_labels", *[f"p_{n}" for n in t["names"]]]


def _target_cells(r: dict, card: dict) -> list:
    t = card["target"]
    if r.get("error"):
        return [None] * len(_target_columns(card))
    if t["kind"] == "regression":
        return [r["values"][n] for n in t["names"]]
    return ["|".join(r["labels"]), *[r["probabilities"][n] for n in t["names"]]]


def _predict_target(pipe, card: dict, cache: Cache, target, out, return_as: str, pandas):
    """:func:`predict` for a regression or multi-label head (its card's ``target``)."""
    rows = _target_rows(pipe, card, cache)
    if out is not None:
        write_predictions(rows, out, card=card)
    if return_as == "rows":
        return rows
    columns = _target_columns(card)
    if return_as == "frame":
        return pandas.DataFrame([{"id": r["id"], **dict(zip(columns, _target_cells(r, card))),
                                  "error": r.get("error", "")} for r in rows], columns=["id", *columns, "error"])
    kind, names = card["target"]["kind"], card["target"]["names"]
    ids = [it.id for it in target.items] if isinstance(target, Source) else cache.ids()
    by_id = {r["id"]: r for r in rows if not r.get("error")}
    if return_as == "labels" and kind == "multilabel":
        return np.array([by_id[i]["labels"] if i in by_id else None for i in ids], dtype=object)
    if return_as == "proba" and kind == "regression":
        raise FeatcacheError("a regression head predicts values, not probabilities: use return_as='labels' "
                             "(the values) or 'rows'")
    key = "values" if kind == "regression" else "probabilities"
    nan = [float("nan")] * len(names)
    out_arr = np.array([[by_id[i][key][n] for n in names] if i in by_id else nan for i in ids], np.float64)
    return out_arr[:, 0] if kind == "regression" and len(names) == 1 else out_arr.reshape(len(ids), len(names))


def _check_predict_arguments(return_as: str, out, cache_dir):
    """Judge the arguments before any work; returns ``(pandas or None, out as a Path or None)``."""
    pandas = None
    if return_as == "frame":
        try:
            import pandas  # optional: only return_as="frame" needs it
        except ImportError:
            raise FeatcacheError("return_as='frame' needs pandas (pip install pandas); 'rows', 'labels' and "
                                 "'proba' need nothing more") from None
    if out is not None:
        out = _check_predictions_target(out)
    if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise FeatcacheError(f"--cache-dir {cache_dir} exists and is not a directory")
    return pandas, out


def _classify(pipe, card: dict, cache: Cache) -> list[dict]:
    """One row per cached image (class, probability, every class's probability), then one per skipped image."""
    X = cache.features(card["features"]["output"])
    X = X.reshape(len(X), -1).astype(np.float32)
    proba, labels = proba_and_labels(pipe, X) if len(X) else (np.zeros((0, len(card["classes"]))), [])
    names = card["class_names"]
    column = {c: k for k, c in enumerate(card["classes"])}
    rows = []
    truth = _true_classes(cache, card)
    for rid, p, label, (true_label, true_class) in zip(cache.ids(), proba, labels, truth):
        k = column[label.item() if hasattr(label, "item") else label]
        rows.append({"id": rid, "label": card["classes"][k], "class": names[k], "probability": float(p[k]),
                     "probabilities": {n: float(v) for n, v in zip(names, p)}}
                    | ({"true_label": true_label, "true_class": true_class} if true_class is not None else {}))
    for s in cache.skipped:
        rows.append({"id": s["id"], "label": None, "class": None, "probability": None, "error": s["reason"]})
    return rows


def _true_classes(cache: Cache, card: dict) -> list[tuple]:
    """Per cached row ``(true_label, true_class)`` from the images' own labels (class folders, a CSV's labels);
    ``(None, None)`` where unlabelled; a class the head does not know has ``true_label`` None."""
    if card.get("target"):  # a classification target's head: the images' folders name the source's classes
        return [(None, None)] * len(cache)
    names, classes = card["class_names"], card["classes"]
    by_name = {n: c for n, c in zip(names, classes)}
    by_label = {c: n for n, c in zip(names, classes)}
    source_names = cache.class_names
    out = []
    for code in cache.labels().tolist():
        if code < 0:
            out.append((None, None))
        elif source_names:  # the images name their classes: match by name, as the head's card does
            name = source_names[code]
            out.append((by_name.get(name), name))
        else:
            out.append((code, by_label[code]) if code in by_label else (None, str(code)))
    return out


def score_predictions(rows: list[dict], *, seed: int = 0) -> dict | None:
    """Accuracy (with its 95% bootstrap interval) and a per-class table over the rows with a true class.

    A true class the head does not know counts as a miss. None when no row
    is labelled. Returns ``{"n", "correct", "accuracy", "accuracy_ci", "per_class":
    [{"class", "n", "correct", "accuracy", "predicted"}, ...]}``.
    """
    from .bench.stats import bootstrap_intervals

    scored = [r for r in rows if r.get("true_class") is not None and r.get("class") is not None]
    if not scored:
        return None
    truth = [r["true_class"] for r in scored]
    pred = [r["class"] for r in scored]
    hit = np.array([t == p for t, p in zip(truth, pred)])
    per_class = []
    for name in sorted(set(truth) | set(pred), key=str):
        mine = np.array([t == name for t in truth])
        per_class.append({"class": name, "n": int(mine.sum()), "correct": int(hit[mine].sum()),
                          "accuracy": float(hit[mine].mean()) if mine.any() else None,
                          "predicted": int(sum(p == name for p in pred))})
    ci = bootstrap_intervals(truth, pred, seed=seed)["accuracy_ci"]
    return {"n": len(scored), "correct": int(hit.sum()), "accuracy": float(hit.mean()), "accuracy_ci": ci,
            "per_class": per_class}


def describe_score(score: dict) -> tuple[str, list[str], list[list]]:
    """:func:`score_predictions`' result as a line of text and a per-class table (columns, rows) to print."""
    lo, hi = score["accuracy_ci"]
    line = (f"accuracy {score['accuracy']:.1%} ({score['correct']}/{score['n']} labelled images; "
            f"95% bootstrap interval {lo:.1%}-{hi:.1%})")
    rows = [[c["class"], c["n"], c["correct"], "-" if c["accuracy"] is None else f"{c['accuracy']:.1%}",
             c["predicted"]] for c in score["per_class"]]
    return line, ["class", "images", "correct", "accuracy", "predicted as it"], rows


def _in_input_order(rows: list[dict], target, cache: Cache, names, return_as: str) -> np.ndarray:
    """``labels`` or ``proba`` in the order of the inputs; an unread image is None / a row of NaN."""
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
                head = f.read(len(CSV_HEADER))
            # a target's predictions: id, predicted_OUTPUT... or predicted_labels, then error
            return head == CSV_HEADER.encode() or head.startswith(OLD_CSV_HEADER.encode()) or \
                head.startswith(b"id,predicted_") and b",error" in path.read_bytes().split(b"\n", 1)[0]
        rows = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(rows, list) and all(isinstance(r, dict) and "id" in r and "class" in r for r in rows)


def write_predictions(rows: list[dict], out, class_names=(), *, card: dict | None = None) -> None:
    """Rows to a .json file, or a .csv: classes (``CSV_HEADER`` then ``p_CLASS``), or with the ``card`` of a
    regression or multi-label head ``id``, its prediction columns (:func:`_target_columns`) and ``error``."""
    out = _check_predictions_target(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatcacheError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    if out.suffix.lower() == ".json":
        data = (json.dumps(rows, indent=2) + "\n").encode()  # ASCII: non-UTF-8 names travel as \udcXX escapes
    elif card is not None and other_kind(card):
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow([spreadsheet_safe(v) for v in ["id", *_target_columns(card), "error"]])
        for r in rows:
            w.writerow([spreadsheet_safe(v) for v in [r["id"], *_target_cells(r, card), r.get("error", "")]])
        data = text.getvalue().encode("utf-8", "surrogateescape")
    else:
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow([spreadsheet_safe(v) for v in CSV_HEADER.split(",") + [f"p_{n}" for n in class_names]])
        for r in rows:
            probs = r.get("probabilities") or {}
            w.writerow([spreadsheet_safe(v) for v in [r["id"], r["label"], r["class"], r["probability"],
                                                      r.get("error", ""), r.get("true_label"), r.get("true_class")]]
                       + [probs.get(n, "") for n in class_names])
        # surrogateescape: an image whose file name is not UTF-8 keeps its exact bytes in the id column
        data = text.getvalue().encode("utf-8", "surrogateescape")
    remove_stale_temporaries(out)
    try:
        atomic_write_bytes(out, data)
    except OSError as exc:
        raise FeatcacheError(f"cannot write {out}: {exc.strerror or exc}") from None
