"""Few-shot evaluation (CLIP/CoOp's linear-probe practice): k labelled train images per class, drawn exactly.

For each k and each of ``draws`` seeded draws: k train images of every class,
``min(k, 4)`` validation images of every class (from the val split, never from
train) on which the head's own selection chooses its setting, then the whole
test split, every draw. Rows give each head's test accuracy mean and sd over
the draws per k. The heads run in this process, one after another: they are
scikit-learn heads on at most 16 images a class, fast by construction.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from pathlib import Path

import numpy as np

from ..errors import FeatcacheError
from ..files import atomic_write_bytes
from ..heads import get_head_spec, proba_and_labels
from ..store import Cache, open_cache, split_masks

#: the heads a few-shot run measures unless told: the linear probe and the k-NN probe
SHOT_HEADS = ("logreg", "knn_cosine")
#: validation images a class at most (CoOp: min(k, 4))
VAL_SHOTS = 4
SHOTS_JSON, SHOTS_CSV, SHOTS_MD, SHOTS_PNG = "shots.json", "shots.csv", "shots.md", "shots.png"


def draw_shots(y: np.ndarray, tr: np.ndarray, va: np.ndarray, k: int, seed: int, draw: int):
    """Draw ``draw``'s (train, val) rows for ``k`` shots: exactly k train rows and min(k, 4) val rows a class
    (fewer val rows only where the val split has fewer), seeded by ``(seed, draw, k)``.

    Examples:
        >>> y = np.arange(60) % 3
        >>> t, v = draw_shots(y, np.arange(40), np.arange(40, 60), 2, 0, 0)
        >>> np.bincount(y[t]).tolist(), np.bincount(y[v]).tolist(), bool(set(t) & set(v))
        ([2, 2, 2], [2, 2, 2], False)
    """
    rng = np.random.default_rng([seed, draw, k])
    classes = np.unique(y[tr])
    t = [rng.choice(tr[y[tr] == c], k, replace=False) for c in classes]
    v = [rng.choice(pool, min(k, VAL_SHOTS, len(pool)), replace=False)
         for pool in (va[y[va] == c] for c in classes)]
    return np.sort(np.concatenate(t)), np.sort(np.concatenate(v))


def check_shots(y: np.ndarray, tr: np.ndarray, shots, names) -> None:
    """A one-line error when a class has fewer train images than the largest k."""
    counts = {int(c): int(n) for c, n in zip(*np.unique(y[tr], return_counts=True))}
    for c, n in counts.items():
        if n < max(shots):
            raise FeatcacheError(f"--shots {max(shots)}: class {names(c)} has only {n} train images")


def _head_spec(head: str, n_train: int):
    """The head's spec, its k-NN grid cut to neighbours the k-shot train rows can give."""
    spec = get_head_spec(head)
    if spec.kind == "keras":
        raise FeatcacheError(f"--shots runs scikit-learn heads; {head} is a Keras head")
    if spec.grid and "n_neighbors" in spec.grid:
        kept = [n for n in spec.grid["n_neighbors"] if n <= n_train] or [n_train]
        spec = dataclasses.replace(spec, grid={**spec.grid, "n_neighbors": kept})
    return spec


def _score(cache, head: str, X, y, tr, va, te, classes) -> float:
    """One head's test accuracy after its own selection on the k-shot val rows."""
    from .protocol import Rows, select  # scikit-learn: only when few-shot rows run
    from .tasks import Task

    spec = _head_spec(head, len(tr))
    task = Task(str(cache.path), cache.key, head, {}, None, False, cores=1, spec=spec)
    chosen = select(task, spec, Rows(X, y, tr, va, te), 1)
    _, pred = proba_and_labels(chosen.estimator, X[te], classes)
    return float(np.mean(pred == y[te]))


