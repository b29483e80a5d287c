"""Top-block fine-tuning from the cache against the classic recipe's fine-tuning of the same block.

    python benchmarks/finetune.py                 # 1,000 Fashion-MNIST train images at 96 px, 3 seeds
    python benchmarks/finetune.py --quick         # tiny counts: proves the script runs

Both sides in this one invocation, on the same images, splits, block, head,
optimiser, epochs and early stopping:

* **cache route**: ``featcache.extract(..., outputs=[CUT], pooling="none")``
  once (timed), then ``featcache.finetune`` per seed: the layers above the
  cut train on the cached maps.
* **classic route**: the Keras transfer-learning guide's second step: the
  whole EfficientNet-Lite0 in the model, the layers up to the cut frozen, the
  same block and head trainable (BatchNorm frozen, inference mode), and
  ``model.fit`` over the images every epoch (the same two phases: head alone,
  then block + head).
* the best frozen head for reference: logistic regression on the pooled
  features of the same backbone (one extraction, timed).

With ``--views K`` both sides augment with the same recipe (:data:`RECIPE`):
the cache route extracts K augmented views of each train image's map and
draws one per image per epoch; the classic route draws a fresh augmentation
of every image every epoch (``featcache.augment``'s transform, live, before
the CNN). Without it neither side augments. Results go to
benchmarks/finetune.json (``finetune_views.json`` with ``--views``); nothing
is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import featcache  # noqa: E402
from featcache.datasets import load_arrays  # noqa: E402

RECIPE = "flip,crop=0.85,seed=0"  # featcache's default
CUT = "block14_add"  # EfficientNet-Lite0: block 15 and the 1x1 head conv (1.0 M weights) lie above it
FULL = dict(train=1000, val=200, test=1000, size=96, seeds=3, epochs=10, head_epochs=5)
QUICK = dict(train=60, val=30, test=60, size=64, seeds=1, epochs=2, head_epochs=1)


def sample(n_per: dict, seed=0):
    """Stratified train/val from Fashion-MNIST's train split, test from its test split."""
    from sklearn.model_selection import train_test_split

    tr = load_arrays("fashion_mnist:train")
    te = load_arrays("fashion_mnist:test")
    idx, _ = train_test_split(np.arange(len(tr["labels"])), train_size=n_per["train"] + n_per["val"],
                              stratify=tr["labels"], random_state=seed)
    i_tr, i_va = train_test_split(idx, train_size=n_per["train"], stratify=tr["labels"][idx], random_state=seed)
    i_te, _ = train_test_split(np.arange(len(te["labels"])), train_size=n_per["test"], stratify=te["labels"],
                               random_state=seed)
    images = np.concatenate([tr["images"][i_tr], tr["images"][i_va], te["images"][i_te]])
    labels = np.concatenate([tr["labels"][i_tr], tr["labels"][i_va], te["labels"][i_te]])
    splits = ["train"] * len(i_tr) + ["val"] * len(i_va) + ["test"] * len(i_te)
    return images, labels, np.array(splits), tr["class_names"]


