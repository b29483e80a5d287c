"""Where extraction loses to the forward pass (issue #33, "decoding off the critical path").

    PYTHONPATH=$PWD python benchmarks/decode_profile.py --photos 384 --json benchmarks/decode_profile.json

One process, the JPEG photos benchmarks/precision.py uses (crops of scikit-learn's two sample photos, quality 90),
efficientnet_lite0 at 224 px. Part 1, one thread at a time, CPU ms per photo (process time, best of 3) of each
step of featcache's read: the file's bytes, their sha256, Pillow's open + load, the resize, the rest; and of the
candidate decoders. Part 2, per precision, interleaved in one process: the forward pass alone on pre-decoded
uint8, extraction from the JPEG folder with Pillow decoding every file (featcache without its jpeg extra) and with
simplejpeg, extraction from the same images pre-decoded (an array source: the queue, padding and HDF5 writes
without any decode); the OpenVINO configuration
(streams, threads, infer requests, sub-batch) as compiled. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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
from featcache.decode import decode_image  # noqa: E402


def cpu_ms(fn, items, repeat=3) -> float:
    for it in items[:8]:
        fn(it)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for it in items:
            fn(it)
        best = min(best, time.process_time() - t0)
    return round(1000 * best / len(items), 3)


def part_decode(files, size=(224, 224)) -> dict:
    from PIL import Image

    blobs = [Path(p).read_bytes() for p in files]
    out = {"read_bytes": cpu_ms(lambda p: Path(p).read_bytes(), files),
           "sha256": cpu_ms(lambda b: hashlib.sha256(b).hexdigest(), blobs),
           "decode_image (featcache today)": cpu_ms(lambda b: decode_image("x", size, data=b), blobs)}

    def pil_load(b):
        import io
        with Image.open(io.BytesIO(b)) as im:
            im.load()
            return im
    out["pillow open+load"] = cpu_ms(pil_load, blobs)
    loaded = [pil_load(b) for b in blobs]
    out["pillow resize bilinear"] = cpu_ms(lambda im: im.resize((224, 224), Image.Resampling.BILINEAR,
                                                                reducing_gap=3.0), loaded)
    try:
        import simplejpeg
        out["simplejpeg full decode"] = cpu_ms(lambda b: simplejpeg.decode_jpeg(b, "RGB"), blobs)
        out["simplejpeg scaled (min 224)"] = cpu_ms(
            lambda b: simplejpeg.decode_jpeg(b, "RGB", min_height=224, min_width=224), blobs)
    except ImportError:
        pass
    shapes = [im.size for im in loaded]
    out["photos"] = len(files)
    out["mean_pixels"] = int(np.mean([w * h for w, h in shapes]))
    out["draft_eligible"] = sum(w >= 448 and h >= 448 for w, h in shapes)
    return out


def decode_threads_rate(files, threads) -> float:
    from concurrent.futures import ThreadPoolExecutor

    blobs = [Path(p).read_bytes() for p in files]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: decode_image("x", (224, 224), data=b), blobs[:16]))
        t0 = time.perf_counter()
        list(pool.map(lambda b: decode_image("x", (224, 224), data=b), blobs))
        return round(len(blobs) / (time.perf_counter() - t0), 1)


class pillow_only:
    """Within: simplejpeg cannot be imported, so Pillow decodes every JPEG (featcache without its jpeg extra)."""

    def __enter__(self):
        from featcache import decode

        self.saved = sys.modules.get("simplejpeg")
        sys.modules["simplejpeg"] = None
        decode._simplejpeg.cache_clear()

    def __exit__(self, *exc):
        from featcache import decode

        sys.modules["simplejpeg"] = self.saved
        decode._simplejpeg.cache_clear()


def part_pipeline(folder, work: Path, precisions, rounds: int) -> list[dict]:
    from precision import _forward, _steady

    from featcache.extractor import Extractor
    from featcache.plan import ExtractOptions, make_plan
    from featcache.sources import open_source

    src = open_source(folder)
    plan = make_plan(src, "efficientnet_lite0", None, ExtractOptions(), weights="imagenet")
    images = src.read(src.items, plan.image_size).images
    rows = []
    for rnd in range(rounds):
        for p in precisions:
            kw = dict(precision=p, dtype="float16")
            plan = make_plan(src, "efficientnet_lite0", None, ExtractOptions(**kw), weights="imagenet")
            ex = Extractor(plan)
            rt = ex.run
            cfg = {k: str(rt.compiled.get_property(k)) for k in ("NUM_STREAMS", "INFERENCE_NUM_THREADS",
                                                                  "OPTIMAL_NUMBER_OF_INFER_REQUESTS")}
            row = {"round": rnd, "precision": p, "ov": cfg, "requests": rt.requests, "sub_batch": rt.sub,
                   "load": os.getloadavg()[0]}
            del ex
            row["forward"] = round(_forward(plan, images, 2), 1)
            labels = ("folder_pillow", "folder", "arrays")
            for label, source in zip(labels, (folder, folder, images)):
                with pillow_only() if label == "folder_pillow" else contextlib.nullcontext():
                    c = featcache.extract(source, "efficientnet_lite0", work / f"{p}-{label}", overwrite=True, **kw)
                row[label] = round(_steady(c), 1)
                row[label + "_wait_s"] = c.timings.get("input_wait_seconds")
            for label in labels:
                row[label + "/forward"] = round(row[label] / row["forward"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    from precision import environment
    from run import make_photo_folder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=384)
    ap.add_argument("--work", type=Path, default=Path("/tmp/featcache-decode-profile"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="decode,pipeline")
    ap.add_argument("--precisions", help="comma-separated (default: every one this CPU runs)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    env = environment()
    print(json.dumps(env), flush=True)
    folder = make_photo_folder(args.work / "photos", args.photos, seed=3)
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    result = {"env": env}
    if "decode" in args.only:
        result["decode_cpu_ms"] = part_decode(files)
        result["decode_threads_img_s"] = {t: decode_threads_rate(files, t) for t in (1, 2)}
        print(json.dumps(result["decode_cpu_ms"]), json.dumps(result["decode_threads_img_s"]), flush=True)
    if "pipeline" in args.only:
        result["pipeline"] = part_pipeline(folder, args.work, args.precisions.split(",") if args.precisions
                                           else env["precisions"], args.rounds)
    result["env"]["load_after"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
