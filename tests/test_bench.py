"""The benchmark: every head, honest protocol, failures and time-outs kept, resumable, a real report."""

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.heads import HEADS
from featcache.model_dir import read_card

from conftest import REPO, run_here


def _embedded_images(html_text):
    return [Image.open(io.BytesIO(base64.b64decode(m))) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html_text)]


@pytest.mark.slow
def test_bench_all_heads_writes_a_report_with_plots(fm_lite, tmp_path):
    out = tmp_path / "report"
    proc = run_here("bench", fm_lite.path, "--n-jobs", "2", "--timeout", "90", "--out", out, "--quiet",
                         timeout=900)
    rows = json.loads((out / "results.json").read_text())
    heads = {r["head"] for r in rows if not r["baseline"]}
    assert heads == set(HEADS)
    assert all(r["status"] in ("ok", "timed out") for r in rows), [(r["head"], r.get("error")) for r in rows]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= 10
    for r in ok:
        assert 0 <= r["accuracy"] <= 1 and r["fit_seconds"] >= 0 and r["cache_key"] == fm_lite.key
    baseline = [r for r in rows if r["baseline"]]
    assert baseline and baseline[0]["features"] == "pixels 16x16" and baseline[0]["status"] == "ok"
    # linear probe: C chosen on validation from the log grid
    logreg = next(r for r in ok if r["head"] == "logreg" and not r["baseline"])
    half_decades = 2 * np.log10(logreg["best_params"]["C"])  # the log grid 1e-6..1e6, refined to half decades
    assert abs(half_decades - round(half_decades)) < 1e-9 and -13 <= half_decades <= 13
    assert logreg["val_accuracy"] > 0.5
    csv_text = (out / "results.csv").read_text()
    assert csv_text.splitlines()[0].startswith("cache,backbone,features,head")
    assert len(csv_text.splitlines()) == len(rows) + 1
    html_text = (out / "report.html").read_text()
    images = _embedded_images(html_text)
    assert len(images) >= 3  # accuracy vs time, confusion matrix, accuracy per backbone (pixels vs features)
    for im in images:
        arr = np.asarray(im.convert("L"))
        assert im.width > 300 and im.height > 200
        assert arr.std() > 10  # a drawn plot, not a blank canvas
    assert (out / "report.md").read_text().count("| ") > len(rows)
    best = featcache.predict(out / "best_model", fm_lite.path)
    assert len(best) == len(fm_lite)
    assert "benchmark" in proc.stdout


def test_a_failing_head_is_a_row_and_the_rest_survive(fm_lite, tmp_path):
    # a valid parameter that this cache cannot satisfy (more neighbours than rows) fails inside the head's process
    rows = featcache.bench(fm_lite.path, ["logreg", "knn"], params={"knn": {"n_neighbors": 100_000}}, out=tmp_path,
                           baseline_heads=(), save_best=False)
    by_head = {r["head"]: r for r in rows}
    assert by_head["knn"]["status"] == "failed" and "n_neighbors" in by_head["knn"]["error"]
    assert by_head["logreg"]["status"] == "ok"
    assert "failed" in (tmp_path / "report.html").read_text()


def test_a_head_over_its_budget_is_timed_out(fm_lite, tmp_path):
    # 20,000 trees on 2,000 rows cannot finish in a second on any machine
    rows = featcache.bench(fm_lite.path, ["random_forest"], params={"random_forest": {"n_estimators": 20_000}},
                           timeout=1.0, out=tmp_path, baseline_heads=(), save_best=False)
    assert rows[0]["status"] == "timed out" and "1 s budget" in rows[0]["error"]


@pytest.mark.slow
def test_killed_bench_keeps_finished_rows_and_completes(fm_lite, tmp_path):
    heads = "gaussian_nb,lda,sgd,ridge,knn,logreg"
    args = [sys.executable, "-m", "featcache", "bench", str(fm_lite.path), "--heads", heads, "--out",
            str(tmp_path), "--quiet", "--baseline-heads", ""]
    proc = subprocess.Popen(args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    results = tmp_path / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its head processes
    proc.wait()
    before = [json.loads(line) for line in results.read_text().splitlines()]
    assert 2 <= len(before) < 6
    run_here("bench", fm_lite.path, "--heads", heads, "--out", tmp_path, "--quiet", "--baseline-heads", "")
    after = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["head"] for r in after) == sorted(heads.split(","))
    kept = {r["settings"]: r for r in after}
    for r in before:  # finished rows were kept as they were, not recomputed
        assert kept[r["settings"]]["fit_seconds"] == r["fit_seconds"]
    assert len(results.read_text().splitlines()) == 6


