"""--precision f32 / bf16 / int8 (issue #33): extraction rate, the forward pass alone, row agreement and accuracy.

    PYTHONPATH=$PWD python benchmarks/precision.py --work /tmp/prec --json benchmarks/precision.json
    PYTHONPATH=$PWD python benchmarks/precision.py --quick     # tiny counts: proves the script works

Per backbone (efficientnet_lite0, mobilenet_v2_torchvision, resnet50 with seeded random weights: no download) and
per precision this CPU runs, in one process on the same JPEG photos (crops of scikit-learn's two sample photos,
quality 90) at the backbone's size:

* extraction images/s at the steady rate (featcache.extract with the default settings but --precision);
* the forward pass alone on the same photos pre-decoded to uint8 (featcache's own compiled runtime), and the
  ratio extraction / forward;
* the per-row cosine of each precision's features against f32's.

Then accuracy: logreg and keras_mlp through featcache.bench on each precision's cache of Fashion-MNIST (train +
test rows of the Debian package) and of an 8-class photo set (which quarter of which sample photo a crop is
from), test accuracy with its 95% interval. Nothing is asserted: numbers are printed and written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import featcache  # noqa: E402
from featcache import precision  # noqa: E402
from featcache.extractor import Extractor  # noqa: E402
from featcache.sources import open_source  # noqa: E402

FULL = dict(photos=768, backbones=("efficientnet_lite0", "mobilenet_v2_torchvision", "resnet50"), repeats=2,
            fm=3000, fm_size=96, quarters=800, quarter_size=160, heads=("logreg", "keras_mlp"))
QUICK = dict(quick=True, photos=48, backbones=("mobilenet_v2",), repeats=1, fm=0, fm_size=32, quarters=80, quarter_size=32,
             heads=("logreg",))


def make_quarter_photos(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEG crops in 8 classes: which quarter (of 4) of which sample photo (of 2) the crop is from."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    for i in range(n):
        cls = i % 8
        photo = photos[cls // 4]
        h, w = photo.shape[0] // 2, photo.shape[1] // 2
        qy, qx = (cls % 4) // 2 * h, (cls % 4) % 2 * w
        ch, cw = int(rng.integers(h // 3, h)), int(rng.integers(w // 3, w))
        y, x = qy + int(rng.integers(0, h - ch + 1)), qx + int(rng.integers(0, w - cw + 1))
        crop = photo[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        (root / f"q{cls}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(root / f"q{cls}" / f"{i:06d}.jpg", quality=90)
    return root


def _weights(name: str) -> str:
    return "none" if name in ("resnet50", "mobilenet_v2") else "imagenet"


def _dtype(name: str) -> str:
    return "float32" if name == "resnet50" else "float16"  # random resnet50 features overflow float16


def _steady(cache) -> float:
    t = cache.timings
    rest = t["images_computed"] - t["first_batch_items"]
    return rest / max(t["compute_seconds"] - t["build_seconds"] - t["first_batch_seconds"], 1e-9)


def _forward(cache_plan, images, repeats: int) -> float:
    extractor = Extractor(cache_plan)
    bs = cache_plan.options.batch_size
    extractor(images[:bs])
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for a in range(0, len(images), bs):
            extractor(images[a:a + bs])
        best = max(best, len(images) / (time.perf_counter() - t0))
    return best


def fig_speed(cfg, work: Path, precisions) -> list[dict]:
    from run import _cosines, make_photo_folder

    from featcache.plan import ExtractOptions, make_plan

    folder = make_photo_folder(work / "photos", cfg["photos"], seed=3)
    src = open_source(folder)
    rows = []
    for name in cfg["backbones"]:
        ref = None
        for p in precisions:
            out = work / f"{name}-{p}"
            kw = dict(precision=p, dtype=_dtype(name))
            if cfg.get("quick"):
                kw.update(image_size=64, batch_size=16)
            t0 = time.perf_counter()
            cache = featcache.extract(folder, name, out, weights=_weights(name), overwrite=True, **kw)
            wall = time.perf_counter() - t0
            plan = make_plan(src, name, None, ExtractOptions(**kw), weights=_weights(name))
            images = src.read(src.items, plan.image_size).images
            fwd = _forward(plan, images, cfg["repeats"])
            feats = cache.features()
            ref = feats if p == "f32" else ref
            cos = _cosines(feats, ref)
            row = {"backbone": name, "precision": p, "extract_img_s": round(_steady(cache), 1),
                   "extract_wall_s": round(wall, 1), "forward_img_s": round(fwd, 1),
                   "extract_over_forward": round(_steady(cache) / fwd, 3), "cos_min": float(cos.min()),
                   "cos_mean": float(cos.mean()), "runtime": cache.timings.get("runtime"),
                   "input_wait_s": cache.timings.get("input_wait_seconds"), "photos": len(src)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def fig_accuracy(cfg, work: Path, precisions) -> list[dict]:
    sets = [("photo quarters", make_quarter_photos(work / "quarters", cfg["quarters"]), cfg["quarter_size"])]
    if cfg["fm"]:
        from featcache.datasets import load_fashion_mnist

        x, y, names = load_fashion_mnist("train")
        n = cfg["fm"]
        sets.append(("fashion_mnist", (x[:n], y[:n], names), cfg["fm_size"]))
    rows = []
    for set_name, data, size in sets:
        for p in precisions:
            out = work / f"acc-{set_name.replace(' ', '_')}-{p}"
            kw = dict(precision=p, image_size=size, overwrite=True)
            if isinstance(data, tuple):
                cache = featcache.extract(data[0], out=out, labels=data[1], class_names=list(data[2]), **kw)
            else:
                cache = featcache.extract(data, out=out, **kw)
            for r in featcache.bench([str(cache.path)], list(cfg["heads"]), baseline_heads=(), save_best=False,
                                     learning_curve=None, leakage=False, out=work / f"bench-{out.name}", n_jobs=1):
                row = {"set": set_name, "precision": p, "head": r["head"], "rows": len(cache),
                       "accuracy": r.get("accuracy"), "accuracy_ci": r.get("accuracy_ci"),
                       "val_accuracy": r.get("val_accuracy")}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def environment() -> dict:
    """run.py's environment (CPU model, versions), plus the CPU's vector flags and what OpenVINO says it runs."""
    from run import environment as base

    flags = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = sorted({f for f in line.split(":", 1)[1].split()
                                if f.startswith(("avx512", "amx", "avx_vnni", "avx2", "fma"))})
                break
    except OSError:
        pass
    return {**base(), "flags": flags, "openvino_capabilities": sorted(precision.cpu_capabilities()), "precisions": precision.supported(),
            "load_before": os.getloadavg()[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/featcache-precision"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", default="speed,accuracy")
    ap.add_argument("--backbones", help="comma-separated (default: lite0, the MobileNetV2 port, resnet50)")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.backbones:
        cfg["backbones"] = tuple(args.backbones.split(","))
    env = environment()
    print(json.dumps(env), flush=True)
    precisions = env["precisions"]
    result = {"env": env, "cfg": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
    if "speed" in args.only:
        result["speed"] = fig_speed(cfg, args.work, precisions)
    if "accuracy" in args.only:
        result["accuracy"] = fig_accuracy(cfg, args.work, precisions)
    result["env"]["load_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
