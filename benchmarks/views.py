"""Augmented views in the cache: the best frozen head with K = 0, 4 and 8 views, and what each K costs to extract.

    python benchmarks/views.py                 # 1,000 Fashion-MNIST train images at 96 px, 3 seeds
    python benchmarks/views.py --quick         # tiny counts: proves the script runs

One invocation, per seed: one cache of that seed's stratified sample (the
seed is also the recipe's, so each seed's views are other draws), extracted with K = 0, then
raised to 4, then to 8 (each step computes only the new views, timed apart);
at each K the same heads train on it (the seed is also their
``random_state``) and the best by validation accuracy is reported on test.
Validation and test rows are the plain view at every K. Results go to
benchmarks/views.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(REPO / "benchmarks"))

import featcache  # noqa: E402
from finetune import quiet_machine, sample  # noqa: E402

FULL = dict(train=1000, val=200, test=1000, size=96, seeds=3, views=(0, 4, 8))
QUICK = dict(train=60, val=30, test=60, size=64, seeds=1, views=(0, 2))
RECIPE = "flip,crop=0.85"  # featcache's default recipe, with each seed's own seed
#: the heads compared at each K (the best by validation accuracy is the row's)
HEADS = ("logreg", "lda", "keras_linear", "keras_mlp")


def heads_at(cache, seed: int) -> dict:
    out = {}
    for head in HEADS:
        params = {"random_state": seed} if head.startswith("keras") else {}
        t0 = time.perf_counter()
        res = featcache.train(cache, head, params=params)
        out[head] = {"val": res.metrics["val"]["accuracy"], "test": res.metrics["test"]["accuracy"],
                     "seconds": time.perf_counter() - t0}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", help="where the caches go (default: a new temporary directory)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="featcache-bench-views-"))
    runs = []
    for seed in range(cfg["seeds"]):  # each seed draws its own images, views and head initialisations
        images, labels, splits, class_names = sample(cfg, seed)
        source = featcache.ArraySource(images, labels, splits=list(splits), class_names=class_names,
                                       name="fashion_mnist")
        recipe = f"{RECIPE},seed={seed}"
        out = work / f"seed{seed}"
        per_k = []
        for k in cfg["views"]:
            with quiet_machine():
                t0 = time.perf_counter()
                cache, summary = featcache.extract(source, out=out, image_size=cfg["size"], views=k, augment=recipe,
                                                   return_summary=True)
                extract_s = time.perf_counter() - t0
                heads = heads_at(cache, seed)
            best = max(heads, key=lambda h: heads[h]["val"])
            per_k.append({"views": k, "extract_seconds": extract_s, "images_computed": summary.items
                          if k == cfg["views"][0] else None, "shards_computed": summary.computed_shards,
                          "heads": heads, "best": best, "best_test": heads[best]["test"]})
            print(f"seed {seed} K={k}: extract +{extract_s:.1f} s, best {best} {heads[best]['test']:.4f} "
                  "(" + ", ".join(f"{h} {v['test']:.4f}" for h, v in heads.items()) + ")", flush=True)
        runs.append(per_k)
    summary = {}
    for i, k in enumerate(cfg["views"]):
        best = np.array([r[i]["best_test"] for r in runs])
        cost = np.array([sum(r[j]["extract_seconds"] for j in range(i + 1)) for r in runs])
        summary[str(k)] = {"best_test_mean": best.mean(), "best_test_sd": best.std(ddof=1) if len(best) > 1 else 0.0,
                           "best_test": best.tolist(), "best_heads": [r[i]["best"] for r in runs],
                           "extract_seconds_total_mean": cost.mean(),
                           "per_head_test_mean": {h: float(np.mean([r[i]["heads"][h]["test"] for r in runs]))
                                                  for h in HEADS}}
    result = {"config": {**cfg, "views": list(cfg["views"])}, "recipe": RECIPE, "backbone": "efficientnet_lite0",
              "heads": list(HEADS), "runs": runs, "summary": summary}
    print(json.dumps(summary, indent=2, default=float))
    if not args.quick:
        (REPO / "benchmarks" / "views.json").write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
