"""bench --mlflow: the bench read back from MLflow's real file store with MLflow's own client."""

import csv
import json
import shutil
import sys

import numpy as np
import pytest

import featcache
from featcache.cli import build_parser
from featcache.errors import FeatcacheError

mlflow = pytest.importorskip("mlflow")


def test_bench_runs_read_back_equal_results_json(small_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "featcache-test")
    uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "report"
    rows = featcache.bench(small_cache, ["logreg", "knn_cosine"], out=out, baseline_heads=(), repeats=2,
                           learning_curve=None, leakage=False, mlflow=uri)
    saved = {r["head"]: r for r in json.loads((out / "results.json").read_text())}
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("featcache-test").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == len(rows) == 2
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.data.params["repeats"] == "2" and json.loads(parent.data.params["heads"]) == ["logreg", "knn_cosine"]
    for child in children:
        p, m, row = child.data.params, child.data.metrics, saved[child.data.params["head"]]
        assert p["backbone"] == row["backbone"] and p["cache_key"] == row["cache_key"] and p["layer"] == "avg"
        assert p["repeats"] == "2" and p["seed"] == "0" and p["target"] == "label"
        assert all(p[f"head.{k}"] == str(v) for k, v in row["best_params"].items())
        assert m["val_accuracy"] == row["val_accuracy"] and m["val_accuracy_sd"] == row["val_accuracy_sd"]
        assert m["accuracy"] == row["accuracy"] and m["fit_seconds"] == row["fit_seconds"]
        assert [m["accuracy_ci_low"], m["accuracy_ci_high"]] == row["accuracy_ci"]
        assert child.data.tags["verdict"] == row["versus_best"]
    best = next(r for r in saved.values() if r["versus_best"] == "best")
    assert parent.data.tags["best.head"] == best["head"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "results.csv", "results.json", "best_model"} <= artifacts
    assert any(a.path.endswith("card.json") for a in client.list_artifacts(parent.info.run_id, "best_model"))


def _runs(uri: str, experiment: str = "featcache-test"):
    """(the parent run, its children) of the one bench logged to ``uri``."""
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return client, parents[0], children


def test_shots_runs_read_back_a_child_per_head_and_k(small_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "featcache-test")
    uri = (tmp_path / "mlruns").as_uri()
    rows = featcache.bench(small_cache, ["logreg", "knn_cosine"], shots=[1, 2], shot_draws=2, out=tmp_path / "r",
                           mlflow=uri)
    client, parent, children = _runs(uri)
    assert json.loads(parent.data.params["shots"]) == [1, 2] and parent.data.params["shot_draws"] == "2"
    by = {(c.data.params["head"], c.data.params["shots"]): c for c in children}
    assert len(children) == len(rows) == 4
    for row in rows:
        child = by[(row["head"], str(row["shots"]))]
        assert child.data.params["backbone"] == row["backbone"] and child.data.params["features"] == row["features"]
        assert child.data.metrics["accuracy"] == row["accuracy"]
        assert child.data.metrics["accuracy_sd"] == row["accuracy_sd"]
        assert child.data.metrics["n_test"] == row["n_test"]
        draws = client.get_metric_history(child.info.run_id, "accuracy_draw")
        assert [m.value for m in sorted(draws, key=lambda m: m.step)] == row["accuracies"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"shots.json", "shots.csv", "shots.md", "shots.png"} <= artifacts


def test_target_runs_read_back_with_their_kinds_metrics(small_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "featcache-test")
    shutil.copytree(small_cache.path, tmp_path / "cache")
    cache = featcache.open_cache(tmp_path / "cache")
    labels = cache.labels()
    shade = labels * 10.0 + np.random.default_rng(1).normal(0, 0.1, len(labels))
    featcache.attach_targets(cache, {"id": cache.ids(), "shade": [float(v) for v in shade]})
    tags = ["|".join(t for t, on in (("odd", v % 2), ("dark", v >= 1)) if on) or "|" for v in labels]
    featcache.attach_targets(cache, {"id": cache.ids(), "tags": tags})
    uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "r"
    rows = featcache.bench(cache, None, target=["shade", "tags"], out=out, baseline_heads=(), mlflow=uri)
    with open(out / "target_results.csv") as f:
        saved = {(r["target"], r["head"]): r for r in csv.DictReader(f)}
    client, parent, children = _runs(uri)
    assert len(children) == len(rows) == len(saved)
    assert json.loads(parent.data.params["target"]) == ["shade", "tags"]
    for child in children:
        p, m = child.data.params, child.data.metrics
        row = saved[(p["target"], p["head"])]
        names = ("r2", "mae", "rmse", "spearman") if p["kind"] == "regression" else ("map", "micro_f1", "macro_f1")
        assert names[0] in m
        for k in [c for n in names for c in (n, f"{n}_lo", f"{n}_hi") if row[c] != ""]:
            assert m[k] == pytest.approx(float(row[k]), nan_ok=True), k
        assert child.data.tags["verdict"] == ("best" if row["best"] == "True" else "")
        best = next(r for r in saved.values() if r["target"] == p["target"] and r["best"] == "True")
        assert parent.data.tags[f"best.{p['target']}.head"] == best["head"]
    assert {"target_results.csv", "targets.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_the_flag_bare_and_with_a_uri():
    parse = build_parser().parse_args
    assert parse(["bench", "c"]).mlflow is None
    assert parse(["bench", "c", "--mlflow"]).mlflow is True
    assert parse(["bench", "c", "--mlflow", "http://host:5000"]).mlflow == "http://host:5000"


def test_missing_mlflow_is_one_line_naming_the_extra(small_cache, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed: import mlflow fails
    with pytest.raises(FeatcacheError, match=r"pip install 'featcache\[mlflow\]'$"):
        featcache.bench(small_cache, ["logreg"], out=tmp_path / "r", mlflow=True)
    with pytest.raises(FeatcacheError, match=r"pip install 'featcache\[mlflow\]'$"):
        featcache.bench(small_cache, ["logreg"], out=tmp_path / "r", mlflow=True, shots=[1])
    assert not (tmp_path / "r").exists()
