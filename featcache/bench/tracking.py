"""Log a bench to MLflow: one parent run per invocation, one nested child run per row.

The parent run holds the bench's settings as params and the report
(report.html/md, results.csv/json) and ``best_model/`` as artifacts; each row
is a child run (MLflow's ``mlflow.parentRunId`` tag, what ``start_run(nested=True)``
sets) with the row's backbone, layer, head, head params, target, repeats,
seed and cache key as params, its validation mean and sd, test accuracy and
its 95% interval bounds, macro-F1 and timings as metrics and its verdict as a
tag. MLflow is imported only here, and only when ``mlflow=`` is given.
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
        client.log_batch(pid, params=[Param(k, _value(v)) for k, v in sorted(settings.items()) if v is not None])
        _log_best(client, pid, rows, (Metric, RunTag))
        for i, row in enumerate(rows):
            _log_row(client, experiment, pid, row, settings, layers, i, (Metric, Param, RunTag))
        for name in REPORT_FILES:
            if (out / name).is_file():
                client.log_artifact(pid, str(out / name))
        if (out / "best_model").is_dir():
            client.log_artifacts(pid, str(out / "best_model"), artifact_path="best_model")
        client.set_terminated(pid)
    return pid


def _log_best(client, pid: str, rows: list[dict], entities) -> None:
    """The best row (the report's rule) on the parent run: its head and features as tags, its scores as metrics."""
    Metric, RunTag = entities
    best = next((r for r in rows if r.get("versus_best") == "best"), None)
    if best is None:
        return
    values = {f"best_{k}": best[k] for k in ("val_accuracy", "accuracy") if isinstance(best.get(k), (int, float))}
    client.log_batch(pid, metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in values.items()],
                     tags=[RunTag("best.head", best["head"]), RunTag("best.features", str(best.get("features")))])


def _experiment(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def _log_row(client, experiment: str, parent: str, row: dict, settings: dict, layers: dict, step: int,
             entities) -> None:
    """One row as a finished child run of ``parent``."""
    Metric, Param, RunTag = entities
    params = {"backbone": row.get("backbone"), "layer": "pixels" if row.get("baseline") else layers.get(row["cache"]),
              "features": row.get("features"), "head": row["head"], "target": row.get("target") or "label",
              "repeats": row.get("repeats", settings.get("repeats")), "seed": settings.get("seed"),
              "cv": settings.get("cv"), "cache_key": row.get("cache_key"), "settings": row.get("settings")}
    chosen = {**(row.get("params") or {}), **(row.get("best_params") or {})}
    params.update({f"head.{k}": v for k, v in chosen.items()})
    values = {k: row[k] for k in ROW_METRICS if isinstance(row.get(k), (int, float)) and not isinstance(row[k], bool)}
    for name in ("accuracy", "macro_f1"):
        ci = row.get(f"{name}_ci")
        if ci:
            values[f"{name}_ci_low"], values[f"{name}_ci_high"] = float(ci[0]), float(ci[1])
    if isinstance(row.get("versus_best_p"), (int, float)):
        values["versus_best_p"] = row["versus_best_p"]
    tags = {"mlflow.parentRunId": parent, "verdict": row.get("versus_best") or "", "status": row.get("status", ""),
            "baseline": str(bool(row.get("baseline")))}
    child = client.create_run(experiment, run_name=f"{row.get('features')} {row['head']}", tags=tags)
    ts = int(child.info.start_time)
    client.log_batch(child.info.run_id,
                     metrics=[Metric(k, float(v), ts, 0) for k, v in values.items()],
                     params=[Param(k, _value(v)) for k, v in params.items() if v is not None],
                     tags=[RunTag("featcache.row", str(step))] + ([RunTag("error", _value(row["error"]))]
                                                                 if row.get("error") else []))
    client.set_terminated(child.info.run_id, "FINISHED" if row.get("status") == "ok" else "FAILED")
