"""Log a bench to MLflow: one parent run per invocation, one nested child run per row.

The parent run holds the bench's settings as params and the report's files
and ``best_model/`` as artifacts; each row is a child run (MLflow's
``mlflow.parentRunId`` tag, what ``start_run(nested=True)`` sets). A row of
the table of heads has its backbone, layer, head, head params, target,
repeats, seed and cache key as params, its validation mean and sd, test
accuracy and its 95% interval bounds, macro-F1 and timings as metrics and its
verdict as a tag; a ``--shots`` row (head x backbone x k) its mean and sd
over the draws (each draw's accuracy as the ``accuracy_draw`` history); a
``--target`` row (target x head) its kind's metrics and their bounds, named
as in target_results.csv (``r2``, ``r2_lo``, ``r2_hi``, ``map``...). MLflow is
imported only here, and only when ``mlflow=`` is given.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

from ..errors import FeatcacheError

#: the experiment runs go to unless ``MLFLOW_EXPERIMENT_NAME`` names another (MLflow's own variable)
EXPERIMENT = "featcache-bench"
#: a bare ``--mlflow``: a file store here, named as a file:// URI so MLflow 3's default (a database) is not used
LOCAL_STORE = "mlruns"
#: the report's files logged as the parent run's artifacts (best_model/ is logged as a folder)
REPORT_FILES = ("report.html", "report.md", "results.csv", "results.json")
#: a --shots run's files
SHOT_FILES = ("report.html", "shots.json", "shots.csv", "shots.md", "shots.png")
#: a --target run's own files, beside the table of heads' (its label rows) and the target_*.png plots
TARGET_FILES = REPORT_FILES + ("target_results.csv", "targets.md")
#: MLflow's longest param value; a longer one (a long head list) is cut and marked
_PARAM_CHARS = 6000
#: row fields logged as the child run's metrics, under the same names as in results.json
ROW_METRICS = ("val_accuracy", "val_accuracy_sd", "accuracy", "balanced_accuracy", "macro_f1", "log_loss",
               "fit_seconds", "select_seconds", "predict_seconds_per_1000", "peak_memory_mb", "wall_seconds")


def import_mlflow():
    """The ``mlflow`` module, or a one-line error naming the extra (checked before any bench work)."""
    try:
        import mlflow
    except ImportError:
        raise FeatcacheError("bench --mlflow needs MLflow: pip install 'featcache[mlflow]'") from None
    return mlflow


def tracking_uri(mlflow) -> str:
    """The tracking URI of ``mlflow=``: True is ``./mlruns`` as a file:// URI, a string is the URI as given."""
    return Path(LOCAL_STORE).resolve().as_uri() if mlflow is True else str(mlflow)