def test_the_best_head_is_chosen_by_validation_accuracy_alone():
    from featcache.report import best_row

    rows = [
        {"head": "a", "status": "ok", "baseline": False, "val_accuracy": 0.90, "accuracy": 0.80},
        {"head": "b", "status": "ok", "baseline": False, "val_accuracy": 0.90, "accuracy": 0.95},  # tie, better test
        {"head": "c", "status": "ok", "baseline": True, "val_accuracy": 0.99, "accuracy": 0.99},  # raw pixels
        {"head": "d", "status": "failed", "baseline": False},
    ]
    assert best_row(rows)["head"] == "a"  # test accuracy never breaks the tie
    assert best_row(rows[2:]) is None


def test_best_model_is_refit_like_its_row_and_keras_rows_fit_once(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(60) % 2
    images[labels == 1] //= 2  # learnable
    cache = featcache.extract(images, labels=labels, out=tmp_path / "c", backbone="mobilenet_v2", weights="none",
                              image_size=32)
    rows = featcache.bench(cache, ["lda", "keras_linear"], out=tmp_path / "r", baseline_heads=(),  # a Cache object
                           params={"keras_linear": {"epochs": 3}})
    keras_row = next(r for r in rows if r["head"] == "keras_linear")
    assert keras_row["status"] == "ok" and keras_row["select_seconds"] == 0.0  # its one fit is its selection
    best = read_card(tmp_path / "r" / "best_model")
    chosen = next(r for r in rows if r["head"] == best["head"])
    assert best["fit_splits"] == chosen["fit_splits"] == ["train"]  # neither has a grid: one fit, on train
    assert chosen["n_train"] == best["splits"]["rows"]["train"]


@pytest.fixture(scope="module")
def two_class_cache(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (90, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(90) % 2
    images[labels == 1] //= 2  # learnable
    return featcache.extract(images, labels=labels, out=tmp_path_factory.mktemp("c") / "c", backbone="mobilenet_v2",
                             weights="none", image_size=32)


def test_each_kind_of_head_is_selected_and_fitted_by_its_protocol(two_class_cache, tmp_path):
    from featcache.bench import GRIDS

    rows = {r["head"]: r for r in featcache.bench(two_class_cache, ["logreg", "ridge", "linear_svm", "lda"],
                                                  out=tmp_path, baseline_heads=(), save_best=False)}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    from featcache.train import split_masks

    n = {s: int(m.sum()) for s, m in split_masks(two_class_cache).items()}
    # a regularisation path chosen on val, refit on train+val
    assert rows["logreg"]["best_params"]["C"] in GRIDS["logreg"]["C"]
    assert rows["logreg"]["fit_splits"] == ["train", "val"] and rows["logreg"]["n_train"] == n["train"] + n["val"]
    # fitted on train, calibrated on val (no refit); ridge's alpha from its GCV over the grid
    for head in ("ridge", "linear_svm"):
        assert rows[head]["fit_splits"] == ["train"] and rows[head]["n_train"] == n["train"]
        assert "calibrated on val" in rows[head]["note"]
        assert rows[head]["best_params"]["alpha"] in GRIDS[head]["alpha"]
    # no grid: one fit on train, nothing spent on selection
    assert rows["lda"]["fit_splits"] == ["train"] and rows["lda"]["select_seconds"] == 0.0


def test_a_sweeps_head_process_takes_task_after_task_and_one_out_of_time_is_replaced(two_class_cache):
    import dataclasses

    from featcache.bench import Task, run_task
    from featcache.bench.process import REUSE_PROCESSES, HeadPool

    if not REUSE_PROCESSES:
        pytest.skip("head processes take one task each where a task's peak memory cannot be reset (not Linux)")
    nb = Task(str(two_class_cache.path), two_class_cache.key, "gaussian_nb", {}, None, False,
              rows_key=two_class_cache.rows_key)
    lda = dataclasses.replace(nb, head="lda")
    slow = dataclasses.replace(nb, head="random_forest", params={"n_estimators": 20_000})
    pool = HeadPool()
    try:
        first, second = pool.run(nb, None), pool.run(lda, None)
        (head,) = pool._idle  # one process took both tasks
        timed = pool.run(slow, 1.0)
        assert timed["status"] == "timed out" and not pool._idle and not head.alive  # killed, and not handed on
        after = pool.run(nb, None)
        (fresh_head,) = pool._idle
        assert fresh_head is not head
    finally:
        pool.close()
    assert head.proc.returncode is not None and fresh_head.proc.returncode is not None
    for got, task in ((first, nb), (second, lda), (after, nb)):  # a row is the same as from a fresh process
        fresh = run_task(task, None)
        assert got["status"] == fresh["status"] == "ok", (got.get("error"), fresh.get("error"))
        assert got["accuracy"] == fresh["accuracy"] and got["test_predictions"] == fresh["test_predictions"]
        assert got["peak_memory_mb"] is not None


def test_each_head_gets_its_share_of_the_cores():
    from featcache.bench import _cores_per_head

    cpus = os.cpu_count()
    assert _cores_per_head(1, 5, "threading") == cpus
    assert _cores_per_head(-1, 5, "threading") == 1 or cpus > 5
    assert _cores_per_head(2, 1, "threading") == cpus  # one head left: all of them
    assert _cores_per_head(2, 5, "ray") == 0  # Ray places its tasks itself


def test_train_shows_a_keras_heads_epochs_on_stderr(two_class_cache, tmp_path, capfd):
    from featcache.cli import main

    # in-process (capfd reads the real file descriptors): saves two TensorFlow imports
    args = ["train", str(two_class_cache.path), "--head", "keras_linear", "--param", "epochs=2",
            "--param", "patience=5"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    proc = capfd.readouterr()
    assert "Epoch 1/2" in proc.err and "Epoch 2/2" in proc.err and "Epoch" not in proc.out
    assert main([*args, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    quiet = capfd.readouterr()
    assert "Epoch" not in quiet.err + quiet.out


def test_bench_takes_your_own_estimator_from_a_notebook_style_script(two_class_cache, tmp_path):
    script = tmp_path / "notebook.py"  # no __main__ guard: each head's process must not re-run it
    script.write_text(
        "import featcache\n"
        "from sklearn.linear_model import RidgeClassifier\n"
        f"rows = featcache.bench({str(two_class_cache.path)!r}, heads=['logreg', RidgeClassifier()],\n"
        f"                       out={str(tmp_path / 'r')!r}, baseline_heads=(), learning_curve=())\n"
        "print('ROWS', len(rows))\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ROWS 2") == 1  # the script ran once, not once per head
    rows = {r["head"]: r for r in json.loads((tmp_path / "r" / "results.json").read_text())}
    assert set(rows) == {"logreg", "custom:RidgeClassifier"}
    own = rows["custom:RidgeClassifier"]
    assert own["status"] == "ok" and 0 <= own["accuracy"] <= 1, own
    assert own["fit_splits"] == ["train"] and own["select_seconds"] == 0.0  # no grid: one fit on train
    assert own["estimator"] == "RidgeClassifier()"


def test_your_own_estimators_resume_by_their_parameters_and_can_be_the_best_model(two_class_cache, tmp_path):
    from sklearn.linear_model import RidgeClassifier

    out = tmp_path / "r"
    kw = dict(out=out, baseline_heads=(), learning_curve=(0.5,), leakage=False)
    rows = featcache.bench(two_class_cache, [RidgeClassifier(), RidgeClassifier(alpha=10.0)], **kw)
    assert [r["head"] for r in rows] == ["custom:RidgeClassifier", "custom:RidgeClassifier#2"]
    assert all(r["status"] == "ok" for r in rows), rows
    card = read_card(out / "best_model")  # the best head is a user's estimator: refit through train(head=est)
    assert card["head"] == "custom:RidgeClassifier" and "RidgeClassifier" in card["estimator"]
    assert len(featcache.predict(out / "best_model", two_class_cache.path)) == len(two_class_cache)
    lines = (out / "results.jsonl").read_text().splitlines()
    again = featcache.bench(two_class_cache, [RidgeClassifier(), RidgeClassifier(alpha=20.0)], **kw)
    new = (out / "results.jsonl").read_text().splitlines()[len(lines):]
    assert [json.loads(line)["head"] for line in new] == ["custom:RidgeClassifier#2"]  # only the changed one ran
    assert again[0]["settings"] == rows[0]["settings"] and again[1]["settings"] != rows[1]["settings"]


def test_a_bad_estimator_head_is_one_line_naming_it_before_any_work(two_class_cache, tmp_path):
    from sklearn.linear_model import LinearRegression
    from sklearn.svm import SVC

    class Unclonable(SVC):
        def __init__(self, C=1.0):
            super().__init__(C=C * 2)  # get_params then disagrees with what was given: clone refuses

    for bad, says in [(LinearRegression(), "LinearRegression is a regressor"), (SVC, "not the class SVC"),
                      (object(), "got object"), (Unclonable(), "custom:Unclonable")]:
        with pytest.raises(featcache.FeatcacheError, match=says) as err:
            featcache.bench(two_class_cache, ["logreg", bad], out=tmp_path / "r", baseline_heads=())
        assert "\n" not in str(err.value)
        assert not (tmp_path / "r").exists()
