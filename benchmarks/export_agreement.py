"""The exported logreg model against the cached route on raw images (issue #31, "Measure it: Export").

    PYTHONPATH=$PWD python benchmarks/export_agreement.py --work /tmp/expag --json benchmarks/export_agreement.json
    PYTHONPATH=$PWD python benchmarks/export_agreement.py --quick     # tiny counts: proves the script works

One process: the first ``--train`` Fashion-MNIST train images (the named dataset ``fashion_mnist:train``) are
extracted with the default backbone and settings through the Python API, a ``logreg`` head is trained on them
and ``featcache.export`` writes it as one Keras model. On the first ``--test`` Fashion-MNIST test images:

* agreement: ``featcache.predict(..., return_as="proba")`` (the cached route: the backbone runtime, then the
  scikit-learn head) against ``keras.saving.load_model(path).predict`` on the same raw uint8 images: the largest
  absolute probability difference and the share of images whose argmax agrees;
* speed: images/s of each route, ``--rounds`` interleaved rounds (cached, exported, cached, ...), each cached
  call with a fresh feature cache (so it runs the backbone, not a cache read) and the backbone build inside
  it; the exported route's ``load_model`` is timed once, apart from its ``predict`` calls.

Nothing is asserted: numbers are printed and written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import featcache  # noqa: E402
from featcache.datasets import load_arrays  # noqa: E402

FULL = dict(train=2000, test=1000, rounds=3)
QUICK = dict(train=200, test=64, rounds=1)


def build(work: Path, n_train: int) -> tuple[Path, Path, dict]:
    """Extract, train logreg, export; returns the model directory, the .keras file and their timings."""
    t0 = time.perf_counter()
    cache = featcache.extract("fashion_mnist:train", out=work / "cache", first=n_train, overwrite=True,
                              progress=False)
    t1 = time.perf_counter()
    result = featcache.train(cache, head="logreg", out=work / "logreg")
    t2 = time.perf_counter()
    path = featcache.export(work / "logreg", work / "logreg.keras")
    t3 = time.perf_counter()
    info = {"backbone": featcache.DEFAULT_BACKBONE, "cache_rows": len(cache),
            "features": int(cache.features().shape[1]),
            "logreg_test_accuracy_on_cache": result.metrics["test"]["accuracy"],
            "extract_seconds": round(t1 - t0, 2), "train_seconds": round(t2 - t1, 2),
            "export_seconds": round(t3 - t2, 2)}
    return work / "logreg", Path(path), info


def cached_route(model_dir: Path, images: np.ndarray, scratch: Path) -> tuple[np.ndarray, float]:
    """featcache.predict's probabilities with a fresh feature cache (the backbone runs), and its wall seconds."""
    shutil.rmtree(scratch, ignore_errors=True)
    t0 = time.perf_counter()
    proba = featcache.predict(model_dir, images, cache_dir=scratch, return_as="proba")
    seconds = time.perf_counter() - t0
    shutil.rmtree(scratch, ignore_errors=True)
    return np.asarray(proba, dtype=np.float64), seconds


def exported_route(model, images: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    proba = model.predict(images[..., None], verbose=0)  # grey N x H x W x 1, uint8 as the cache was made from
    return np.asarray(proba, dtype=np.float64), time.perf_counter() - t0


def measure(model_dir: Path, path: Path, images: np.ndarray, labels: np.ndarray, rounds: int, work: Path) -> dict:
    import keras

    t0 = time.perf_counter()
    model = keras.saving.load_model(path)
    load_seconds = time.perf_counter() - t0
    cached_s, exported_s, load = [], [], []
    for r in range(rounds):  # interleaved: both sides see the same load on the shared cores
        load.append(os.getloadavg()[0])
        ref, s = cached_route(model_dir, images, work / "predict-cache")
        cached_s.append(s)
        got, s = exported_route(model, images)
        exported_s.append(s)
        if r == 0:
            diff = np.abs(ref - got)
            agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
            acc = {"cached": float(np.mean(ref.argmax(1) == labels)),
                   "exported": float(np.mean(got.argmax(1) == labels))}
    n = len(images)
    return {"images": n, "rounds": rounds, "max_abs_proba_diff": float(diff.max()),
            "mean_abs_proba_diff": float(diff.mean()), "argmax_agreement": agree, "test_accuracy": acc,
            "cached_seconds": [round(s, 3) for s in cached_s], "exported_seconds": [round(s, 3) for s in exported_s],
            "cached_images_per_s_best": round(n / min(cached_s), 1),
            "exported_images_per_s_best": round(n / min(exported_s), 1),
            "exported_over_cached_best": round(min(cached_s) / min(exported_s), 3),
            "exported_load_model_seconds": round(load_seconds, 2), "load_per_round": load}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> int:
    from precision import environment

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/featcache-export-agreement"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**environment(), "uptime_before": _uptime()}
    print(json.dumps(env), flush=True)
    t0 = time.perf_counter()
    model_dir, path, built = build(args.work, cfg["train"])
    print(json.dumps(built), flush=True)
    test = load_arrays("fashion_mnist:test")
    images, labels = test["images"][:cfg["test"]], test["labels"][:cfg["test"]]
    result = {"env": env, "cfg": cfg, "build": built,
              "agreement": measure(model_dir, path, images, labels, cfg["rounds"], args.work)}
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    result["env"]["load_after"], result["env"]["uptime_after"] = os.getloadavg()[0], _uptime()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
