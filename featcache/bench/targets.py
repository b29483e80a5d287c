"""Benchmarking regression and multi-label targets attached to one cache (docs/TARGETS.md).

Each target's heads (those whose ``HeadSpec.kinds`` serve its kind) run in
this process on the one cache: fit on train rows with a value, multi-label
thresholds chosen on val, the test split measured once; the best head per
target is picked on validation alone (:func:`.select.best_target_row`). Each
kind's trivial baseline (train mean; train label frequencies) is a row too.
Classification targets (``label``) are :func:`featcache.bench`'s own job.
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import FeatcacheError, FeatcacheWarning
from .select import SELECT_METRIC, best_target_row

#: the heads a kind runs when none are named: fast, and one linear plus one local head each
DEFAULT_TARGET_HEADS = {"regression": ("ridge", "knn"), "multilabel": ("logreg", "knn")}
#: the head run on raw pixels for a kind when the bench's baseline heads name none that serves it
PIXEL_HEADS = {"regression": "ridge", "multilabel": "logreg"}
#: results.csv metric columns by kind, each also with ``_lo``/``_hi`` 95% bootstrap bounds
METRICS = {"regression": ("r2", "mae", "rmse", "spearman"),
           "multilabel": ("map", "micro_f1", "macro_f1", "subset_accuracy"),
           "classification": ("accuracy", "macro_f1")}
#: the sub-directory of the report that holds a classification target's own full bench report
CLASSIFICATION_REPORT = "target_{}"
#: the file of target rows in the report directory
TARGET_RESULTS = "target_results.csv"


def parse_targets(target) -> list[str]:
    """``"age,tags"`` or ``["age", "tags"]`` -> the target names, in order, without repeats."""
    names = target.split(",") if isinstance(target, str) else list(target or ())
    names = [str(n).strip() for n in names]
    if not names or any(not n for n in names):
        raise FeatcacheError(f"--target needs comma-separated target names, got {target!r}")
    return list(dict.fromkeys(names))


#: bench settings that regression and multi-label targets cannot honour, and why (one line each; docs/TARGETS.md)
NOT_FOR_TARGETS = {
    "backend": ("ray", "their heads run in this process in seconds, not as processes Ray could spread"),
    "cv": (None, "their heads choose on the val split (ridge: every alpha by leave-one-out), not by K folds"),
    "repeats": (1, "their rows are one split's; repeated draws are classification's"),
}


def check_target_bench(cache, names, heads, options: dict) -> None:
    """Refuse, before any work, what a ``bench --target`` run cannot do: an unknown target, a head that serves
    none of the targets' kinds, or a setting regression and multi-label targets do not honour."""
    from ..heads import HEADS, get_head_spec
    from ..store import open_cache

    cache = open_cache(cache) if isinstance(cache, (str, Path)) else cache
    kinds = {n: cache.target(n).kind for n in names}  # an unknown target: one line naming those there are
    other = sorted({k for k in kinds.values() if k != "classification"})
    for key, (default, why) in NOT_FOR_TARGETS.items():
        value = options.get(key, default)
        if other and (value == default if key == "backend" else value != default):
            raise FeatcacheError(f"bench --{key.replace('_', '-')} {value} does not apply to {' and '.join(other)} "
                                 f"targets ({', '.join(n for n, k in kinds.items() if k != 'classification')}): {why}")
    every = not heads or {h for h in heads if isinstance(h, str)} == set(HEADS)  # the CLI's "every head"
    for h in [h for h in heads or () if not isinstance(h, str)]:  # your own: refused as train refuses it
        from ..heads.custom import user_head

        name, kind = next(((n, k) for n, k in kinds.items() if estimator_serves(h, k)), next(iter(kinds.items())))
        user_head(h, [], kind=kind, target=name)  # wrong kind (naming the target's), a class, a bad parameter
    for n in [n for n, k in kinds.items() if k == "classification"]:
        classification_heads(heads, n)  # your regressors alone: nothing to run on a classification target
    for h in [] if every else [h for h in heads if isinstance(h, str)]:
        serves = set(get_head_spec(h).kinds)
        if not serves & set(kinds.values()):
            raise FeatcacheError(f"head {h} serves {', '.join(sorted(serves))} targets, none of those benched "
                                 f"({', '.join(f'{n}: {k}' for n, k in kinds.items())})")


