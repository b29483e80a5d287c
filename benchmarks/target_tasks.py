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




def _context() -> str:
    """The load average and the CPU's AVX-512 flags, recorded beside every figure (the machine is shared)."""
    import os

    flags = ""
    try:
        line = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags"))
        wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx")
        flags = " ".join(f for f in line.split() if f.startswith(wanted))
    except (OSError, StopIteration):
        pass
    return f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} cpus; flags {flags}"


def mosaic_study(n: int = 2000) -> None:
    """Why the ImageNet features miss the mosaic: canvas size, the layer, the head's C, on one set of mosaics.

    Two caches of the same ``n`` mosaics' garments: 16 px tiles (32 px, upscaled to 96 as measured first) and
    the garments' own 28 px (56 px, at 112); each stores the last layer and two mid-level blocks (avg-pooled).
    logreg (one-vs-rest) at C 0.01 / 0.1 / 1 and knn on each layer, pixels at 16 and 32 px; mAP on test
    (thresholds do not enter mAP), the setting chosen on val.
    """
    import tempfile
    import time
    from pathlib import Path

    import featcache
    from featcache.bench.pixels import pixel_features
    from featcache.datasets import load_fashion_mnist
    from featcache.store import attach_targets
    from featcache.train_targets import train_target

    images, labels, _ = load_fashion_mnist("test")
    d = tempfile.mkdtemp()
    print(_context())
    outputs = ("head_relu", "block14_add", "block10_add")
    for tile, size in ((16, 96), (28, 112)):
        mos, present = mosaic_task(images, labels, n, tile=tile)
        _write_pngs(mos, f"{d}/m{tile}")
        t = time.perf_counter()
        c = featcache.extract(f"{d}/m{tile}", out=f"{d}/c{tile}", image_size=size, outputs=outputs)
        print(f"tile {tile} ({2 * tile} px at {size}): extract {time.perf_counter() - t:.1f} s")
        rows = [int(Path(i).stem) for i in c.ids()]
        attach_targets(c, {"id": c.ids(), **{f"c{k}": list(present[rows, k]) for k in range(10)}}, name="tags",
                       kind="multilabel")
        feats = {o: c.features(o).reshape(len(c), -1) for o in outputs}
        feats |= {f"pixels {p}": pixel_features(c, p) for p in (16, 32)}
        for what, X in feats.items():
            for head, params in [("logreg", {"C": C}) for C in (0.01, 0.1, 1.0)] + [("knn", {})]:
                t = time.perf_counter()
                r = train_target(c, head, "tags", params=params, val_fraction=0.15, test_fraction=0.2, features=X)
                m = r["metrics"]
                print(f"  {what:12s} {head} {params}: val mAP {m['val']['map']:.3f}, test mAP {m['test']['map']:.3f} "
                      f"{[round(v, 3) for v in m['test']['map_ci']]}, micro-F1 {m['test']['micro_f1']:.3f} "
                      f"({time.perf_counter() - t:.1f} s)")
    print(_context())




def _show(rows, keys) -> None:
    for r in rows:
        cells = [f"{k}={r[k]:.3f} [{r[k + '_lo']:.3f}, {r[k + '_hi']:.3f}]" for k in keys if r.get(k) is not None]
        print(f"    {r['head']:16s} {r['features']:13s} {'best' if r.get('best') else '    '} {' '.join(cells)} "
              f"fit {r.get('fit_seconds') or 0:.2f} s {r.get('best_params') or ''}")


def measure_10k(n: int = 10_000) -> None:
    """The whole default bench (``bench --target``: its default heads, the pixel baseline, the trivial one, the
    report) for one regression and one multi-label target on ``n`` rows, each timed; the mosaic target both on
    the default layer and on a mid-level one (``mosaic_study`` says why)."""
    import tempfile
    import time

    import featcache
    from featcache.datasets import load_fashion_mnist

    images, labels, _ = load_fashion_mnist("test")
    images, labels = images[:n], labels[:n]
    d = tempfile.mkdtemp()
    canv, zoom = zoom_task(images, canvas=32)
    _write_pngs(canv, d + "/zoom", labels)
    caches = {}
    for name, tile, size, outputs in (("mos16", 16, 96, None), ("mos28_mid", 28, 112, ("block10_add",))):
        mos, present = mosaic_task(images, labels, n, tile=tile)
        _write_pngs(mos, f"{d}/{name}")
        caches[name] = (dict(image_size=size, **({"outputs": outputs} if outputs else {})), present)
    print(_context())
    jobs = [("zoom", "zoom", dict(image_size=96), None)] + [(k, "tags", o, p) for k, (o, p) in caches.items()]
    for folder, target, opts, present in jobs:
        c = _task_cache(d, folder, opts, zoom if present is None else present)
        t = time.perf_counter()
        rows = featcache.bench(c, target=[target], out=f"{d}/report_{folder}")
        print(f"  whole bench --target {target}: {time.perf_counter() - t:.1f} s")
        _show(rows, ("r2", "mae") if target == "zoom" else ("map", "micro_f1"))
    print(_context())


def _task_cache(d: str, folder: str, opts: dict, values: np.ndarray):
    """Extract ``d/folder`` into ``d/c_folder`` and attach its target: ``zoom`` (1-D values) or ``tags`` (0/1 rows)."""
    import time
    from pathlib import Path

    import featcache
    from featcache.store import attach_targets

    t = time.perf_counter()
    c = featcache.extract(f"{d}/{folder}", out=f"{d}/c_{folder}", **opts)
    ext = time.perf_counter() - t
    rows_of = [int(Path(i).stem) for i in c.ids()]
    if values.ndim == 1:
        attach_targets(c, {"id": c.ids(), "zoom": list(values[rows_of])}, kind="regression")
    else:
        attach_targets(c, {"id": c.ids(), **{f"c{k}": list(values[rows_of, k]) for k in range(10)}},
                       name="tags", kind="multilabel")
    print(f"{folder}: {len(c)} rows x {c.output_info()['shape']} ({opts}), extract {ext:.1f} s; {_context()}")
    return c


