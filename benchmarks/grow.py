"""The CNN runs once per image: what a grown dataset and a killed run cost (docs/PERFORMANCE.md, "Growing").

    python benchmarks/grow.py              # 10,000 Fashion-MNIST PNGs, default settings but --image-size
    python benchmarks/grow.py --n 2000     # smaller

Every side runs in this one invocation, through the real CLI:

* grow: a folder of N images is extracted; then 1% new images are added, 1% removed and 1% moved to another
  class folder (relabelled), and ``extract`` runs again. Beside it: the 1% new images extracted alone into
  a new cache, and the whole changed folder with ``--overwrite``. The unchanged rows must stay bit-equal.
* kill: a 2,000-image extraction at default settings is SIGKILLed at a random moment, then resumed; the CNN
  work is every image the runs put through the CNN (each run's ``timings.images_computed``), against N.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import featcache  # noqa: E402
from featcache.datasets import load_fashion_mnist  # noqa: E402


def make_folder(root: Path, images, labels, names, start: int = 0) -> None:
    for i, (im, y) in enumerate(zip(images, labels), start):
        d = root / names[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i:05d}.png")


def cli(*args) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "featcache", *map(str, args)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def fig_grow(work: Path, n: int, size: int) -> dict:
    images, labels, _ = load_fashion_mnist("train")
    names = [f"class{k}" for k in range(10)]
    k = max(1, n // 100)
    folder, new = work / "images", work / "new_only"
    make_folder(folder, images[:n], labels[:n], names)
    args = ["--image-size", size, "--quiet"]
    first = cli("extract", folder, "--out", work / "c", *args)
    before = featcache.open_cache(work / "c")
    kept_before = dict(zip(before.ids(), before.features()))
    make_folder(folder, images[n:n + k], labels[n:n + k], names, start=n)  # 1% new
    make_folder(new, images[n:n + k], labels[n:n + k], names, start=n)
    files = sorted(folder.glob("*/*.png"))
    rng = random.Random(0)
    for p in rng.sample(files[:n], k):  # 1% removed
        p.unlink()
    for p in rng.sample([f for f in sorted(folder.glob("*/*.png")) if int(f.stem) < n], k):  # 1% relabelled
        other = folder / names[(names.index(p.parent.name) + 1) % 10]
        p.rename(other / p.name)
    grow = cli("extract", folder, "--out", work / "c", *args)
    grown = featcache.open_cache(work / "c")
    same = all(np.array_equal(kept_before[i], f) for i, f in zip(grown.ids(), grown.features()) if i in kept_before)
    alone = cli("extract", new, "--out", work / "alone", *args)
    shutil.copytree(work / "c", work / "ow")
    overwrite = cli("extract", folder, "--out", work / "ow", "--overwrite", *args)
    return {"n": n, "changed": k, "first_s": first, "grow_s": grow, "alone_s": alone, "overwrite_s": overwrite,
            "grow_over_alone": grow / alone, "overwrite_over_grow": overwrite / grow, "unchanged_bit_equal": same,
            "grow_computed": grown.timings.get("images_computed")}


def _shards(out: Path) -> list:
    """The shards a cache's manifest has committed so far ([] before it exists or while it is replaced)."""
    try:
        return json.loads((out / "manifest.json").read_text())["shards"]
    except (OSError, ValueError, KeyError):
        return []


def fig_kill(work: Path, n: int, size: int, seed: int = 1) -> dict:
    images, labels, _ = load_fashion_mnist("test")
    folder = work / "kill_images"
    make_folder(folder, images[:n], labels[:n], [f"class{k}" for k in range(10)])
    out = work / "kill"
    args = ["extract", folder, "--out", out, "--image-size", size, "--quiet"]
    t0 = time.perf_counter()
    uninterrupted = cli(*args[:3], work / "whole", *args[4:])
    timings = featcache.open_cache(work / "whole").timings
    build = timings.get("build_seconds", 0.0)  # the graph's build and compile: no image reaches the CNN yet
    compute = timings["compute_seconds"] - build
    # a random moment while the CNN runs (a kill during start-up costs nothing and would flatter the figure):
    # after the killed run's first shard commits, a random fraction of the uninterrupted run's CNN time
    wait = random.Random(seed).uniform(0.0, 0.9) * compute
    proc = subprocess.Popen([sys.executable, "-m", "featcache", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_start = time.perf_counter()
    while proc.poll() is None and not _shards(out):
        time.sleep(0.01)
    time.sleep(wait)
    delay = time.perf_counter() - t_start
    finished = proc.poll() is not None  # a slow start-up can outlast the uninterrupted run's: no kill, no figure
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = _shards(out)
    done_before = sum(r["n_rows"] + len(r["skipped"]) for r in kept)
    cli(*args)
    resumed = 0 if finished else featcache.open_cache(out).timings.get("images_computed", 0)
    # what the killed run put through the CNN is not recorded anywhere: at most its kept shards and the three a
    # local run can hold uncommitted (one in the model, one waiting for the writer, one being written)
    shard = featcache.open_cache(out).params["shard_size"]
    killed_work = min(n, done_before + 3 * shard)
    return {"n": n, "killed_after_s": delay, "uninterrupted_s": uninterrupted, "cnn_s": compute,
            "finished_before_kill": finished, "kept_images": done_before, "resumed_images": resumed,
            "killed_run_images_at_most": killed_work,
            "cnn_work_ratio_upper_bound": (killed_work + resumed) / n, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--kill-n", type=int, default=2_000)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--json", type=Path)
    p.add_argument("--only", choices=("grow", "kill"), help="one figure")
    p.add_argument("--kills", type=int, default=3, help="random kill moments (one seed each)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="featcache-grow-"))
    try:
        result = {}
        if args.only in (None, "grow"):
            result["grow"] = fig_grow(work, args.n, args.image_size)
        if args.only in (None, "kill"):
            result["kill"] = []
            for seed in range(1, args.kills + 1):
                shutil.rmtree(work / "kill", ignore_errors=True)
                shutil.rmtree(work / "whole", ignore_errors=True)
                result["kill"].append(fig_kill(work, args.kill_n, args.image_size, seed))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
