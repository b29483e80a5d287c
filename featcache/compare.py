"""Which backbone: extract a seeded sample of a source with each candidate, bench a fast head set with repeats on
the same draws, and recommend one backbone with the paired evidence and the cost of extracting everything.

Above bench in the data flow: every candidate goes through the normal
extract path (:func:`featcache.runner.prepare` and :func:`~featcache.runner.run`),
so its cache is keyed as usual and reusable (``featcache extract SOURCE
--backbone B --limit N`` is then a no-op on it); then one
:func:`featcache.bench` of every cache with ``repeats`` draws. The sampled
caches share their items, hence their splits and every draw, so the
corrected resampled t-test of :mod:`featcache.bench.stats` pairs each
backbone's best row with the winner's. The recommendation is the one
best-row rule's (:func:`featcache.bench.select.best_row`, the validation
mean over the draws); LogME (:mod:`featcache.logme`) is an extra column,
never the judge.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bench import bench
from .bench.select import TIE_ALPHA, best_row, paired_p
from .errors import BackboneError, FeatcacheError
from .files import atomic_write_bytes
from .params import Param, check, defaults, docs
from .sources import LIMIT_SEED

COMPARE_JSON, COMPARE_MD, BENCH_DIR = "compare.json", "compare.md", "bench"

#: every keyword of :func:`compare` but the source, declared once (``featcache compare``'s flags come from here)
COMPARE: tuple[Param, ...] = (
    Param("backbones", None, "candidate backbones, comma-separated: registry names (featcache backbones), .keras "
          "files, or NAME:LAYER for a cut at a mid-level layer; two or more", many=True, min_items=1),
    Param("sample", 2000, "images drawn from SOURCE (stratified by class, seeded) and extracted with every backbone "
          "(0: every image)", int, minimum=0),
    Param("sample_seed", LIMIT_SEED, "seed of the sample (extract --limit-seed)", int, minimum=0),
    Param("heads", ("logreg", "knn_cosine", "lda"), "the head set benched on every backbone (fast ones: the "
          "linear and the k-NN probe, LDA)", many=True, min_items=1),
    Param("repeats", 5, "seeded train/val re-draws per row (bench --repeats): the paired test needs two or more",
          int, minimum=2),
    Param("seed", 0, "seed of the re-draws (bench --seed)", int, minimum=0),
    Param("image_size", None, "model input size for every backbone (default: each backbone's own)", int, minimum=1),
    Param("weights", "imagenet", "weights of the registry backbones: imagenet or none (random, for tests)",
          choices=("imagenet", "none")),
    Param("caches", "caches", "directory of the candidates' caches, one sub-directory each (reused when run again)",
          Path),
    Param("out", "compare", "report directory: compare.md, compare.json and the bench's report in bench/", Path),
    Param("timeout", 180.0, "seconds per head before it is reported timed out (None: no limit)", float, minimum=0,
          bounds="(]", nullable=True),
    Param("n_jobs", 2, "heads run in parallel (bench --n-jobs)", int, minimum=-1),
    Param("logme", True, "add each backbone's LogME score (features and labels of train+val, seconds)", bool),
    Param("data_dir", None, "folder to look in first for named datasets (e.g. Fashion-MNIST)"),
    Param("progress", False, "progress bars and the live table", bool, cli=False, pipeline=False),
)
_D = defaults(COMPARE)


@dataclass
class Comparison:
    """What :func:`compare` found: one row per backbone (the recommended first in ``rows``' order of the
    request), the recommendation, the bench's rows and where the report is."""

    recommended: str | None
    rows: list[dict]
    bench_rows: list[dict] = field(repr=False)
    out: Path = Path("compare")


