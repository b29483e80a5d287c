"""How extraction throughput grows with Ray workers on this machine (for docs/SCALING.md).

    python benchmarks/ray_scaling.py [--photos 512] [--workers 1,2]

Runs the same extraction (efficientnet_lite0, 224 px, JPEG folder) with the
local engine and with ``--engine ray`` at each worker count, each into a fresh
cache, and prints images/s end to end and in steady state (after the first
shard, so worker start-up is counted once, apart).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run import BACKBONE, make_photo_folder  # noqa: E402

from featcache import engines, plan as planning, runner as running  # noqa: E402
from featcache.sources import open_source  # noqa: E402


def measure(folder: Path, out: Path, name: str, size: int, shard: int, **engine_options) -> dict:
    src = open_source(folder)
    plan = planning.make_plan(src, BACKBONE, out, planning.ExtractOptions(image_size=size, shard_size=shard))
    runner = engines.make_engine(name, **engine_options)
    done: list[float] = []
    manifest_path = out / "manifest.json"
    t0 = time.perf_counter()
    import threading

    stop = threading.Event()

    def watch():  # when each shard lands in the manifest: steady-state rate after the first
        seen = 0
        while not stop.is_set():
            try:
                n = len(json.loads(manifest_path.read_text()).get("shards", []))
            except (OSError, ValueError):
                n = 0
            for _ in range(n - seen):
                done.append(time.perf_counter() - t0)
            seen = max(seen, n)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    running.run(plan, progress=False, engine=runner)
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    n = len(src)
    steady = (n - shard) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else float("nan")
    return {"engine": name, **engine_options, "images": n, "seconds": round(wall, 2),
            "images_per_s": round(n / wall, 2), "first_shard_s": round(done[0], 2) if done else None,
            "steady_images_per_s": round(steady, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=512)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--workers", default="1,2")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="featcache-ray-") as tmp:
        folder = make_photo_folder(Path(tmp) / "photos", args.photos)
        configs = [("local", {})] + [("ray", {"workers": int(w)}) for w in args.workers.split(",")]
        for i, (name, opts) in enumerate(configs):
            row = measure(folder, Path(tmp) / f"cache{i}", name, args.size, args.shard_size, **opts)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