def estimator_serves(estimator, kind: str) -> bool:
    """Whether a user's estimator object can learn a ``kind`` target (a regressor, or a classifier)."""
    from ..heads.custom import NEEDS

    return bool(NEEDS[kind][0](estimator))


def kind_heads(heads, kind: str, served) -> list:
    """The heads of ``heads`` that serve ``kind``: the named ones among ``served``, and your own that suit it."""
    return [h for h in heads if (h in served if isinstance(h, str) else estimator_serves(h, kind))]


def _metric_cells(kind: str, m: dict) -> dict:
    cells = {}
    for k in METRICS[kind]:
        ci = m.get(f"{k}_ci") or [None, None]
        cells.update({k: m.get(k), f"{k}_lo": ci[0], f"{k}_hi": ci[1]})
    return cells


def _baseline_row(cache, name: str, t, masks: dict) -> dict:
    """The kind's trivial predictor: the train mean (regression) or train label frequencies (multi-label)."""
    from .metrics import frequency_baseline, mean_baseline, multilabel_metrics, regression_metrics

    y = t.values
    test, val = masks["test"], masks["val"]
    if t.kind == "regression":
        head, score = "train_mean", lambda m: regression_metrics(y[m], mean_baseline(y[masks["train"]], int(m.sum())))
    else:
        head, score = "label_frequency", lambda m: multilabel_metrics(
            y[m], frequency_baseline(y[masks["train"]], int(m.sum())))
    m_test = score(test) if test.any() else {}
    m_val = score(val) if val.any() else {}
    return {"target": name, "kind": t.kind, "head": head, "status": "ok", "baseline": True, "features": "-",
            f"val_{SELECT_METRIC[t.kind]}": m_val.get(SELECT_METRIC[t.kind]), "fit_seconds": 0.0,
            "rows_test": int(test.sum()), **_metric_cells(t.kind, m_test)}


def _head_row(cache, name: str, head: str, kind: str, val_fraction: float, test_fraction: float,
              pixels: tuple | None = None, views: str = "auto") -> dict:
    """One head's row; ``pixels`` ``(size, features)``: the same head on raw pixels, a baseline row."""
    from ..train_targets import train_target

    t0 = time.perf_counter()
    where = {"baseline": pixels is not None, "features": f"pixels {pixels[0]}x{pixels[0]}" if pixels else "cache"}
    head, shown = (head, head) if isinstance(head, str) else head  # your own: (estimator, custom:Name)
    own = {} if isinstance(head, str) else {"estimator": head}  # what the learning curve fits again
    try:
        res = train_target(cache, head, name, val_fraction=val_fraction, test_fraction=test_fraction,
                           features=pixels[1] if pixels else None, views=views)
    except (FeatcacheError, ValueError) as e:  # one head's failure is its row, not the run's end
        return {"target": name, "kind": kind, "head": shown, "status": "failed", **where,
                "error": str(e).splitlines()[0]}
    m = res["metrics"]
    return {"target": name, "kind": kind, "head": shown, "status": "ok", **where, **own,
            f"val_{SELECT_METRIC[kind]}": m.get("val", {}).get(SELECT_METRIC[kind]),
            "fit_seconds": res["fit_seconds"], "seconds": time.perf_counter() - t0,
            "rows_test": res["target"]["rows"]["test"], **_metric_cells(kind, m.get("test", {})),
            "pipe": res["pipe"], "test": res["test"], "names": res["target"]["names"],
            "best_params": res["best_params"], "thresholds": res["thresholds"], "n_train": res["n_train"],
            **({"features": f"cache + {res['views'][0]} views as {res['views'][1]}"} if res["views"][0] else {})}


def _pixels(cache, baseline_heads, size: int, memo: dict):
    """``(size, raw-pixel features)`` of the cache once per run, or None: no baseline asked, or arrays."""
    if not baseline_heads:
        return None
    if "pixels" not in memo:
        memo["pixels"] = None
        if cache.source_address is None:  # arrays: their pixels cannot be read again
            warnings.warn(f"no raw-pixel baseline: {cache.path} was made from in-memory arrays, whose pixels "
                          "featcache cannot read again", FeatcacheWarning, stacklevel=3)
        else:
            from .pixels import pixel_features

            memo["pixels"] = (size, pixel_features(cache, size))
    return memo["pixels"]


def _pixel_heads(kind: str, baseline_heads, served) -> list[str]:
    """The baseline heads that serve ``kind``, else its :data:`PIXEL_HEADS` one (none when none are asked)."""
    if not baseline_heads:
        return []
    return [h for h in baseline_heads if h in served] or [PIXEL_HEADS[kind]]