def compare(source, backbones=None, *, sample: int = _D["sample"], sample_seed: int = _D["sample_seed"],
            heads=_D["heads"], repeats: int = _D["repeats"], seed: int = _D["seed"], image_size=None,
            weights: str = _D["weights"], caches=_D["caches"], out=_D["out"], timeout=_D["timeout"],
            n_jobs: int = _D["n_jobs"], logme: bool = _D["logme"], data_dir=None,
            progress: bool = _D["progress"]) -> Comparison:
    """Recommend one of ``backbones`` for ``source``'s images, with the paired evidence and the extraction cost.

    Args:
        source: a folder, a CSV manifest or a dataset name, as :func:`featcache.extract` takes.
{settings}

    Returns:
        A :class:`Comparison`: per backbone its best head, validation mean ± sd over the draws, the paired
        p-value against the winner, its verdict (``best``, ``tie`` or ``below``), the sample's test accuracy
        (shown, never used to choose), LogME, images/s and the estimated seconds to extract every image.

    Examples:
        >>> c = featcache.compare("images/", ["efficientnet_lite0", "mobilenet_v2_torchvision"])  # doctest: +SKIP
        >>> c.recommended                                                                        # doctest: +SKIP
        'efficientnet_lite0'
    """
    given = locals()
    check(COMPARE, {p.name: given[p.name] for p in COMPARE})
    candidates = parse_candidates(backbones)
    out = check_out(out)
    from .heads import get_head_spec

    for h in heads:  # an unknown head: refused before any extraction, not after
        get_head_spec(h)
    from .runner import prepare  # stage one: only once every setting is checked

    n_all = _source_size(source, data_dir)
    limit = sample if 0 < sample < n_all else None
    plans = []
    for name, layer in candidates:  # every candidate's plan first: a bad name or weights file before any work
        plan, engine = prepare(source, name, Path(caches) / cache_name(source, name, layer, limit), weights=weights,
                               layer=layer, limit=limit, limit_seed=sample_seed, data_dir=data_dir,
                               options=_options(image_size))
        plans.append((plan, engine))
    paths = [_extract(plan, engine, progress) for plan, engine in plans]
    rows = bench([str(p) for p in paths], list(heads), repeats=repeats, seed=seed, out=out / BENCH_DIR,
                 baseline_heads=(), save_best=False, learning_curve=None, leakage=False, timeout=timeout,
                 n_jobs=n_jobs, progress=progress)
    table = backbone_rows(candidates, paths, rows, n_all, with_logme=logme)
    best = next((r for r in table if r["verdict"] == "best"), None)
    result = Comparison(best["backbone"] if best else None, table, rows, out)
    write_comparison(out, result, {"source": os.fspath(source), "sample": limit or n_all, "images": n_all,
                                   "heads": list(heads), "repeats": repeats, "seed": seed})
    return result


if compare.__doc__:  # the settings' help, declared once in COMPARE (absent under python -OO)
    compare.__doc__ = compare.__doc__.replace("{settings}", docs(COMPARE))


def parse_candidates(backbones) -> list[tuple[str, str | None]]:
    """``[(backbone, layer or None)]`` of ``NAME``, ``FILE.keras`` or ``NAME:LAYER`` items; a one-line error for
    an unknown name, a missing file, a duplicate or fewer than two."""
    from .backbones import get_spec  # the registry: names only, no Keras

    if not backbones:
        raise FeatcacheError("compare needs two or more backbones, e.g. --backbones "
                             "efficientnet_lite0,mobilenet_v2_torchvision")
    out = []
    for item in backbones:
        name, sep, layer = str(item).rpartition(":")
        name, layer = (name, layer) if sep and name else (str(item), None)
        if name.endswith((".keras", ".h5")):
            if not Path(name).is_file():
                raise BackboneError(f"backbone {name!r}: no such .keras file")
        else:
            get_spec(name)  # an unknown name: the registry's one line
        if (name, layer) in out:
            raise FeatcacheError(f"backbone {item!r} is named twice")
        out.append((name, layer or None))
    if len(out) < 2:
        raise FeatcacheError("compare needs two or more backbones to choose between")
    return out


def label(name: str, layer: str | None) -> str:
    """How a candidate is shown: ``name`` or ``name:layer`` (a file by its name)."""
    base = Path(name).name if name.endswith((".keras", ".h5")) else name
    return f"{base}:{layer}" if layer else base


