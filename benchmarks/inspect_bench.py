"""featcache inspect on Fashion-MNIST with planted label flips, duplicates and outliers: precision, recall, time.

    PYTHONPATH=$PWD python benchmarks/inspect_bench.py --n 4000 --work /tmp/insp4k

Flips ``--flip`` of the train images' labels (seeded), copies 40 train images
into test (exact bytes, a 5% crop, a mirror, a JPEG re-encode: 10 each) and
adds 20 crops of scikit-learn's sample photos to train; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = ("exact", "crop", "mirror", "jpeg")


def _variant(src: Path, dst_dir: Path, k: int, kind: str) -> Path:
    img = Image.open(src)
    w, h = img.size
    if kind == "exact":
        return Path(shutil.copy(src, dst_dir / f"dup{k}.png"))
    out = dst_dir / (f"dup{k}.jpg" if kind == "jpeg" else f"dup{k}.png")
    if kind == "crop":
        img = img.crop((1, 1, w - 1, h - 1)).resize((w, h))
    elif kind == "mirror":
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img.convert("RGB").save(out, quality=85) if kind == "jpeg" else img.save(out)
    return out


def plant(root: Path, n: int, flip: float, seed: int) -> dict:
    """Write the planted folder; what was planted, by id (train/cX/name)."""
    from sklearn.datasets import load_sample_images

    from featcache.datasets import load_fashion_mnist

    rng = np.random.default_rng(seed)
    images, labels, _ = load_fashion_mnist("train")
    images, labels = images[:n], labels[:n].astype(int)
    split = np.where(np.arange(n) % 10 == 0, "test", "train")
    train = np.flatnonzero(split == "train")
    flipped = set(rng.choice(train, int(round(flip * len(train))), replace=False).tolist())
    truth = {"flipped": set(), "duplicates": [], "outliers": set()}
    for i in range(n):
        given = (labels[i] + rng.integers(1, 10)) % 10 if i in flipped else labels[i]
        d = root / split[i] / f"c{given}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"fm{i:05d}.png")
        if i in flipped:
            truth["flipped"].add(f"train/c{given}/fm{i:05d}.png")
    sources = rng.choice(sorted(set(train.tolist()) - flipped), 40, replace=False)
    for k, i in enumerate(sources):
        src = root / "train" / f"c{labels[i]}" / f"fm{i:05d}.png"
        dst = root / "test" / f"c{labels[i]}"
        dst.mkdir(parents=True, exist_ok=True)
        out = _variant(src, dst, k, VARIANTS[k % 4])
        truth["duplicates"].append((str(src.relative_to(root)), str(out.relative_to(root)), VARIANTS[k % 4]))
    photos = load_sample_images().images
    for k in range(20):
        y, x = rng.integers(0, 300, 2)
        c = int(rng.integers(0, 10))
        Image.fromarray(photos[k % 2][y:y + 96, x:x + 96]).save(root / "train" / f"c{c}" / f"photo{k}.png")
        truth["outliers"].add(f"train/c{c}/photo{k}.png")
    return truth


def label_study(cache, truth: dict, seed: int) -> dict:
    """Every cleanlab filter on inspect's own out-of-fold probabilities, the same probabilities on the true labels
    (what the features' own confusion flags with no noise at all), and precision off the confused class pairs."""
    from cleanlab.filter import find_label_issues

    from featcache.datasets import load_fashion_mnist
    from featcache.inspect.labels import FILTERS, class_overlap, out_of_fold

    ids, labels = cache.ids(), cache.labels()
    rows = np.flatnonzero(labels >= 0)
    present = np.unique(labels[rows])
    y = np.searchsorted(present, labels[rows])
    fm = np.array([ids[r].rsplit("/", 1)[-1].startswith("fm") for r in rows])  # the planted photos have no truth
    true_all = load_fashion_mnist("train")[1]
    name_to_y = {cache.class_name(int(c)): i for i, c in enumerate(present)}
    t = y.copy()
    t[fm] = [name_to_y[f"c{true_all[int(ids[r].rsplit('fm', 1)[1][:5])]}"] for r in rows[fm]]
    noisy = np.array([ids[r] in truth["flipped"] for r in rows])
    probs = out_of_fold(cache, rows, y, seed=seed)
    confused = {(p["a"], p["b"]) for p in class_overlap(probs, y)} | {(p["b"], p["a"]) for p in class_overlap(probs, y)}
    out = {}
    for fb in FILTERS:
        flag = find_label_issues(y, probs, filter_by=fb)
        tp = int((flag & noisy).sum())
        off = flag & np.array([(a, b) not in confused for a, b in zip(y, probs.argmax(1))])
        out[fb] = {"flagged": int(flag.sum()), "precision": round(tp / max(1, flag.sum()), 3),
                   "recall": round(tp / max(1, noisy.sum()), 3),
                   # flags whose given and suggested class are not a pair the features confuse (class_overlap)
                   "off_confused_pairs": int(off.sum()),
                   "precision_off_confused_pairs": round(int((off & noisy).sum()) / max(1, off.sum()), 3)}
    clean = out_of_fold(cache, rows[fm], t[fm], seed=seed)  # no flips at all: every flag is a false one
    out["noise_free_flagged"] = {fb: int(find_label_issues(t[fm], clean, filter_by=fb).sum()) for fb in FILTERS[:2]}
    out["noise_free_rows"] = int(fm.sum())
    return out


def main() -> None:
    import featcache
    from featcache.inspect.duplicates import unit_rows
    from featcache.inspect.outliers import datalab_score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--flip", type=float, default=0.05)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--work", type=Path, default=Path("/tmp/insp-bench"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-study", action="store_true", help="skip the label study (two more out-of-fold fits)")
    ap.add_argument("--reuse", action="store_true", help="keep an earlier run's images and cache (extract is a no-op)")
    a = ap.parse_args()
    if not a.reuse:
        shutil.rmtree(a.work, ignore_errors=True)
    truth = plant(a.work / "images", a.n, a.flip, a.seed)  # deterministic: rewrites the same images
    shutil.rmtree(a.work / "report", ignore_errors=True)
    t0 = time.perf_counter()
    cache = featcache.extract(str(a.work / "images"), out=a.work / "cache", backbone=a.backbone,
                              image_size=a.image_size, batch_size=128)
    t1 = time.perf_counter()
    rep = featcache.inspect(cache, out=a.work / "report")
    t2 = time.perf_counter()
    ids = cache.ids()
    flagged = {ids[r] for r in rep["label_rows"]}
    hit = flagged & truth["flipped"]
    group_of: dict[str, set] = {}
    import csv
    with open(a.work / "report" / "issues.csv") as f:
        for r in csv.DictReader(f):
            if r["issue"] in ("duplicate", "near_duplicate"):
                group_of.setdefault(r["id"], set()).add(r["group"])
    dup = {v: [bool(group_of.get(s, set()) & group_of.get(d, set())) for s, d, k in truth["duplicates"] if k == v]
           for v in VARIANTS}
    top = max(1, len(ids) // 100)
    knn_top = {ids[r] for r in np.argsort(-rep["outlier_scores"])[:top]}
    t3 = time.perf_counter()
    dl = datalab_score(unit_rows(cache.read_rows(np.arange(len(cache))).features), 10)
    t4 = time.perf_counter()
    dl_top = {ids[r] for r in np.argsort(-dl)[:top]}
    study = {} if a.no_study else label_study(cache, truth, a.seed)
    print(json.dumps({
        "rows": len(ids), "flipped": len(truth["flipped"]), "flagged": len(flagged),
        "label_precision": round(len(hit) / max(1, len(flagged)), 3),
        "label_recall": round(len(hit) / max(1, len(truth["flipped"])), 3),
        # the ranking alone: the worst len(flipped) flagged rows (precision = recall at that cut)
        "label_precision_at_flipped": round(len({ids[r] for r in rep["label_rows"][:len(truth["flipped"])]}
                                                & truth["flipped"]) / max(1, len(truth["flipped"])), 3),
        "oof_accuracy": rep.get("oof_accuracy"),
        "duplicate_recall": {v: f"{sum(x)}/{len(x)}" for v, x in dup.items()},
        "outlier_recall_top1pct": {"knn": f"{len(knn_top & truth['outliers'])}/{len(truth['outliers'])}",
                                   "datalab": f"{len(dl_top & truth['outliers'])}/{len(truth['outliers'])}"},
        "map": rep["map"], "extract_s": round(t1 - t0, 1), "inspect_s": round(t2 - t1, 1),
        "datalab_s": round(t4 - t3, 1), "counts": rep["counts"], "label_study": study,
        "load_after": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