def _target_rows(cache, name: str, t, names, vf: float, tf: float, pixel_heads, pixels, options: dict) -> list[dict]:
    from ..train_targets import target_masks

    masks = target_masks(cache, t, vf, tf)
    views = options.get("views", "auto")
    own = [_head_row(cache, name, h, t.kind, vf, tf, views=views) for h in _shown(names)]
    if pixels is not None:
        own += [_head_row(cache, name, h, t.kind, vf, tf, pixels) for h in pixel_heads]
    own.append(_baseline_row(cache, name, t, masks))
    best = best_target_row(own)
    if best is not None:
        best["best"] = True
        curve = options.get("learning_curve", (0.1, 0.25, 0.5))
        best["curve"] = _curve(cache, name, best, vf, tf, views, curve) if curve else []
        if options.get("leakage", True):
            best["leakage"] = _leakage(cache, best, masks)
    return own


def _shown(heads) -> list:
    """Each head as ``_head_row`` takes it: a name, or your own estimator as ``(estimator, "custom:Name")``
    (``#2`` ... when two share a class, as :func:`featcache.bench` names them)."""
    from ..heads.custom import head_name

    out, seen = [], set()
    for h in heads:
        if isinstance(h, str):
            out.append(h)
            continue
        base = shown = head_name(h)
        n = 1
        while shown in seen:
            n += 1
            shown = f"{base}#{n}"
        seen.add(shown)
        out.append((h, shown))
    return out


def _curve(cache, name: str, best: dict, vf: float, tf: float, views: str, fractions) -> list[dict]:
    """The best head, its chosen setting fixed, on each share of the train and val rows; then the whole."""
    from ..train_targets import train_target

    metric, points = SELECT_METRIC[best["kind"]], []
    for f in sorted({float(f) for f in fractions if 0 < f < 1}):
        res = train_target(cache, best.get("estimator", best["head"]), name, params=best.get("best_params") or {},
                           val_fraction=vf,
                           test_fraction=tf, views=views, train_fraction=f)
        m = res["metrics"].get("test", {})
        points.append({"train_fraction": f, "n_train": res["n_train"], metric: m.get(metric),
                       f"{metric}_ci": m.get(f"{metric}_ci")})
    return points + [{"train_fraction": 1.0, "n_train": best.get("n_train"), metric: best.get(metric),
                      f"{metric}_ci": [best.get(f"{metric}_lo"), best.get(f"{metric}_hi")]}]


def _leakage(cache, best: dict, masks: dict) -> dict:
    """Test rows nearly duplicating a train or val row (cosine >= 0.98 on the features), and the best head's
    metric without them (the classification report's check, on this target's rows)."""
    from ..leakage import near_duplicates
    from .metrics import multilabel_metrics, regression_metrics

    leaks = near_duplicates(cache, masks=masks)
    keep = ~np.asarray(leaks["leaked"], bool)
    out = {"n_test": leaks["n_test"], "n_leaked": leaks["n_leaked"], "pairs": leaks["pairs"][:12]}
    metric = SELECT_METRIC[best["kind"]]
    if leaks["n_leaked"] and keep.any() and best.get("test") is not None:
        y, s = (np.asarray(a)[keep] for a in best["test"])
        m = regression_metrics(y, s) if best["kind"] == "regression" else multilabel_metrics(y, s, best["thresholds"])
        out[f"{metric}_without"] = m.get(metric)
    return out