def cache_name(source, name: str, layer: str | None, limit: int | None) -> str:
    """The candidate's cache directory name: source, backbone, layer and sample size, file-name safe."""
    src = Path(os.fspath(source)).name or os.fspath(source)
    text = f"{src}-{Path(name).stem}" + (f"-{layer}" if layer else "") + (f"-n{limit}" if limit else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def check_out(out) -> Path:
    """The report directory: new, empty, or an earlier comparison's; never another's."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FeatcacheError(f"--out {out} exists and is not a directory; choose a new report directory")
    if out.is_dir() and any(out.iterdir()) and not (out / COMPARE_JSON).is_file():
        raise FeatcacheError(f"--out {out} is not empty and holds no featcache comparison; choose a new or empty "
                             "directory")
    return out


def _options(image_size):
    from .plan import ExtractOptions

    return ExtractOptions(image_size=image_size)


def _source_size(source, data_dir) -> int:
    """How many images the whole source has: what "extract everything" costs is for."""
    from .sources import open_source

    return len(open_source(source, data_dir=data_dir))


def _extract(plan, engine, progress: bool) -> Path:
    from .runner import run

    cache, _summary = run(plan, progress=progress, engine=engine)
    return Path(cache.path)


def extraction_cost(timings: dict, n_images: int) -> dict:
    """Images/s at the steady rate (after the model's build and first batch) and the estimated seconds to
    extract ``n_images``: build + first batch + the rest at that rate, from the run that made the cache.

    Examples:
        >>> extraction_cost({"compute_seconds": 12.0, "build_seconds": 1.0, "first_batch_seconds": 1.0,
        ...                  "images_computed": 1064, "first_batch_items": 64}, 10_000)
        {'images_per_s': 100.0, 'all_seconds': 102.0}
    """
    fixed = (timings.get("build_seconds") or 0.0) + (timings.get("first_batch_seconds") or 0.0)
    n = (timings.get("images_computed") or 0) - (timings.get("first_batch_items") or 0)
    s = (timings.get("compute_seconds") or 0.0) - fixed
    rate = n / s if n > 0 and s > 0 else timings.get("images_per_s")
    if not rate:
        return {"images_per_s": None, "all_seconds": None}
    return {"images_per_s": round(float(rate), 2), "all_seconds": round(fixed + n_images / rate, 1)}


def transfer_score(cache) -> float:
    """LogME of the cache's train+val rows (the test split is left alone, as for the bench)."""
    from .logme import logme
    from .store import split_masks

    y = cache.labels()
    masks = split_masks(cache)
    rows = np.flatnonzero((masks["train"] | masks["val"]) & (y >= 0))
    X = cache.features()
    return logme(np.asarray(X[rows]).reshape(len(rows), -1), y[rows])


def backbone_rows(candidates, paths, rows: list[dict], n_all: int, *, with_logme: bool = True) -> list[dict]:
    """One row per candidate: its best head's row (by the validation mean), the paired test against the overall
    best row, LogME and the extraction cost."""
    from .store import open_cache

    best = best_row(rows)
    table = []
    for (name, layer), path in zip(candidates, paths):
        mine = best_row([r for r in rows if r["cache"] == str(path)])
        cache = open_cache(path)
        t0 = time.perf_counter()
        score = transfer_score(cache) if with_logme else None
        row = {"backbone": label(name, layer), "cache": str(path), "features": mine and mine["features"],
               "head": mine and mine["head"], "val_accuracy": mine and mine.get("val_accuracy"),
               "val_accuracy_sd": mine and mine.get("val_accuracy_sd"), "accuracy": mine and mine.get("accuracy"),
               "accuracy_ci": mine and mine.get("accuracy_ci"), "logme": score,
               "logme_seconds": round(time.perf_counter() - t0, 2) if with_logme else None,
               **extraction_cost(cache.timings, n_all)}
        row.update(_verdict(best, mine))
        table.append(row)
    return table


def _verdict(best: dict | None, mine: dict | None) -> dict:
    """``best``, ``tie`` (the paired test cannot tell it from the best, p >= 0.05), ``below``, or ``failed``."""
    if mine is None or best is None:
        return {"verdict": "failed", "p_value": None, "difference": None}
    if mine is best:
        return {"verdict": "best", "p_value": None, "difference": 0.0}
    p = paired_p(best, mine)
    diff = float(best["val_accuracy"] - mine["val_accuracy"])
    if p is None:  # not on the same draws (a skipped image changed a sample): no paired evidence
        return {"verdict": "unpaired", "p_value": None, "difference": diff}
    return {"verdict": "tie" if p >= TIE_ALPHA else "below", "p_value": p, "difference": diff}


def recommendation(result: Comparison) -> str:
    """The recommendation in one or two sentences: the winner, the evidence, what a tied cheaper one offers."""
    best = next((r for r in result.rows if r["verdict"] == "best"), None)
    if best is None:
        return "no backbone could be benched (every head failed); see the bench report"
    text = (f"use {best['backbone']} with {best['head']}: validation {_pct(best['val_accuracy'])} ± "
            f"{_pct(best['val_accuracy_sd'])} over the draws")
    others = [r for r in result.rows if r is not best and r["verdict"] != "failed"]
    below = [r for r in others if r["verdict"] == "below"]
    tied = [r for r in others if r["verdict"] == "tie"]
    if below:
        text += "; better than " + ", ".join(f"{r['backbone']} (p = {r['p_value']:.3f})" for r in below)
    if tied:
        cheaper = [r for r in tied if (r["all_seconds"] or 1e30) < (best["all_seconds"] or 0)]
        text += "; not distinguishable from " + ", ".join(f"{r['backbone']} (p = {r['p_value']:.2f})" for r in tied)
        if cheaper:
            c = min(cheaper, key=lambda r: r["all_seconds"])
            text += (f"; {c['backbone']} extracts everything in about {_seconds(c['all_seconds'])} against "
                     f"{_seconds(best['all_seconds'])}, a fair choice too")
    return text


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _seconds(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f} s" if v < 600 else (f"{v / 60:,.0f} min" if v < 36_000 else f"{v / 3600:,.1f} h")


def table_body(result: Comparison) -> tuple[list[str], list[list[str]]]:
    """The comparison's columns and cells, for the console and compare.md."""
    cols = ["backbone", "best head", "val. mean ± sd", "vs. best (paired p)", "sample test acc.", "LogME",
            "images/s", "extract all (est.)"]
    body = [[r["backbone"], r["head"] or "-",
             f"{_pct(r['val_accuracy'])} ± {_pct(r['val_accuracy_sd'])}" if r["val_accuracy"] is not None else "-",
             r["verdict"] + (f" (p = {r['p_value']:.3f})" if r["p_value"] is not None else ""),
             _pct(r["accuracy"]), "-" if r["logme"] is None else f"{r['logme']:.3f}",
             "-" if r["images_per_s"] is None else f"{r['images_per_s']:,.1f}", _seconds(r["all_seconds"])]
            for r in result.rows]
    return cols, body


def write_comparison(out: Path, result: Comparison, setup: dict) -> None:
    """compare.json (the rows and the setup) and compare.md (the table and the recommendation) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {**setup, "recommended": result.recommended, "recommendation": recommendation(result), "rows": result.rows}
    atomic_write_bytes(out / COMPARE_JSON, (json.dumps(doc, indent=2) + "\n").encode())
    cols, body = table_body(result)
    md = [f"# Which backbone: {setup['source']}", "",
          f"{setup['sample']:,} of {setup['images']:,} images, each extracted with every backbone; heads "
          f"{', '.join(setup['heads'])}, {setup['repeats']} seeded train/val draws (seed {setup['seed']}) on the "
          "same rows for every backbone. Each backbone's best head is chosen by its validation mean; `tie` and "
          f"`below` are the corrected resampled t-test against the best on the same draws (p >= {TIE_ALPHA}: a tie). "
          "The sample's test accuracy is shown, not used to choose. Extract all: the steady images/s of this run "
          "times the whole source, plus the model's start.", "",
          "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|", *("| " + " | ".join(b) + " |" for b in body),
          "", f"**Recommendation:** {recommendation(result)}.", "", f"The bench's own report: [{BENCH_DIR}/report.md]"
          f"({BENCH_DIR}/report.md)."]
    atomic_write_bytes(out / COMPARE_MD, ("\n".join(md) + "\n").encode())