def few_shot(cache, shots, *, heads=None, draws: int = 5, seed: int = 0, out=None) -> list[dict]:
    """Each head's test accuracy at k shots a class, mean and sd over ``draws`` draws; written to ``out``.

    Args:
        cache: a cache or its directory.
        shots: the k's, e.g. (1, 2, 4, 8, 16).
        heads: scikit-learn head names (default :data:`SHOT_HEADS`).
        draws: seeded draws per k.
        seed: the draws' seed: the same seed, the same rows.
        out: a directory for shots.json/csv/md (None: not written).

    Returns:
        One row per (head, k): ``accuracy`` (the mean), ``accuracy_sd``, ``accuracies`` (per draw), the sizes,
        and the cache's ``backbone`` and ``features`` as bench's rows name them.
    """
    from threadpoolctl import threadpool_limits

    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    shots = sorted({int(k) for k in shots})
    heads = list(heads or SHOT_HEADS)
    X = np.asarray(cache.features().reshape(len(cache), -1), np.float32)
    y = cache.labels()
    masks = split_masks(cache)
    tr, va, te = (np.flatnonzero(masks[s] & (y >= 0)) for s in ("train", "val", "test"))
    check_shots(y, tr, shots, cache.class_name)
    for h in heads:
        _head_spec(h, 1)  # a Keras or unknown head: refused before any work
    classes = np.unique(y[y >= 0])
    p = cache.params
    who = {"cache": str(cache.path), "backbone": p["backbone"],
           "features": f"{p['backbone']} {p['image_size'][0]}px {cache.outputs[0]}"}  # as bench's rows say it
    rows = []
    with threadpool_limits(2):
        for head in heads:
            for k in shots:
                t0 = time.perf_counter()
                accs, sizes = [], None
                for d in range(draws):
                    t, v = draw_shots(y, tr, va, k, seed, d)
                    accs.append(_score(cache, head, X, y, t, v, te, classes))
                    sizes = (len(t), len(v))
                a = np.asarray(accs)
                rows.append({**who, "head": head, "shots": k, "draws": draws, "seed": seed, "accuracy": float(a.mean()),
                             "accuracy_sd": float(a.std(ddof=1)) if draws > 1 else 0.0,
                             "accuracies": [float(v) for v in a], "n_train": sizes[0], "n_val": sizes[1],
                             "n_test": int(len(te)), "seconds": time.perf_counter() - t0})
    if out is not None:
        write_shots(Path(out), rows, [cache])
    return rows


def write_shots(out: Path, rows: list[dict], caches) -> None:
    """shots.json, shots.csv, shots.png (accuracy against k, a line per head and backbone), shots.md (a mean ±
    sd table per backbone, head and k, linking the plot) and report.html (the same, the plot embedded) in
    ``out``."""
    from ..report import md_text, shots_figure, shots_page  # matplotlib: only when the files are written

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / SHOTS_JSON, (json.dumps(rows, indent=2) + "\n").encode())
    png = shots_figure(rows)
    atomic_write_bytes(out / SHOTS_PNG, png)
    cols = ["backbone", "features", "head", "shots", "draws", "seed", "accuracy", "accuracy_sd", "n_train", "n_val",
            "n_test", "seconds"]
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / SHOTS_CSV, table.getvalue().encode())
    shots = sorted({r["shots"] for r in rows})
    title = f"Few-shot: {', '.join(c.path.name for c in caches)}"
    intro = (f"Test accuracy (mean ± sd over {rows[0]['draws']} draws, seed {rows[0]['seed']}) with k train images "
             f"a class, min(k, {VAL_SHOTS}) val images a class to choose the setting, the whole test split "
             f"({rows[0]['n_test']:,} rows) every draw.")
    alt = "Test accuracy against k shots a class, a line per head and backbone"
    headers = ["features", "head", *(f"{k}-shot" for k in shots)]
    body = []
    for features, head in dict.fromkeys((r["features"], r["head"]) for r in rows):
        by_k = {r["shots"]: r for r in rows if r["head"] == head and r["features"] == features}
        body.append([features, head, *(f"{100 * by_k[k]['accuracy']:.1f} ± {100 * by_k[k]['accuracy_sd']:.1f}"
                                       for k in shots)])
    md = [f"# {title}", "", intro, "", f"![{alt}]({SHOTS_PNG})", "", "| " + " | ".join(headers) + " |",
          "|---" * len(headers) + "|", *("| " + " | ".join(md_text(c) for c in cells) + " |" for cells in body)]
    atomic_write_bytes(out / SHOTS_MD, ("\n".join(md) + "\n").encode())
    atomic_write_bytes(out / "report.html", shots_page(title, intro, headers, body, png, alt).encode())