def _value(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
    return text if len(text) <= _PARAM_CHARS else text[:_PARAM_CHARS - 3] + "..."


def log_bench(mlflow, settings: dict, rows: list[dict], out: Path, layers: dict) -> str:
    """Log the bench to the tracking store of ``mlflow=``; returns the parent run's id.

    Args:
        mlflow: True (``./mlruns``) or a tracking URI.
        settings: the bench's settings, logged as the parent's params.
        rows: the report's rows (``versus_best`` set), one child run each.
        out: the report directory (its files and ``best_model/`` become the parent's artifacts).
        layers: ``{cache: the stored output its rows used}``.
    """
    children = [_row_run(row, settings, layers) for row in rows]
    return _log(mlflow, settings, out, children, REPORT_FILES, _best_of_table(rows))


def log_shots(mlflow, settings: dict, rows: list[dict], out: Path) -> str:
    """Log a ``--shots`` bench: a child run per (head, backbone, k) row of :func:`.shots.few_shot`."""
    children = [_shot_run(row) for row in rows]
    return _log(mlflow, settings, out, children, SHOT_FILES, ({}, {}))


def log_targets(mlflow, settings: dict, rows: list[dict], out: Path, layers: dict) -> str:
    """Log a ``--target`` bench: ``label``'s rows as :func:`log_bench` does, a child run per (target, head) row
    of the other targets (:func:`.targets.bench_targets`), each target's best on the parent."""
    children = [_target_run(r, layers) if "kind" in r else _row_run(r, settings, layers) for r in rows]
    metrics, tags = _best_of_table([r for r in rows if "kind" not in r])
    for r in rows:
        if r.get("best") and "kind" in r:
            tags.update({f"best.{r['target']}.head": r["head"], f"best.{r['target']}.features": r.get("features")})
    files = TARGET_FILES + tuple(sorted(p.name for p in Path(out).glob("target_*.png")))
    return _log(mlflow, settings, out, children, files, (metrics, tags))


def _log(mlflow, settings: dict, out: Path, children: list[dict], files, best: tuple[dict, dict]) -> str:
    """The parent run (settings, the best's metrics and tags, ``files`` of ``out`` and best_model/ as artifacts)
    and its finished children; returns the parent's id."""
    uri = tracking_uri(mlflow)
    if uri.startswith("file:"):  # MLflow >= 3.x refuses the file store it kept in maintenance unless opted in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = import_mlflow().tracking.MlflowClient(tracking_uri=uri)
    from mlflow.entities import Metric, Param, RunTag

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MLflow 3 deprecates the file store a bare --mlflow picks
        experiment = _experiment(client, os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)
        parent = client.create_run(experiment, run_name=f"bench {out.name}", tags={"featcache.report": str(out)})
        pid = parent.info.run_id
        now = int(time.time() * 1000)
        client.log_batch(pid, params=[Param(k, _value(v)) for k, v in sorted(settings.items()) if v is not None],
                         metrics=[Metric(k, float(v), now, 0) for k, v in best[0].items()],
                         tags=[RunTag(k, str(v)) for k, v in best[1].items()])
        for i, child in enumerate(children):
            _log_child(client, experiment, pid, child, i, (Metric, Param, RunTag))
        for name in files:
            if (out / name).is_file():
                client.log_artifact(pid, str(out / name))
        if (out / "best_model").is_dir():
            client.log_artifacts(pid, str(out / "best_model"), artifact_path="best_model")
        client.set_terminated(pid)
    return pid


def _best_of_table(rows: list[dict]) -> tuple[dict, dict]:
    """The best row (the report's rule): its scores as the parent's metrics, its head and features as tags."""
    best = next((r for r in rows if r.get("versus_best") == "best"), None)
    if best is None:
        return {}, {}
    values = {f"best_{k}": best[k] for k in ("val_accuracy", "accuracy") if _number(best.get(k))}
    return values, {"best.head": best["head"], "best.features": best.get("features")}


def _experiment(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _log_child(client, experiment: str, parent: str, child: dict, step: int, entities) -> None:
    """One child run of ``parent``: ``child``'s name, params, metrics (``history``: a value a step), tags."""
    Metric, Param, RunTag = entities
    tags = {"mlflow.parentRunId": parent, "featcache.row": str(step), **child["tags"]}
    run = client.create_run(experiment, run_name=child["name"], tags={k: str(v) for k, v in tags.items()})
    ts = int(run.info.start_time)
    metrics = [Metric(k, float(v), ts, 0) for k, v in child["metrics"].items() if _number(v)]
    metrics += [Metric(k, float(v), ts, i) for k, vs in child.get("history", {}).items() for i, v in enumerate(vs)]
    client.log_batch(run.info.run_id, metrics=metrics,
                     params=[Param(k, _value(v)) for k, v in child["params"].items() if v is not None])
    client.set_terminated(run.info.run_id, "FINISHED" if child["ok"] else "FAILED")


def _chosen(row: dict) -> dict:
    """The head's settings: its given params, then those its selection chose, as ``head.NAME``."""
    return {f"head.{k}": v for k, v in {**(row.get("params") or {}), **(row.get("best_params") or {})}.items()}


def _row_run(row: dict, settings: dict, layers: dict) -> dict:
    """A row of the table of heads as a child run."""
    params = {"backbone": row.get("backbone"), "layer": "pixels" if row.get("baseline") else layers.get(row["cache"]),
              "features": row.get("features"), "head": row["head"], "target": row.get("target") or "label",
              "repeats": row.get("repeats", settings.get("repeats")), "seed": settings.get("seed"),
              "cv": settings.get("cv"), "cache_key": row.get("cache_key"), "settings": row.get("settings"),
              **_chosen(row)}
    values = {k: row[k] for k in ROW_METRICS if _number(row.get(k))}
    for name in ("accuracy", "macro_f1"):
        ci = row.get(f"{name}_ci")
        if ci:
            values[f"{name}_ci_low"], values[f"{name}_ci_high"] = float(ci[0]), float(ci[1])
    if _number(row.get("versus_best_p")):
        values["versus_best_p"] = row["versus_best_p"]
    tags = {"verdict": row.get("versus_best") or "", "status": row.get("status", ""),
            "baseline": bool(row.get("baseline")), **({"error": _value(row["error"])} if row.get("error") else {})}
    return {"name": f"{row.get('features')} {row['head']}", "params": params, "metrics": values, "tags": tags,
            "ok": row.get("status") == "ok"}


def _shot_run(row: dict) -> dict:
    """A ``--shots`` row (one head, backbone and k; the mean and sd over its draws) as a child run."""
    params = {k: row.get(k) for k in ("backbone", "features", "head", "shots", "draws", "seed", "cache")}
    metrics = {k: row.get(k) for k in ("accuracy", "accuracy_sd", "n_train", "n_val", "n_test", "seconds")}
    return {"name": f"{row['features']} {row['head']} {row['shots']}-shot", "params": params, "metrics": metrics,
            "history": {"accuracy_draw": row.get("accuracies") or []}, "tags": {"status": "ok"}, "ok": True}


def _target_run(row: dict, layers: dict) -> dict:
    """A ``--target`` row (one target and head) as a child run: its kind's metrics as target_results.csv names
    them, with their ``_lo``/``_hi`` bounds."""
    from .select import SELECT_METRIC
    from .targets import METRICS

    kind = row["kind"]
    features = row.get("features")
    layer = None if features == "-" else "pixels" if row.get("baseline") else next(iter(layers.values()), None)
    params = {"target": row["target"], "kind": kind, "head": row["head"], "features": features, "layer": layer,
              "n_train": row.get("n_train"), **_chosen(row)}
    cells = [c for k in METRICS[kind] for c in (k, f"{k}_lo", f"{k}_hi")]
    cells += [f"val_{SELECT_METRIC[kind]}", "fit_seconds", "seconds", "rows_test"]
    tags = {"verdict": "best" if row.get("best") else "", "status": row.get("status") or "",
            "baseline": bool(row.get("baseline")), **({"error": _value(row["error"])} if row.get("error") else {})}
    return {"name": f"{row['target']} {features} {row['head']}", "params": params,
            "metrics": {c: row.get(c) for c in cells}, "tags": tags, "ok": row.get("status") == "ok"}
