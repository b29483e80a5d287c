"""A pipeline with three targets on one cache: attached from a table, a head per target, one bench; a re-run
after one target's column changed trains and benches only that target and keeps the others."""

import csv
import sys
from pathlib import Path

import pytest

from featcache.errors import FeatcacheError
from featcache.pipeline import run

from conftest import TINY_PIPE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.make_tasks import make_task  # noqa: E402

PIPE = TINY_PIPE + """[[targets]]
file = "{table}"
[[heads]]
head = "ridge"
target = "zoom"
[[heads]]
head = "ridge"
target = "x"
[bench]
target = ["zoom", "x", "y"]
heads = ["ridge"]
baseline_heads = ["ridge"]
"""


def _rows(report):
    with open(report / "target_results.csv") as f:
        return list(csv.DictReader(f))


def test_three_targets_one_cache_rerun_after_one_table_change(tmp_path, fashion_mnist_available, capfd):
    data = tmp_path / "zoom"
    make_task("zoom", data, limit=90, data_dir=fashion_mnist_available)
    (tmp_path / "pipelines").mkdir()
    path = tmp_path / "pipelines" / "p.toml"
    path.write_text(PIPE.format(source=data, table=data / "targets.csv"))
    result = run(path, progress=False)
    report = tmp_path / "out" / "t" / "report"
    first = _rows(report)
    assert sorted({r["target"] for r in first}) == ["x", "y", "zoom"]
    assert {r["features"] for r in first} == {"cache", "pixels 16x16", "-"}
    assert set(result["models"]) == {"zoom-ridge", "x-ridge"}
    html = (report / "report.html").read_text()
    assert all(f"<h2>{n} (regression), test split</h2>" in html for n in ("zoom", "x", "y"))
    capfd.readouterr()

    table = list(csv.DictReader(open(data / "targets.csv")))
    for r in table:  # x becomes 1 - x: a new target value for every row, the same rows
        r["x"] = f"{1 - float(r['x']):.4f}"
    with open(data / "targets.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(table[0]))
        w.writeheader()
        w.writerows(table)
    run(path, progress=False)
    said = capfd.readouterr().err
    assert "changed: x" in said and "train zoom-ridge: up to date" in said
    assert "x-ridge: trained" in said and "re-benching only that one (kept: zoom, y)" in said
    second = _rows(report)
    keep = lambda rows, n: [{k: v for k, v in r.items()} for r in rows if r["target"] == n]  # noqa: E731
    assert keep(second, "zoom") == keep(first, "zoom") and keep(second, "y") == keep(first, "y")
    assert keep(second, "x") != keep(first, "x")
    assert (report / "report.html").read_text().count("<h2>zoom (regression), test split</h2>") == 1
    run(path, progress=False)
    assert "report.html: up to date" in capfd.readouterr().err


def test_pipeline_targets_are_checked_before_any_work(tmp_path):
    (tmp_path / "pipelines").mkdir()
    path = tmp_path / "pipelines" / "p.toml"
    path.write_text(PIPE.format(source=tmp_path, table=tmp_path / "nope.csv"))
    with pytest.raises(FeatcacheError, match=r"targets\[0\]\.file = .*no such file"):
        run(path, progress=False)
    (tmp_path / "t.csv").write_text("id,zoom\n")
    path.write_text(PIPE.format(source=tmp_path, table=tmp_path / "t.csv").replace('head = "ridge"\ntarget = "x"',
                                                                                   'head = "ridgee"\ntarget = "x"'))
    with pytest.raises(FeatcacheError, match=r"heads\[1\]\.head: unknown head 'ridgee'"):
        run(path, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_classification_target_head_is_up_to_date_on_a_rerun(tmp_path, fashion_mnist_available, capfd):
    """[[heads]] for group (a classification target): trained once, then up to date (its card records the
    target's sha256, which the re-run compares)."""
    import json

    data = tmp_path / "multi"
    make_task("multi", data, limit=60, data_dir=fashion_mnist_available)
    (tmp_path / "pipelines").mkdir()
    path = tmp_path / "pipelines" / "p.toml"
    text = PIPE.format(source=data, table=data / "targets.csv").split("[[heads]]")[0]
    path.write_text(text + '[[heads]]\nhead = "logreg"\ntarget = "group"\n')
    result = run(path, progress=False)
    card = json.loads((Path(result["models"]["group-logreg"]) / "card.json").read_text())
    assert card["target"]["name"] == "group" and card["class_names"] == sorted(set(card["class_names"]))
    capfd.readouterr()
    run(path, progress=False)
    assert "train group-logreg: up to date" in capfd.readouterr().err