def bench_targets(cache, target, *, heads=None, out=None, val_fraction: float | None = None,
                  test_fraction: float | None = None, baseline_heads=("logreg",), pixel_size: int = 16,
                  only=None, options: dict | None = None, classify=None) -> list[dict]:
    """Run each non-classification target's heads and baselines on ``cache``; return (and write) the rows.

    ``heads``: names to run where they serve a target's kind (default :data:`DEFAULT_TARGET_HEADS`), and your own
    scikit-learn estimators, each on the targets it suits (a regressor: regression; a classifier: the others).
    ``baseline_heads``: run on the cache's raw pixels (``pixel_size`` square) as baseline rows: those
    that serve the kind, else the kind's :data:`PIXEL_HEADS` head (empty: no pixel baseline).
    Each target's best row (on validation) gets ``best: True``. With ``out``, rows go to
    ``out/target_results.csv``, one section per target to ``out/targets.md`` and to the report.
    ``only``: run just these targets; the others' rows are kept from ``out/target_results.csv``
    (a pipeline re-run after one target's table changed). A classification target other than ``label``
    runs ``classify`` (:func:`featcache.bench`, passed in by its callers: this module is below it) with
    every classification head, ``options`` its other settings and the target as the labels, its full
    report in ``out/target_NAME/``, its rows summarised here. For the other kinds ``options`` gives
    ``views`` (how train rows take their views), ``learning_curve`` (shares for the best head; None: none)
    and ``leakage`` (the near-duplicate check), as :func:`featcache.bench` names them.
    """
    from ..heads.kinds import heads_for
    from ..splits import TEST_FRACTION, VAL_FRACTION
    from ..store import open_cache

    cache = open_cache(cache) if isinstance(cache, (str, Path)) else cache
    vf = VAL_FRACTION if val_fraction is None else val_fraction
    tf = TEST_FRACTION if test_fraction is None else test_fraction
    rows, memo = [], {}
    kept = read_target_results(Path(out)) if only is not None and out is not None else {}
    for name in parse_targets(target):
        if only is not None and name not in only and name in kept:
            rows += kept[name]
            continue
        t = cache.target(name)
        if t.kind == "classification":
            if name != "label":  # label's table is featcache.bench's own, in out itself
                if classify is None:
                    raise FeatcacheError(f"{name!r} is a classification target: bench it with featcache.bench(cache, "
                                         f"target={name!r}) (featcache bench CACHE --target {name})")
                rows += classification_rows(classify, cache, name, heads, out, baseline_heads, pixel_size,
                                            options or {})
            continue
        served = heads_for(t.kind)
        names = kind_heads(heads, t.kind, served) if heads else list(DEFAULT_TARGET_HEADS[t.kind])
        if not names:
            raise FeatcacheError(f"none of the heads {[_name(h) for h in heads]} serve {t.kind} target {name!r}; "
                                 f"heads that do: {', '.join(served)}, or your own {_needs(t.kind)}")
        pixel_heads = _pixel_heads(t.kind, baseline_heads, served)
        rows += _target_rows(cache, name, t, names, vf, tf, pixel_heads,
                             _pixels(cache, pixel_heads, pixel_size, memo), options or {})
    if out is not None:
        write_target_results(rows, Path(out))
    return rows


def classification_heads(heads, target: str):
    """The heads of ``heads`` a classification target runs (every named head, your classifiers); None: defaults."""
    if not heads:
        return heads
    fit = [h for h in heads if isinstance(h, str) or estimator_serves(h, "classification")]
    if not fit:
        raise FeatcacheError(f"none of the heads {[_name(h) for h in heads]} serve classification target "
                             f"{target!r}; name a head (featcache heads) or give a classifier")
    return fit


def _name(head) -> str:
    return head if isinstance(head, str) else type(head).__name__


def _needs(kind: str) -> str:
    from ..heads.custom import NEEDS

    return NEEDS[kind][1]


def classification_rows(bench, cache, name: str, heads, out, baseline_heads, pixel_size: int,
                        options: dict) -> list[dict]:
    """A classification target's rows: ``bench`` (:func:`featcache.bench`) on the cache read with ``name`` as its
    labels (its full report in ``out/target_NAME``), each row summarised with accuracy and macro-F1, then the
    majority class."""
    import tempfile

    from .select import best_row
    from .stats import bootstrap_intervals

    sub = Path(out) / CLASSIFICATION_REPORT.format(name) if out is not None else Path(tempfile.mkdtemp())
    labelled = cache.with_target(name)
    options = dict(options)
    heads = classification_heads(options.pop("heads", heads), name)  # bench's own list (your classifiers too)
    options.update(out=sub, baseline_heads=baseline_heads, pixel_size=pixel_size)
    table = bench(labelled, heads, **options)
    best = best_row(table)
    rows = []
    for r in table:
        ci = {k: r.get(f"{k}_ci") or [None, None] for k in ("accuracy", "macro_f1")}
        rows.append({"target": name, "kind": "classification", "head": r["head"], "status": r.get("status"),
                     "baseline": bool(r.get("baseline")), "best": r is best,
                     "features": f"pixels {pixel_size}x{pixel_size}" if r.get("baseline") else "cache",
                     "val_accuracy": r.get("val_accuracy"), "fit_seconds": r.get("fit_seconds"),
                     "rows_test": r.get("n_test"), "report": str(sub),
                     **{c: v for k in ci for c, v in ((k, r.get(k)), (f"{k}_lo", ci[k][0]), (f"{k}_hi", ci[k][1]))}})
    return rows + [_majority_row(labelled, name, bootstrap_intervals)]


