"""``featcache inspect``: see a cache's data through its features, every split at once.

Likely label errors (cleanlab's confident learning on out-of-fold
probabilities of a logistic regression, folds grouped by image so views stay
together), near-duplicate and exact-duplicate groups, outliers, class pairs
the features cannot separate, and a 2-D map, in issues.csv and one
self-contained report.html. One module per finding; this one wires them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import FeatcacheError
from ..params import Param, check, defaults
from ..store import Cache, open_cache
from .duplicates import duplicate_groups, unit_rows
from .labels import FILTERS, class_overlap, label_issues, out_of_fold
from .map import embed, sample_rows
from .outliers import METHODS, outlier_scores
from .report import render_html, write_tables, write_thumbnails
from .thumbs import thumbnails

__all__ = ["INSPECT", "inspect"]

#: every keyword of :func:`inspect` but the cache
INSPECT: tuple[Param, ...] = (
    Param("out", "inspect", "report directory (new, empty, or an earlier featcache inspect report)", Path),
    Param("threshold", 0.98, "cosine similarity from which two images are near-duplicates", float, minimum=0,
          maximum=1, bounds="(]"),
    Param("k", 10, "neighbours of the outlier score", int, minimum=1),
    Param("outlier_share", 0.01, "share of the rows flagged as outliers (the highest scores)", float, minimum=0,
          maximum=1, bounds="(]"),
    Param("outlier_method", "knn", "outlier score: knn (mean cosine distance to the k nearest) or datalab "
          "(cleanlab's)", choices=METHODS),
    Param("label_filter", FILTERS[0], "cleanlab's filter of likely label errors (find_label_issues filter_by)",
          choices=FILTERS),
    Param("folds", 5, "cross-validation folds of the out-of-fold probabilities", int, minimum=2),
    Param("output", None, "which stored output (default: the first)"),
    Param("map", True, "draw the 2-D map (UMAP; PCA under a few hundred rows)", bool),
    Param("map_rows", 20_000, "most rows the map draws (beyond: every flagged row and a seeded sample of the rest; "
          "UMAP and one thumbnail a point grow with it)", int, minimum=3),
    Param("seed", 0, "seed of the folds and the map", int),
)
_D = defaults(INSPECT)


def _prepare_out(out: Path) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "issues.csv").is_file():
        raise FeatcacheError(f"{out} is not empty and not a featcache inspect report; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "thumbnails").glob("row*.png"):  # an earlier report's images would outlive its findings
        stale.unlink()
    return out


def _label_findings(cache, labels, folds, seed, output, label_filter=FILTERS[0]):
    """Flagged label errors and overlapping class pairs over the labelled rows, or None when there are none."""
    rows = np.flatnonzero(labels >= 0)
    present = np.unique(labels[rows])
    if len(rows) == 0 or len(present) < 2:
        return None
    y = np.searchsorted(present, labels[rows])  # 0..C-1 for cleanlab
    probs = out_of_fold(cache, rows, y, folds=folds, seed=seed, output=output)
    found = label_issues(probs, y, label_filter)
    overlap = [dict(p, a=int(present[p["a"]]), b=int(present[p["b"]])) for p in class_overlap(probs, y)]
    accuracy = float((probs.argmax(1) == y).mean())
    return {"rows": rows[found["index"]], "score": found["score"], "suggested": present[found["suggested"]],
            "overlap": overlap, "oof_accuracy": accuracy}


def _records(cache, labels, lab, groups, out_rows, out_score):
    ids, name = cache.ids(), cache.class_name
    given = [name(int(v)) if v >= 0 else None for v in labels]
    recs, issue_of = [], {}
    for r, s in zip(out_rows, out_score):
        recs.append({"id": ids[r], "issue": "outlier", "score": float(s), "given_label": given[r],
                     "suggested_label": None, "group": None})
        issue_of[int(r)] = "outlier"
    for g, grp in enumerate(groups):
        kind = "duplicate" if grp["kind"] == "exact" else "near_duplicate"
        for r in grp["rows"]:
            recs.append({"id": ids[r], "issue": kind, "score": grp["cosine"], "given_label": given[r],
                         "suggested_label": None, "group": g})
            issue_of[int(r)] = kind
    if lab:
        for r, s, sug in zip(lab["rows"], lab["score"], lab["suggested"]):
            recs.append({"id": ids[r], "issue": "label", "score": float(s), "given_label": given[r],
                         "suggested_label": name(int(sug)), "group": None})
            issue_of[int(r)] = "label"
    return recs, issue_of


def _sections(cache, labels, splits, lab, groups, out_rows, out_score, k, method, threshold):
    name = cache.class_name
    sec = []
    if lab:
        sec.append({"title": f"Likely label errors ({len(lab['rows']):,})", "note": "cleanlab confident learning "
                    f"on out-of-fold probabilities (out-of-fold accuracy {lab['oof_accuracy']:.1%}); worst first",
                    "head": ["score", "given", "suggested", "split"], "images": [[int(r)] for r in lab["rows"]],
                    "rows": [[f"{s:.3f}", name(int(labels[r])), name(int(g)), splits[r]]
                             for r, s, g in zip(lab["rows"], lab["score"], lab["suggested"])]})
    sec.append({"title": f"Duplicate groups ({len(groups):,})", "note": f"exact: same content digest; near: "
                f"connected at cosine >= {threshold}; groups whose images carry different labels first",
                "head": ["group", "kind", "size", "labels", "splits", "min cosine"],
                "images": [[int(r) for r in g["rows"]] for g in groups],
                "rows": [[i, g["kind"], len(g["rows"]), ", ".join(sorted({name(int(labels[r])) for r in g["rows"]
                                                                          if labels[r] >= 0})) or "-",
                          ", ".join(sorted({splits[r] for r in g["rows"]})), f"{g['cosine']:.4f}"]
                         for i, g in enumerate(groups)]})
    sec.append({"title": f"Outliers ({len(out_rows):,})", "note": f"{method} score (k={k}), highest first",
                "head": ["score", "label", "split"], "images": [[int(r)] for r in out_rows],
                "rows": [[f"{s:.4f}", name(int(labels[r])) if labels[r] >= 0 else "-", splits[r]]
                         for r, s in zip(out_rows, out_score)]})
    if lab:
        sec.append({"title": "Class overlap", "note": "class pairs the out-of-fold head swaps (>= 5% of their images)",
                    "head": ["classes", "swapped", "rate"], "images": [[] for _ in lab["overlap"]],
                    "rows": [[f"{name(p['a'])} / {name(p['b'])}", p["swapped"], f"{p['rate']:.1%}"]
                             for p in lab["overlap"]]})
    return sec


def inspect(cache: Cache | str, *, out=_D["out"], threshold: float = _D["threshold"], k: int = _D["k"],
            outlier_share: float = _D["outlier_share"], outlier_method: str = _D["outlier_method"],
            label_filter: str = _D["label_filter"], folds: int = _D["folds"], output: str | None = _D["output"],
            map: bool = _D["map"], map_rows: int = _D["map_rows"], seed: int = _D["seed"]) -> dict:
    """One report over the whole cache: label errors, duplicates, outliers, class overlap and a 2-D map.

    Returns a summary dict (``counts``, ``label_checks``, ``files`` ...); the
    findings are in ``out/issues.csv`` and ``out/report.html``. A cache
    without labels gets duplicates and outliers only.
    """
    check(INSPECT, {"out": out, "threshold": threshold, "k": k, "outlier_share": outlier_share,
                    "outlier_method": outlier_method, "label_filter": label_filter, "folds": folds, "output": output,
                    "map": map, "map_rows": map_rows, "seed": seed})
    start = time.perf_counter()
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    out = _prepare_out(out)
    labels, n = cache.labels(), len(cache)
    splits = cache.splits() or ["-"] * n
    U = unit_rows(cache.read_rows(np.arange(n), output).features)
    lab = _label_findings(cache, labels, folds, seed, output, label_filter)
    groups = duplicate_groups(U, cache.digests() if cache.has_digests else None, labels, splits, threshold)
    scores = outlier_scores(U, k, outlier_method)
    out_rows = np.argsort(-scores, kind="stable")[:max(1, int(round(outlier_share * n)))] if n else np.zeros(0, int)
    recs, issue_of = _records(cache, labels, lab, groups, out_rows, scores[out_rows])
    drawn = sample_rows(n, issue_of, map_rows, seed) if map else np.zeros(0, np.int64)
    xy, method = embed(U[drawn], seed) if map else (None, "")
    shown = {int(r) for r in drawn} | {int(r) for r in issue_of}
    thumbs = thumbnails(cache, sorted(shown))
    write_thumbnails(out, thumbs, sorted(issue_of))
    files = write_tables(out, recs)
    counts = {"rows": n, "label": 0 if lab is None else len(lab["rows"]), "duplicate_groups": len(groups),
              "outliers": len(out_rows), "overlapping_pairs": 0 if lab is None else len(lab["overlap"])}
    skipped = "label checks skipped: the cache has no labels" if lab is None else ""
    summary = {"cache": str(cache.path), "counts": counts, "label_checks": lab is not None, "map": method,
               "summary": skipped or f"{counts['label']:,} likely label errors, {len(groups):,} duplicate groups, "
               f"{len(out_rows):,} outliers", "seconds": 0.0, "out": str(out), "files": files + ["report.html"],
               "sections": _sections(cache, labels, splits, lab, groups, out_rows, scores[out_rows], k,
                                     outlier_method, threshold)}
    render_html(out, summary, cache.ids(), labels, thumbs, xy, method, issue_of, drawn)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["map_rows"] = len(drawn)
    summary["outlier_scores"] = scores
    summary["label_rows"] = [] if lab is None else [int(r) for r in lab["rows"]]
    summary["oof_accuracy"] = None if lab is None else round(lab["oof_accuracy"], 4)
    return summary