#: the Keras heads measured for the default set (docs/TARGETS.md: in it only if the whole bench stays <= 90 s)
KERAS_TARGET_HEADS = ("keras_linear", "keras_mlp")


def measure_keras(n: int = 10_000, which: str = "defaults") -> None:
    """The whole bench for one target on ``n`` rows with each kind's default heads, then with the Keras heads
    added, interleaved per cache in one invocation. ``which``: ``defaults`` (zoom and the 16 px mosaics at the
    last layer), or ``position`` (the 16 px mosaics' ``block14_add`` unpooled, 3 x 3 x 192: where each garment
    sits kept), the Keras heads added only."""
    import tempfile
    import time

    import featcache
    from featcache.bench.targets import DEFAULT_TARGET_HEADS
    from featcache.datasets import load_fashion_mnist

    images, labels, _ = load_fashion_mnist("test")
    images, labels = images[:n], labels[:n]
    d = tempfile.mkdtemp()
    mos, present = mosaic_task(images, labels, n, tile=16)
    _write_pngs(mos, f"{d}/mos16")
    jobs = [("mos16", "tags", dict(image_size=96), present)]
    if which == "defaults":
        canv, zoom = zoom_task(images, canvas=32)
        _write_pngs(canv, d + "/zoom", labels)
        jobs.insert(0, ("zoom", "zoom", dict(image_size=96), zoom))
    else:
        jobs = [("mos16", "tags", dict(image_size=96, outputs=("block14_add",), pooling="none"), present)]
    print(_context())
    for folder, target, opts, values in jobs:
        c = _task_cache(d, folder, opts, values)
        kind = c.target(target).kind
        sets = {"defaults": list(DEFAULT_TARGET_HEADS[kind]),
                "defaults + keras": [*DEFAULT_TARGET_HEADS[kind], *KERAS_TARGET_HEADS]}
        for label, heads in sets.items() if which == "defaults" else [("defaults + keras", sets["defaults + keras"])]:
            t = time.perf_counter()
            rows = featcache.bench(c, heads, target=[target], out=f"{d}/report_{folder}_{len(heads)}")
            print(f"  whole bench --target {target}, {label} {heads}: {time.perf_counter() - t:.1f} s; {_context()}")
            _show(rows, ("r2", "mae") if target == "zoom" else ("map", "micro_f1"))
    print(_context())


PIPELINE = """
[pipeline]
name = "multi"
out = "{out}"
[data]
source = "{source}"
[[extract]]
name = "lite0"
image_size = 96
[[targets]]
file = "{source}/targets.csv"
[[heads]]
head = "logreg"
target = "group"
[[heads]]
head = "ridge"
target = "count"
[bench]
target = ["label", "group", "count"]
"""


def measure_pipeline(n: int = 3000) -> None:
    """Three targets on one cache (data/make_tasks.py's multi set: label, group, count): one extraction and three
    benches; then ``count`` changes in the table and the re-run trains and benches only it. Both runs timed."""
    import csv
    import io
    import sys
    import tempfile
    import time
    from contextlib import redirect_stderr
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from data.make_tasks import make_task
    from featcache.pipeline import run

    d = Path(tempfile.mkdtemp())
    make_task("multi", d / "multi", limit=n)
    (d / "p.toml").write_text(PIPELINE.format(out=d / "out", source=d / "multi"))
    for step in ("first run", "after count changed", "nothing changed"):
        if step == "after count changed":
            table = list(csv.DictReader(open(d / "multi" / "targets.csv")))
            for r in table:
                r["count"] = str(5 - int(r["count"]))  # a new value for every row: the same images
            with open(d / "multi" / "targets.csv", "w", newline="") as f:
                w = csv.DictWriter(f, list(table[0]))
                w.writeheader()
                w.writerows(table)
        said = io.StringIO()
        t = time.perf_counter()
        with redirect_stderr(said):
            run(d / "p.toml", progress=False)
        print(f"{step}: {time.perf_counter() - t:.1f} s; {_context()}")
        for line in said.getvalue().splitlines():
            if any(w in line for w in ("extract", "targets", "train", "bench")):
                print("   ", line.strip()[:160])
    rows = list(csv.DictReader(open(d / "out" / "report" / "target_results.csv")))
    for r in rows:
        k = "accuracy" if r["kind"] == "classification" else "r2"
        print(f"    {r['target']:6s} {r['head']:14s} {r['features']:13s} {k} {float(r[k] or 'nan'):.3f} "
              f"[{float(r[k + '_lo'] or 'nan'):.3f}, {float(r[k + '_hi'] or 'nan'):.3f}] best={r['best']}")


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "keras":  # the default head set's 90 s budget, with the Keras heads
        measure_keras(int(sys.argv[3]) if len(sys.argv) > 3 else 10_000, sys.argv[2] if len(sys.argv) > 2 else "defaults")
    elif len(sys.argv) > 1 and sys.argv[1] == "mosaic-study":
        mosaic_study(int(sys.argv[2]) if len(sys.argv) > 2 else 2000)
    elif len(sys.argv) > 1 and sys.argv[1] == "all":  # the docs/PERFORMANCE.md targets figures, one invocation
        measure_10k(int(sys.argv[2]) if len(sys.argv) > 2 else 10_000)
        measure_pipeline(int(sys.argv[3]) if len(sys.argv) > 3 else 3000)
    else:
        measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, sys.argv[2] if len(sys.argv) > 2 else "tiny")