def _majority_row(cache, name: str, intervals) -> dict:
    """The trivial classifier: every val and test row gets the train split's most frequent class."""
    from sklearn.metrics import accuracy_score, f1_score

    from ..train import split_masks

    y, masks = cache.labels(), split_masks(cache)
    train = y[masks["train"]]
    top = int(np.bincount(train).argmax()) if len(train) else 0
    val, test = y[masks["val"]], y[masks["test"]]
    ci = intervals(test, np.full(len(test), top)) if len(test) else {}
    out = {"target": name, "kind": "classification", "head": "majority", "status": "ok", "baseline": True,
           "features": "-", "fit_seconds": 0.0, "rows_test": int(len(test)),
           "val_accuracy": float(np.mean(val == top)) if len(val) else None}
    scores = {"accuracy": accuracy_score, "macro_f1": lambda t, p: f1_score(t, p, average="macro", zero_division=0)}
    for k, score in scores.items():
        low, high = ci.get(f"{k}_ci") or [None, None]
        out.update({k: float(score(test, np.full(len(test), top))) if len(test) else None, f"{k}_lo": low,
                    f"{k}_hi": high})
    return out


def write_target_results(rows: list[dict], out: Path) -> None:
    """``target_results.csv`` (a ``target`` column, each kind's metrics with bounds) and ``targets.md``."""
    from ..files import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    cols = ["target", "kind", "head", "features", "status", "baseline", "best", "val_r2", "val_map", "rows_test",
            "fit_seconds"]
    for kind in METRICS:
        for k in METRICS[kind]:
            cols += [c for c in (k, f"{k}_lo", f"{k}_hi") if c not in cols]
    cols.append("val_accuracy")  # last: a file written before classification targets keeps its header's start
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / TARGET_RESULTS, buf.getvalue().encode())
    atomic_write_bytes(out / "targets.md", targets_markdown(rows).encode())
    from ..report_targets import write_target_report

    write_target_report(out, rows)


def is_target_report(out: Path) -> bool:
    """Whether ``out`` holds a ``target_results.csv`` that :func:`write_target_results` wrote (its header)."""
    path = Path(out) / TARGET_RESULTS
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith("target,kind,head,features,status,baseline,best,")
    except (OSError, UnicodeDecodeError):
        return False


def read_target_results(out: Path) -> dict[str, list[dict]]:
    """The rows of an earlier ``target_results.csv`` in ``out`` by target, numbers as numbers ({} if none)."""
    try:
        with open(out / TARGET_RESULTS, newline="", encoding="utf-8") as f:
            table = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    numbers = {c for kind in METRICS for k in METRICS[kind] for c in (k, f"{k}_lo", f"{k}_hi")}
    numbers |= {"val_r2", "val_map", "val_accuracy", "fit_seconds"}
    rows = {}
    for r in table:
        r = {k: (float(v) if k in numbers else v == "True" if k in ("baseline", "best") else v) if v != "" else None
             for k, v in r.items()}
        rows.setdefault(r["target"], []).append(r)
    return rows


def targets_markdown(rows: list[dict]) -> str:
    """One section per target: its rows' test metrics with 95% intervals, the best (by validation) marked."""
    from ..report_targets import notes

    lines = ["# Targets", ""]
    for name in dict.fromkeys(r["target"] for r in rows):
        own = [r for r in rows if r["target"] == name]
        kind = own[0]["kind"]
        lines += [f"## {name} ({kind})", "", "| head | " + " | ".join(METRICS[kind]) + " |",
                  "|---" * (len(METRICS[kind]) + 1) + "|"]
        for r in own:
            cells = ["-" if r.get(k) is None else f"{r[k]:.3f} [{r[f'{k}_lo']:.3f}, {r[f'{k}_hi']:.3f}]"
                     if r.get(f"{k}_lo") is not None else f"{r[k]:.3f}" for k in METRICS[kind]]
            label = r["head"] + (" (best)" if r.get("best") else "") + (
                f" ({r['features']}, baseline)" if r.get("features", "").startswith("pixels")
                else " (baseline)" if r.get("baseline") else "")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", *[f"{n}\n" for n in notes(own)]]
    return "\n".join(lines)