def live_augmented(X, y, batch_size: int, seed: int):
    """The classic recipe's live augmentation: every image freshly augmented every epoch, then the CNN."""
    import keras

    from featcache.augment import augment_images, parse_recipe

    recipe = parse_recipe(RECIPE)
    ids = [f"img{i}" for i in range(len(y))]

    class _Live(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(y))

        def __len__(self):
            return -(-len(y) // batch_size)

        def __getitem__(self, i):
            idx = np.sort(self.order[i * batch_size:(i + 1) * batch_size])
            params = recipe.params([ids[j] for j in idx], 1000 + seed * 100 + self.epoch, X.shape[1:3])
            return augment_images(X[idx], params), y[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(y))

    return _Live()


def classic(images, labels, splits, size, seed, epochs, head_epochs, batch_size=32, patience=4, augment=False):
    """The guide's fine-tuning: the CNN inside the model, the layers up to CUT frozen, fit over images."""
    import keras

    from featcache.backbones import resolve
    from featcache.backbones.layers import preprocess
    from featcache.pretrain import shuffled_batches

    backbone = resolve("efficientnet_lite0", weights="imagenet")
    base = backbone.build((size, size))
    names = [layer.name for layer in base.layers]
    above = set(names[names.index(CUT) + 1:])
    inp = keras.Input((None, None, 3), dtype="uint8")
    x = preprocess(inp, backbone.spec.preprocess, (size, size))
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2, seed=seed)(x)
    out = keras.layers.Dense(10, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    model = keras.Model(inp, out)
    rgb = np.repeat(images[..., None], 3, -1) if images.ndim == 3 else images
    tr, va, te = (splits == s for s in ("train", "val", "test"))
    t0 = time.perf_counter()
    base.trainable = True
    for phase, (n, rate, block) in enumerate(((head_epochs, 1e-3, False), (epochs, 1e-4, True))):
        for layer in base.layers:
            layer.trainable = block and layer.name in above and not isinstance(layer, keras.layers.BatchNormalization)
        model.compile(keras.optimizers.Adam(rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
        batches = (live_augmented(rgb[tr], labels[tr], batch_size, seed + 1 + 1000 * phase) if augment
                   else shuffled_batches(rgb[tr], labels[tr], batch_size, seed + 1 + 1000 * phase))
        model.fit(batches, epochs=n,
                  validation_data=(rgb[va], labels[va]), verbose=0,
                  callbacks=[keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)])
    wall = time.perf_counter() - t0
    acc = float((model.predict(rgb[te], verbose=0).argmax(1) == labels[te]).mean())
    return acc, wall


@contextlib.contextmanager
def quiet_machine():
    """Hold ``$FEATCACHE_CPU_LOCK`` (a flock file shared with other heavy jobs) around one timed piece, if set."""
    path = os.environ.get("FEATCACHE_CPU_LOCK")
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", help="where the caches go (default: a new temporary directory)")
    ap.add_argument("--views", type=int, default=0, help="augmented views on the cache side, live augmentation on "
                    "the classic side (default 0: neither augments)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="featcache-bench-finetune-"))
    images, labels, splits, class_names = sample(cfg)
    source = featcache.ArraySource(images, labels, splits=list(splits), class_names=class_names, name="fashion_mnist")
    with quiet_machine():
        t0 = time.perf_counter()
        maps = featcache.extract(source, outputs=[CUT], pooling="none", out=work / "maps", image_size=cfg["size"],
                                 views=args.views, augment=RECIPE)
        extract_maps = time.perf_counter() - t0
    with quiet_machine():
        t0 = time.perf_counter()
        pooled = featcache.extract(source, out=work / "pooled", image_size=cfg["size"])
        extract_pooled = time.perf_counter() - t0
        t0 = time.perf_counter()
        frozen = featcache.train(pooled, "logreg")
        frozen_s = time.perf_counter() - t0
    cached, classic_runs = [], []
    for seed in range(cfg["seeds"]):
        with quiet_machine():
            t0 = time.perf_counter()
            res = featcache.finetune(maps, epochs=cfg["epochs"], head_epochs=cfg["head_epochs"], random_state=seed)
            cached.append((res.metrics["test"]["accuracy"], time.perf_counter() - t0))
        with quiet_machine():
            classic_runs.append(classic(images, labels, splits, cfg["size"], seed, cfg["epochs"], cfg["head_epochs"],
                                        augment=bool(args.views)))
        print(f"seed {seed}: cache route {cached[-1][0]:.4f} in {cached[-1][1]:.1f} s, classic {classic_runs[-1][0]:.4f} "
              f"in {classic_runs[-1][1]:.1f} s", flush=True)
    acc_c, t_c = np.array(cached).T
    acc_k, t_k = np.array(classic_runs).T
    result = {
        "config": cfg, "cut": CUT, "backbone": "efficientnet_lite0", "views": args.views,
        "recipe": RECIPE if args.views else None,
        "map_bytes_per_image": int(np.prod(maps.output_info()["shape"]) * 2),
        "extract_maps_seconds": extract_maps, "extract_pooled_seconds": extract_pooled,
        "frozen_logreg": {"test_accuracy": frozen.metrics["test"]["accuracy"], "fit_seconds": frozen_s},
        "cache_route": {"test_accuracy": acc_c.tolist(), "mean": acc_c.mean(), "sd": acc_c.std(ddof=1) if len(acc_c) > 1
                        else 0.0, "finetune_seconds": t_c.tolist()},
        "classic_route": {"test_accuracy": acc_k.tolist(), "mean": acc_k.mean(), "sd": acc_k.std(ddof=1) if len(acc_k) > 1
                          else 0.0, "fit_seconds": t_k.tolist()},
        "accuracy_gap_points": 100 * (acc_c.mean() - acc_k.mean()),
        "wall_ratio_cache_over_classic": (extract_maps + t_c.mean()) / t_k.mean(),
    }
    print(json.dumps(result, indent=2, default=float))
    if not args.quick:
        name = f"finetune_views{args.views}.json" if args.views else "finetune.json"
        (REPO / "benchmarks" / name).write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
