"""Top-block fine-tuning from cached feature maps: the CNN below the cut never runs again.

The Keras transfer-learning guide's second step unfreezes the top of the
backbone and trains it with the head, pushing every image through the whole
CNN on every epoch. Here the cache already holds the map of a mid-level layer
(``featcache extract ... --outputs LAYER --pooling none``), so only the
layers *above* it are rebuilt, with the backbone's own weights, as a
trainable Keras model with a softmax head on top, and trained on the cached
maps:

1. the head alone, the block frozen (a linear probe on the block's output);
2. then the block too, at a small learning rate.

Both phases early-stop on the validation split and keep the best weights.
BatchNormalization layers stay in inference mode throughout (frozen, and
called with ``training=False``): updating their statistics on small
fine-tuning batches is the known trap (keras-team/keras#9214).

The result is an ordinary Keras head (a model directory that ``predict``,
``bench``'s readers and ``export`` accept): its model maps the flattened
cached map to probabilities, so ``export`` joins the frozen bottom and the
fine-tuned top into one end-to-end model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .errors import FeatcacheError
from .params import Param, check, defaults, docs
from .splits import TEST_FRACTION, VAL_FRACTION
from .store import Cache, open_cache


def _cut_layer(cache: Cache, output: str, from_layer: str | None) -> str:
    """The backbone layer whose map ``output`` holds; refuses pooled or unknown outputs."""
    params = cache.params
    if params.get("pooling") != "none":
        raise FeatcacheError(f"{cache.path} holds pooled features ({params.get('pooling')}); fine-tuning needs the "
                             "cached map of a layer: extract with --outputs LAYER --pooling none")
    layers = list(params.get("outputs") or [])
    names = {}
    from .backbones.graph import output_name

    for layer in layers:
        names[output_name(layer)] = layer
    if not layers and cache.backbone_ref.get("layer"):
        names[output] = cache.backbone_ref["layer"]
    if from_layer is not None:
        if from_layer not in names.values():
            raise FeatcacheError(f"{cache.path} holds no map of layer {from_layer!r} (it holds "
                                 f"{', '.join(names.values()) or 'the backbone output only'})")
        return from_layer
    if output not in names:
        raise FeatcacheError(f"{cache.path}: output {output!r} is the backbone's last map, with no block above it; "
                             "extract a mid-level layer with --outputs LAYER --pooling none")
    return names[output]


def build_top(cache: Cache, layer: str, to_layer: str | None = None):
    """The backbone's layers above ``layer`` as a Keras model (the cached map in, the block's output out).

    Args:
        cache: the cache whose backbone (exact weights) is rebuilt.
        layer: the cut: the layer whose output map the cache holds.
        to_layer: where the block ends (default: the backbone's output).

    Returns:
        A functional Keras model sharing nothing with the cache's extractor.
    """
    import keras

    from .backbones import resolve
    from .backbones.graph import dtype_policy

    params, ref = cache.params, cache.backbone_ref or {}
    backbone = resolve(ref.get("backbone", params["backbone"]), weights=ref.get("weights", "imagenet"))
    if backbone.identity() != params["weights"]:
        raise FeatcacheError("the backbone's weights changed since the cache was made; cannot rebuild its top block")
    with dtype_policy("float32"):  # trained in float32 whatever the extraction computed in
        base = backbone.build(tuple(params["image_size"]))
    try:
        start = base.get_layer(layer).output
        end = base.get_layer(to_layer).output if to_layer else base.output
    except ValueError as exc:
        raise FeatcacheError(f"{base.name}: {exc}") from None
    try:
        top = keras.Model(start, end, name="featcache_top_block")
    except (ValueError, KeyError) as exc:  # a branch of the block reaches below the cut
        raise FeatcacheError(f"cannot cut {base.name} at {layer!r}: the layers above it need more than its output "
                             f"({str(exc).splitlines()[0]}); choose the end of a block (an _add or _project_bn layer)")
    return top


#: every keyword of :func:`finetune` but the cache, declared once (``featcache finetune``'s flags and the
#: pipeline's ``[finetune]`` table come from here)
FINETUNE: tuple[Param, ...] = (
    Param("from_layer", None, "the cut: a layer whose map the cache holds (default: the first output's)"),
    Param("to_layer", None, "where the trainable block ends (default: the backbone's output)"),
    Param("output", None, "which stored output to train on (default: the first)"),
    Param("epochs", 30, "at most this many epochs of block + head (phase 2)", int, minimum=1),
    Param("head_epochs", 20, "at most this many epochs of the head alone first (phase 1)", int, minimum=0),
    Param("learning_rate", 1e-4, "Adam's rate for the block and head in phase 2 (small: the block starts from "
          "ImageNet weights)", float, minimum=0, bounds="(]"),
    Param("head_learning_rate", 1e-3, "Adam's rate for the head alone in phase 1", float, minimum=0, bounds="(]"),
    Param("batch_size", 32, "rows per step", int, minimum=1),
    Param("dropout", 0.2, "dropout before the softmax layer", float, minimum=0, maximum=1, bounds="[)"),
    Param("patience", 4, "early-stopping patience on validation loss, in each phase", int, minimum=0),
    Param("random_state", 0, "seeds the head's initialisation, dropout and the per-epoch shuffle", int, minimum=0),
    Param("verbose", 0, "Keras' fit verbosity (1: a progress bar per epoch)", int, minimum=0, cli=False,
          pipeline=False),
    Param("out", None, "model directory (as featcache train saves one)", Path, pipeline=False),
    Param("val_fraction", VAL_FRACTION, "share of rows without a source split that go to val (hashed by id)", float,
          minimum=0, maximum=1, bounds="[)", pipeline=False),
    Param("test_fraction", TEST_FRACTION, "share of rows without a source split that go to test (hashed by id)",
          float, minimum=0, maximum=1, bounds="[)", pipeline=False),
    Param("views", "auto", "auto: one of the cache's augmented views per train image per epoch, as Keras heads "
          "draw them; none: the plain maps only", choices=("auto", "none"), spelling="--use-views"),
)
_D = defaults(FINETUNE)


def check_settings(*, label=lambda name: name, **settings) -> None:
    """Refuse a bad fine-tuning setting with a one-line error before any work (``finetune`` and pipelines)."""
    check(FINETUNE, settings, label=label)


def finetune(cache, *, from_layer: str | None = None, to_layer: str | None = None, output: str | None = None,
             epochs: int = _D["epochs"], head_epochs: int = _D["head_epochs"],
             learning_rate: float = _D["learning_rate"], head_learning_rate: float = _D["head_learning_rate"],
             batch_size: int = _D["batch_size"], dropout: float = _D["dropout"], patience: int = _D["patience"],
             random_state: int = _D["random_state"], verbose: int = _D["verbose"], out=None,
             val_fraction: float = _D["val_fraction"], test_fraction: float = _D["test_fraction"],
             views: str = _D["views"]):
    """Fine-tune the backbone's top block and a softmax head on a cache of a mid-level map.

    Args:
        cache: a :class:`~featcache.store.Cache` (or its directory) made with
            ``--outputs LAYER --pooling none``.
{settings}

    Returns:
        A :class:`~featcache.train.TrainResult` (head ``finetune``).

    Examples:
        >>> cache = featcache.extract("imgs/", outputs=["block14_add"], pooling="none", out="c")  # doctest: +SKIP
        >>> result = featcache.finetune(cache, out="models/ft")                                    # doctest: +SKIP
        >>> featcache.export("models/ft", "ft.keras")                                              # doctest: +SKIP
    """
    from .model_dir import check_model_dir_target, save_model_dir
    from .train import TrainResult

    hyper = {"epochs": epochs, "head_epochs": head_epochs, "learning_rate": learning_rate,
             "head_learning_rate": head_learning_rate, "batch_size": batch_size, "dropout": dropout,
             "patience": patience, "random_state": random_state}
    check_settings(**hyper, from_layer=from_layer, to_layer=to_layer, output=output, verbose=verbose, out=out,
                   val_fraction=val_fraction, test_fraction=test_fraction, views=views)
    if out is not None:
        check_model_dir_target(out)
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    output = cache.output_name(output)
    layer = _cut_layer(cache, output, from_layer)
    masks, classes, labels, X, y_enc, tr, va = _rows(cache, output, val_fraction, test_fraction)
    n_views = cache.views if views == "auto" else 0
    model, history, fit_seconds = _fit(cache, output, layer, to_layer, len(classes), X, y_enc, tr, va, n_views, hyper,
                                       verbose)
    pipe = _fitted_pipeline(model, classes, X, history, verbose=verbose, **hyper)
    results = _scores(pipe.named_steps["clf"], X, labels, masks, classes)
    settings = {"from_layer": layer, "to_layer": to_layer, **hyper,
                "trainable_weights": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
                "history": history, "batch_norm": "frozen, inference mode", "views": views}
    card = _card(cache, pipe, settings, output=output, masks=masks, results=results, fit_seconds=fit_seconds,
                 val_fraction=val_fraction, test_fraction=test_fraction, n_views=n_views)
    model_dir = save_model_dir(out, pipe, card) if out is not None else None
    return TrainResult(pipe, "finetune", results, fit_seconds, classes.tolist(),
                       [cache.class_name(c) for c in classes.tolist()], model_dir, card)


if finetune.__doc__:  # the settings' help, declared once in FINETUNE (absent under python -OO)
    finetune.__doc__ = finetune.__doc__.replace("{settings}", docs(FINETUNE))


def _rows(cache: Cache, output: str, val_fraction: float, test_fraction: float):
    """``(masks, classes, labels, X, y_enc, train mask, val mask)``: the splits, the flat maps, and the rows each
    phase fits and early-stops on."""
    from .train import split_masks, train_classes

    masks = split_masks(cache, val_fraction=val_fraction, test_fraction=test_fraction)
    classes = train_classes(cache, masks)
    labels = cache.labels()
    X = cache.features(output).reshape(len(cache), -1)
    tr, va = masks["train"], masks["val"] & np.isin(labels, classes)  # val of a class train never saw: no score
    if not va.any():
        raise FeatcacheError(f"{cache.path} has no validation rows; fine-tuning early-stops on them")
    return masks, classes, labels, X, np.searchsorted(classes, labels), tr, va


def _fit(cache, output, layer, to_layer, n_classes: int, X, y_enc, tr, va, n_views: int, hyper: dict, verbose):
    """``(model, history, seconds)``: the block under a new head, fitted in two phases (the head alone, then both)."""
    model, top = _model(cache, layer, to_layer, tuple(cache.output_info(output)["shape"]), n_classes,
                        hyper["dropout"], hyper["random_state"])
    V = cache.views_of(np.flatnonzero(tr), output) if n_views else None
    phases = ((hyper["head_epochs"], hyper["head_learning_rate"], False),
              (hyper["epochs"], hyper["learning_rate"], True))
    t0 = time.perf_counter()
    history = _fit_phases(model, top, X[tr], y_enc[tr], V, (X[va].astype(np.float32), y_enc[va]), phases,
                          hyper["patience"], hyper["batch_size"], hyper["random_state"], verbose)
    return model, history, time.perf_counter() - t0


def _fitted_pipeline(model, classes, X, history, *, epochs, head_epochs, learning_rate, head_learning_rate,
                     batch_size, dropout, patience, random_state, verbose):
    """The fine-tuned model as a fitted Keras head in a pipeline, so predict, export and the model directory treat
    it as any other."""
    from sklearn.pipeline import Pipeline  # scikit-learn is slow to import: only once the checks pass

    from .heads.keras_head import KerasHeadClassifier

    head = KerasHeadClassifier(hidden=(), standardize=False, dropout=float(dropout), epochs=epochs,
                               batch_size=batch_size, learning_rate=learning_rate, patience=patience,
                               random_state=random_state, verbose=verbose)
    head.model_, head.classes_ = model, np.asarray(classes)
    head.n_features_in_, head.n_iter_ = int(X.shape[1]), int(sum(h["epochs"] for h in history))
    return Pipeline([("clf", head)])


def _scores(head, X, labels, masks: dict, classes) -> dict:
    """The head's metrics on each split that has rows."""
    from .train import SPLITS, metrics

    results = {}
    for split in SPLITS:
        m = masks[split]
        if m.any():
            results[split] = metrics(labels[m], head.predict_proba(X[m]), classes)
    return results


def _card(cache, pipe, settings: dict, *, output, masks, results, fit_seconds, val_fraction, test_fraction,
          n_views: int) -> dict:
    """The model card of a fine-tuned head: train's card with the fine-tuning settings and the views drawn."""
    from .train import card_for

    card = card_for(cache, "finetune", pipe, params={}, preprocess="none", output=output, masks=masks,
                    results=results, fit_seconds=fit_seconds, val_fraction=val_fraction, test_fraction=test_fraction)
    card["finetune"] = settings
    if n_views:
        card["views"] = {"count": n_views, "mode": "draw", "recipe": cache.augment}
    return card


def _model(cache, layer: str, to_layer, shape: tuple, n_classes: int, dropout, random_state):
    """``(model, block)``: the cached map's rebuilt block (BatchNorm frozen) under a new softmax, taking flat
    features."""
    import keras  # only now: every refusal before it comes without loading Keras

    top = build_top(cache, layer, to_layer)
    if tuple(top.inputs[0].shape[1:]) != shape:
        raise FeatcacheError(f"the rebuilt block takes maps of {tuple(top.inputs[0].shape[1:])}, the cache holds "
                             f"{shape}")
    for lyr in top.layers:  # BatchNorm: frozen statistics and scale, inference mode (keras-team/keras#9214)
        if isinstance(lyr, keras.layers.BatchNormalization):
            lyr.trainable = False
    flat = keras.Input((int(np.prod(shape)),), name="features")
    x = keras.layers.Reshape(shape, name="cached_map")(flat)
    x = top(x, training=False)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="block_avgpool")(x)
    if dropout:
        x = keras.layers.Dropout(float(dropout), seed=random_state, name="dropout")(x)
    init = keras.initializers.GlorotUniform(seed=random_state)
    probs = keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=init, name="probabilities")(x)
    return keras.Model(flat, probs, name="featcache_finetune"), top


def _fit_phases(model, top, Xtr, ytr, V, val, phases, patience, batch_size, random_state, verbose) -> list[dict]:
    """The head alone, then the block and the head, each early-stopping on val; each phase's history."""
    import keras  # heavy: only once fitting starts

    from .pretrain import shuffled_batches

    history = []
    for phase, (n_epochs, rate, block_trainable) in enumerate(phases):
        if not n_epochs:
            continue
        top.trainable = block_trainable
        if block_trainable:
            for lyr in top.layers:
                if isinstance(lyr, keras.layers.BatchNormalization):
                    lyr.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True, monitor="val_loss")
        fit = model.fit(shuffled_batches(Xtr, ytr, batch_size, random_state + 1000 * phase, V), epochs=n_epochs,
                        validation_data=val, callbacks=[stop], verbose=verbose)
        history.append({"phase": "head" if phase == 0 else "block+head", "epochs": len(fit.history["loss"]),
                        "best_val_loss": float(min(fit.history["val_loss"]))})
    return history
