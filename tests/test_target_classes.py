"""A classification target other than ``label`` (the coarse garment group of data/make_tasks.py's ``multi`` set)
works wherever the source's own label does: read as the labels, bench with every classification head and the
pixel baseline, train, predict and export; a combination that cannot run is one line, exit 2."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.errors import FeatcacheError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.make_tasks import GROUPS, make_task  # noqa: E402
from tests.conftest import TINY, run_here  # noqa: E402


@pytest.fixture(scope="module")
def multi(tmp_path_factory, fashion_mnist_available):
    """150 garments of the ``multi`` set (class folders: ``label``), targets ``group`` and ``count`` attached."""
    root = tmp_path_factory.mktemp("multi")
    make_task("multi", root / "png", limit=150, data_dir=fashion_mnist_available)
    cache = featcache.extract(str(root / "png"), out=root / "cache", **TINY)
    featcache.attach_targets(cache, root / "png" / "targets.csv")
    return root, cache


def test_a_classification_target_read_as_the_labels(multi):
    _, cache = multi
    group = cache.target("group")
    g = featcache.open_cache(cache.path, target="group")
    assert g.class_names == list(group.names) == sorted(set(GROUPS))
    assert np.array_equal(g.labels(), group.values)
    assert g.rows_key != cache.rows_key  # a bench row or card of label is never taken for group's
    assert np.array_equal(g.target("label").values, cache.labels())  # label stays the source's own
    b = g.read_rows([0, 1, 2])
    assert np.array_equal(b.labels, group.values[:3])
    with pytest.raises(FeatcacheError, match="count.* is regression; only a classification"):
        featcache.open_cache(cache.path, target="count").labels()


def test_bench_group_runs_every_classification_head_and_pixels(multi, tmp_path):
    _, cache = multi
    out = tmp_path / "r"
    run_here("bench", str(cache.path), "--target", "group,count", "--heads", "logreg,knn,ridge",
             "--out", str(out), "--quiet")
    rows = list(csv.DictReader(open(out / "target_results.csv")))
    group = [r for r in rows if r["target"] == "group"]
    assert [(r["head"], r["features"]) for r in group] == [
        ("logreg", "cache"), ("knn", "cache"), ("ridge", "cache"), ("logreg", "pixels 16x16"), ("majority", "-")]
    assert sum(r["best"] == "True" for r in group) == 1 and all(r["accuracy_lo"] for r in group if r["status"] == "ok")
    count = [(r["head"], r["features"]) for r in rows if r["target"] == "count"]
    assert count == [("knn", "cache"), ("ridge", "cache"), ("ridge", "pixels 16x16"), ("train_mean", "-")]
    # group's own full report: its rows learnt the group (five classes), its best model says so
    card = json.loads((out / "target_group" / "best_model" / "card.json").read_text())
    assert card["target"]["name"] == "group" and card["class_names"] == list(cache.target("group").names)
    table = list(csv.DictReader(open(out / "target_group" / "results.csv")))
    assert len(table) == 4
    # majority: the train split's most frequent group on every test row
    g = cache.with_target("group")
    masks = featcache.split_masks(g)
    top = np.bincount(g.labels()[masks["train"]]).argmax()
    majority = next(r for r in group if r["head"] == "majority")
    assert float(majority["accuracy"]) == pytest.approx(np.mean(g.labels()[masks["test"]] == top))


def test_train_predict_export_group(multi, tmp_path):
    root, cache = multi
    m_group, m_count = tmp_path / "m_group", tmp_path / "m_count"
    run_here("train", str(cache.path), "--head", "logreg", "--target", "group", "--out", str(m_group))
    res = featcache.train(cache, "ridge", target="count", out=m_count)
    card = json.loads((m_group / "card.json").read_text())
    assert card["target"]["kind"] == "classification" and card["target"]["sha256"]
    assert card["class_names"] == list(cache.target("group").names)
    # predict on the images: the classes the head gives the cached features, named as groups
    from joblib import load

    pipe = load(m_group / "head.joblib")
    X = cache.features().reshape(len(cache), -1).astype(np.float32)
    want = [card["class_names"][c] for c in pipe.predict(X)]
    got = featcache.predict(m_group, str(root / "png"), return_as="frame")
    by_id = dict(zip(got["id"], got["class"]))
    assert [by_id[i] for i in cache.ids()] == want
    assert {f"p_{n}" for n in card["class_names"]} <= set(got.columns)
    # one model, two named outputs: group's probabilities and count's value
    import keras

    path = featcache.export([m_group, m_count], tmp_path / "both.keras")
    info = featcache.export_info(path)
    outs = {o["name"]: o for o in info["outputs"]}
    assert outs["group"]["kind"] == "classification" and outs["group"]["names"] == card["class_names"]
    assert outs["count"]["kind"] == "regression"
    images = np.stack([np.asarray(Image.open(root / "png" / i).convert("RGB")) for i in cache.ids()[:8]])
    y = keras.models.load_model(path).predict(images, verbose=0)
    alone = {t: keras.models.load_model(featcache.export(m, tmp_path / f"{t}.keras")).predict(images, verbose=0)
             for t, m in (("group", m_group), ("count", m_count))}
    assert np.allclose(y["group"], alone["group"], atol=1e-5) and np.allclose(y["group"].sum(1), 1, atol=1e-4)
    assert np.allclose(np.ravel(y["count"]), np.ravel(alone["count"]), atol=1e-5)
    # the images resized in the graph, not by Pillow as in the cache: the same classes for nearly all
    assert np.mean(y["group"].argmax(1) == pipe.predict(X[:8])) >= 0.75

def test_unsupported_combinations_are_one_line(multi, tmp_path):
    _, cache = multi
    for args, why in ((["--target", "count", "--heads", "logreg"], "logreg serves classification"),
                      (["--target", "count", "--backend", "ray"], "--backend ray does not apply to regression"),
                      (["--target", "count", "--cv", "3"], "--cv 3 does not apply"),
                      (["--target", "nope"], "no target 'nope'")):
        bad = run_here("bench", str(cache.path), *args, "--out", str(tmp_path / "x"), "--quiet", check=False)
        assert bad.returncode == 2, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and why in bad.stderr, bad.stderr
        assert not (tmp_path / "x").exists()  # refused before any work
    with pytest.raises(FeatcacheError, match="heads that do"):
        featcache.train(cache, "lda", target="count")


def test_few_shot_on_a_classification_target_and_refused_on_a_regression_one(multi, tmp_path):
    _, cache = multi
    rows = featcache.bench(cache, ["logreg"], shots=[1, 2], shot_draws=1, target=["group"], out=tmp_path / "s")
    assert {r["shots"] for r in rows} == {1, 2}
    assert all(r["n_train"] == r["shots"] * len(cache.target("group").names) for r in rows)  # k a group, 5 groups
    with pytest.raises(FeatcacheError, match=r"--shots takes one classification target.*count \(regression\)"):
        featcache.bench(cache, ["logreg"], shots=[1], target=["count"], out=tmp_path / "t")


@pytest.mark.ray
@pytest.mark.slow
def test_a_classification_target_benches_on_ray_as_in_threads(multi, tmp_path):
    """Each head's Ray task reopens the cache with the target as its labels: the same rows as in threads."""
    pytest.importorskip("ray")
    _, cache = multi
    g = cache.with_target("group")
    kw = dict(baseline_heads=(), learning_curve=None, leakage=False, save_best=False)
    here = featcache.bench(g, ["logreg", "knn"], out=tmp_path / "threads", **kw)
    there = featcache.bench(g, ["logreg", "knn"], out=tmp_path / "ray", backend="ray", **kw)
    assert [(r["head"], r["target"], r["accuracy"]) for r in there] == \
        [(r["head"], r["target"], r["accuracy"]) for r in here]
    assert all(r["status"] == "ok" for r in there)
