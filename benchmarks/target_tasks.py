"""Regression and multi-label tasks built from real garment images, for tests and the targets measurement.

zoom: one garment scaled by a known factor and pasted on a larger black canvas (the target is the
factor); mosaic: a 2x2 grid of garments (the target is which classes appear). Both come with an
``id`` column so ``featcache targets`` / :func:`featcache.store.attach_targets` can attach them.
"""

from __future__ import annotations

import numpy as np


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img


def zoom_task(images: np.ndarray, *, canvas: int = 64, low: float = 0.3, high: float = 1.0, seed: int = 0):
    """Each garment resized to ``zoom * canvas`` px at a random spot: (uint8 images, zoom per image)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    zoom = rng.uniform(low, high, len(images))
    out = np.zeros((len(images), canvas, canvas, 3), np.uint8)
    for i, (img, z) in enumerate(zip(images, zoom)):
        side = max(2, int(round(z * canvas)))
        small = np.asarray(Image.fromarray(_rgb(img)).resize((side, side), Image.BILINEAR))
        y, x = rng.integers(0, canvas - side + 1, 2)
        out[i, y:y + side, x:x + side] = small
    return out, zoom


def mosaic_task(images: np.ndarray, labels: np.ndarray, n: int, *, n_classes: int = 10, tile: int = 16,
                seed: int = 0):
    """``n`` 2x2 mosaics of random garments: (uint8 images, (n, n_classes) 0/1 indicators of classes present)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(images), (n, 4))
    tiles = np.stack([np.asarray(Image.fromarray(_rgb(im)).resize((tile, tile), Image.BILINEAR)) for im in images])
    out = np.zeros((n, 2 * tile, 2 * tile, 3), np.uint8)
    present = np.zeros((n, n_classes), np.uint8)
    for i, p in enumerate(picks):
        for j, k in enumerate(p):
            y, x = divmod(j, 2)
            out[i, y * tile:(y + 1) * tile, x * tile:(x + 1) * tile] = tiles[k]
            present[i, labels[k]] = 1
    return out, present


def _write_pngs(images: np.ndarray, root, labels=None) -> None:
    """Each image as ROOT/[cLABEL/]NNNNN.png: a folder source, whose pixels the raw-pixel baseline can read again."""
    from pathlib import Path

    from PIL import Image

    for i, img in enumerate(images):
        d = Path(root) / (f"c{labels[i]}" if labels is not None else "")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:05d}.png")


#: the backbones measure() can run: random-weight MobileNetV2 (fast, weak on purpose) or the default ImageNet Lite0
BACKBONES = {"tiny": dict(backbone="mobilenet_v2", weights="none", image_size=32, batch_size=64),
             "lite0": dict(image_size=96)}


def measure(n: int = 2000, backbone: str = "tiny") -> None:
    """The docs/PERFORMANCE.md targets measurement: each default head, the raw-pixel baseline (the kind's
    linear head on 16x16 pixels) and the trivial baseline on zoom and mosaic tasks, from PNG folders."""
    import tempfile
    import time
    from pathlib import Path

    import featcache
    from featcache.bench.targets import bench_targets
    from featcache.datasets import load_fashion_mnist
    from featcache.store import attach_targets

    images, labels, _ = load_fashion_mnist("test")
    canv, zoom = zoom_task(images[:n], canvas=32)
    mos, present = mosaic_task(images, labels, n, tile=16)
    d = tempfile.mkdtemp()
    _write_pngs(canv, d + "/zoom", labels[:n])
    _write_pngs(mos, d + "/mos")
    t = time.perf_counter()
    cz = featcache.extract(d + "/zoom", out=d + "/cz", **BACKBONES[backbone])
    cm = featcache.extract(d + "/mos", out=d + "/cm", **BACKBONES[backbone])
    print("extract s", round(time.perf_counter() - t, 1))
    rz, rm = ([int(Path(i).stem) for i in c.ids()] for c in (cz, cm))
    attach_targets(cz, {"id": list(cz.ids()), "zoom": list(zoom[rz])}, kind="regression")
    attach_targets(cm, {"id": list(cm.ids()), **{f"c{k}": list(present[rm, k]) for k in range(10)}}, name="tags",
                   kind="multilabel")
    for c, name, ks in ((cz, "zoom", ("r2", "mae")), (cm, "tags", ("map", "micro_f1"))):
        t = time.perf_counter()
        rows = bench_targets(c, name, out=d + f"/report_{name}")
        print(name, "bench s", round(time.perf_counter() - t, 1))
        for r in rows:
            print(" ", r["head"], r["features"], r.get("best", ""),
                  *[f"{k}={r[k]:.3f} [{r[k+'_lo']:.3f},{r[k+'_hi']:.3f}]" for k in ks], f"fit={r.get('fit_seconds', 0):.2f}s")


if __name__ == "__main__":
    import sys

    measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, sys.argv[2] if len(sys.argv) > 2 else "tiny")
