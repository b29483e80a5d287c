"""Make regression, multi-label and several-target tasks from real Fashion-MNIST garments (a folder + targets.csv).

    python data/make_tasks.py zoom --limit 3000 --out data/zoom        # regression: zoom, x, y
    python data/make_tasks.py mosaic --limit 3000 --out data/mosaic    # multi-label: the garments present
    python data/make_tasks.py multi --limit 3000 --out data/multi      # label, group and count on one set

Each task writes PNGs under OUT and OUT/targets.csv, whose ``id`` column is the
id featcache gives each image of that folder (its path relative to OUT), so

    featcache extract data/zoom --out caches/zoom && featcache targets caches/zoom data/zoom/targets.csv

attaches the targets. Every target follows from how the image was made
(docs/TARGETS.md): a garment's zoom and position on a larger canvas, the
classes of a mosaic's four garments, the coarse group and the number of
copies of one garment. Images come from Fashion-MNIST's test split, offline.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from featcache.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

TASKS = ("zoom", "mosaic", "multi")
#: a coarse group for each Fashion-MNIST class (index order)
GROUPS = ["tops", "trousers", "tops", "dresses", "tops", "shoes", "tops", "shoes", "bags", "shoes"]
CANVAS = 64  # the zoom task's canvas side: a 28 px garment at zoom 0.5 .. 2.0 fits with room to move
ZOOM = (0.5, 2.0)


def _folder(label: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", FASHION_MNIST_CLASSES[label])


def zoom_image(garment: np.ndarray, zoom: float, x: float, y: float) -> np.ndarray:
    """``garment`` (28 x 28) resized by ``zoom`` on a black canvas, at (x, y): fractions of the room left free."""
    side = int(round(28 * zoom))
    small = np.asarray(Image.fromarray(garment).resize((side, side), Image.BILINEAR))
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    left, top = int(round(x * (CANVAS - side))), int(round(y * (CANVAS - side)))
    canvas[top:top + side, left:left + side] = small
    return canvas


def make_zoom(images, labels, rng, out: Path) -> list[dict]:
    """Regression: each garment at a random zoom and position; targets ``zoom``, ``x``, ``y``."""
    rows = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        zoom, x, y = float(rng.uniform(*ZOOM)), float(rng.uniform()), float(rng.uniform())
        rel = f"{_folder(lab)}/{i:05d}.png"
        _save(zoom_image(img, zoom, x, y), out / rel)
        rows.append({"id": rel, "zoom": round(zoom, 4), "x": round(x, 4), "y": round(y, 4)})
    return rows


def make_mosaic(images, labels, rng, out: Path) -> list[dict]:
    """Multi-label: 2 x 2 mosaics of four random garments; target ``garments``, the classes present (a|b|c)."""
    rows = []
    for i in range(len(images)):
        pick = rng.choice(len(images), 4, replace=False)
        tiles = [images[k] for k in pick]
        mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
        rel = f"{i:05d}.png"
        _save(mosaic, out / rel)
        present = sorted({FASHION_MNIST_CLASSES[labels[k]] for k in pick})
        rows.append({"id": rel, "garments": "|".join(present), "sources": " ".join(map(str, pick))})
    return rows


def make_multi(images, labels, rng, out: Path) -> list[dict]:
    """Several targets on one set: 1 to 4 copies of one garment in a 2 x 2 grid; its class folder is ``label``,
    targets ``group`` (tops, trousers, dresses, shoes, bags) and ``count`` (the copies)."""
    rows = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        count = int(rng.integers(1, 5))
        cells = rng.choice(4, count, replace=False)
        grid = np.zeros((56, 56), np.uint8)
        for c in cells:
            grid[28 * (c // 2):28 * (c // 2) + 28, 28 * (c % 2):28 * (c % 2) + 28] = img
        rel = f"{_folder(lab)}/{i:05d}.png"
        _save(grid, out / rel)
        rows.append({"id": rel, "group": GROUPS[lab], "count": count})
    return rows


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def make_task(task: str, out: Path, limit: int = 3000, seed: int = 0, data_dir=None) -> list[dict]:
    """Write task ``task``'s images under ``out`` and ``out/targets.csv``; return the table's rows."""
    if task not in TASKS:
        raise SystemExit(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    images, labels, _ = load_fashion_mnist("test", data_dir)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), min(limit, len(images)), replace=False))
    images, labels = images[chosen], labels[chosen]
    images = images[..., 0] if images.ndim == 4 else images
    out.mkdir(parents=True, exist_ok=True)
    rows = {"zoom": make_zoom, "mosaic": make_mosaic, "multi": make_multi}[task](images, labels.tolist(), rng, out)
    with open(out / "targets.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "sources"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=3000, help="images to make (from Fashion-MNIST's test split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="where Fashion-MNIST is (default: featcache's offline search)")
    args = parser.parse_args(argv)
    rows = make_task(args.task, args.out, args.limit, args.seed, args.data_dir)
    print(f"{len(rows)} images and targets.csv written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
