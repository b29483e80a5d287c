"""bench --mlflow: the bench read back from MLflow's real file store with MLflow's own client."""

import json
import sys

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


def test_the_flag_bare_and_with_a_uri():
    parse = build_parser().parse_args
    assert parse(["bench", "c"]).mlflow is None
    assert parse(["bench", "c", "--mlflow"]).mlflow is True
    assert parse(["bench", "c", "--mlflow", "http://host:5000"]).mlflow == "http://host:5000"


def test_missing_mlflow_is_one_line_naming_the_extra(small_cache, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed: import mlflow fails
    with pytest.raises(FeatcacheError, match=r"pip install 'featcache\[mlflow\]'$"):
        featcache.bench(small_cache, ["logreg"], out=tmp_path / "r", mlflow=True)
    with pytest.raises(FeatcacheError, match="does not take --shots"):
        featcache.bench(small_cache, ["logreg"], out=tmp_path / "r", mlflow=True, shots=[1])
    assert not (tmp_path / "r").exists()
