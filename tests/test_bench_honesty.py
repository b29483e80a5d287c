"""The benchmark's honesty: intervals and ties, the standard k-NN probe, the leakage check, per-row memory,
re-runs that retry what a larger budget may fix, and bench() from a script without a __main__ guard."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from sklearn.utils.estimator_checks import parametrize_with_checks

import featcache
from featcache.bench import GRIDS, bootstrap_intervals, retry_reason
from featcache.heads.knn_cosine import CosineKNNClassifier
from featcache.leakage import accuracy_with_and_without, near_duplicates

from conftest import REPO, TINY, run_featcache


def _images(n, seed=0):
    """Three learnable classes of random 16 px images (brightness per class)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(n) % 3
    images[labels == 1] //= 2
    images[labels == 2] //= 4
    return images, labels


# --------------------------------------------------------------------------- intervals


def test_bootstrap_intervals_bracket_the_score_and_narrow_with_more_rows():
    rng = np.random.default_rng(1)
    for n, width_below in ((100, 0.25), (10_000, 0.03)):
        t = rng.integers(0, 4, n)
        p = np.where(rng.random(n) < 0.8, t, (t + 1) % 4)  # 80% right
        ci = bootstrap_intervals(t, p)
        acc = float((t == p).mean())
        assert ci["accuracy_ci"][0] < acc < ci["accuracy_ci"][1]
        assert ci["accuracy_ci"][1] - ci["accuracy_ci"][0] < width_below
        from sklearn.metrics import f1_score

        f1 = f1_score(t, p, average="macro", zero_division=0)
        assert ci["macro_f1_ci"][0] < f1 < ci["macro_f1_ci"][1]
    assert bootstrap_intervals([1, 2, 3], [1, 2, 3]) == {"accuracy_ci": [1.0, 1.0], "macro_f1_ci": [1.0, 1.0]}


def test_bootstrap_drawn_in_bounded_chunks_gives_the_same_interval(monkeypatch):
    """A huge test split is resampled a few resamples at a time: the same interval, bounded memory."""
    import importlib

    stats = importlib.import_module("featcache.bench.stats")  # where the chunk size lives
    rng = np.random.default_rng(2)
    t = rng.integers(0, 10, 3000)
    p = np.where(rng.random(3000) < 0.7, t, rng.integers(0, 10, 3000))
    whole = bootstrap_intervals(t, p)
    monkeypatch.setattr(stats, "_BOOTSTRAP_CELLS", 3000 * 7)  # 7 resamples a chunk, the last one short
    assert bootstrap_intervals(t, p) == whole


@pytest.mark.slow
def test_each_row_reports_its_own_peak_memory(bench_rows):
    _, rows = bench_rows
    small, large = rows["gaussian_nb"]["peak_memory_mb"], rows["mlp"]["peak_memory_mb"]
    # a (2048, 2048) MLP holds ~4.2M weights in float64 plus Adam's two moments and gradients: over 100 MB
    assert large > small + 100, (small, large)
    assert small < 100


# --------------------------------------------------------------------------- the k-NN probe


@parametrize_with_checks([CosineKNNClassifier()])
def test_knn_cosine_passes_the_estimator_checks(estimator, check):
    check(estimator)


def test_knn_cosine_follows_dinov2s_weighted_vote():
    X = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    y = np.array([0, 1, 1, 0])
    q = np.array([[3.0, 0.3]])  # scaled: cosine ignores the norm
    clf = CosineKNNClassifier(n_neighbors=2, temperature=0.07).fit(X, y)
    cos = (X @ q[0]) / (np.linalg.norm(X, axis=1) * np.linalg.norm(q[0]))
    top = np.argsort(-cos)[:2]  # rows 0 (class 0) and 1 (class 1)
    w = np.exp(cos[top] / 0.07)
    expected = np.zeros(2)
    np.add.at(expected, y[top], w)
    np.testing.assert_allclose(clf.predict_proba(q)[0], expected / expected.sum(), rtol=1e-9)
    np.testing.assert_allclose(clf.predict_proba(q * 100), clf.predict_proba(q))
    # a higher temperature flattens the vote; k larger than the training rows lets every row vote
    flat = CosineKNNClassifier(n_neighbors=2, temperature=10.0).fit(X, y).predict_proba(q)[0]
    assert abs(flat[0] - 0.5) < abs(clf.predict_proba(q)[0][0] - 0.5)
    everyone = CosineKNNClassifier(n_neighbors=50).fit(X, y).predict_proba(q)[0]
    w_all = np.exp(cos / 0.07)
    np.testing.assert_allclose(everyone[0], w_all[y == 0].sum() / w_all.sum(), rtol=1e-9)


@pytest.mark.slow
def test_knn_cosine_k_is_the_grids_best_on_validation(bench_rows, small_cache):
    """The chosen k is the one a by-hand fit on train scores best on val (the first of equals), at that score."""
    _, rows = bench_rows
    X, y, masks = small_cache.features().astype(np.float32), small_cache.labels(), small_cache.split_masks()
    grid = GRIDS["knn_cosine"]["n_neighbors"]
    scores = [featcache.make_head("knn_cosine", n_neighbors=k).fit(X[masks["train"]], y[masks["train"]])
              .score(X[masks["val"]], y[masks["val"]]) for k in grid]
    row = rows["knn_cosine"]
    assert row["best_params"]["n_neighbors"] == grid[int(np.argmax(scores))], scores
    assert row["val_accuracy"] == pytest.approx(max(scores))


# --------------------------------------------------------------------------- leakage


@pytest.fixture(scope="module")
def leaky_folder(tmp_path_factory):
    """train/ and test/ class folders of distinct random images, with three test images copied from train."""
    root = tmp_path_factory.mktemp("leaky")
    images, labels = _images(90, seed=3)
    planted = []
    for i, (im, lab) in enumerate(zip(images, labels)):
        split = "test" if i % 5 == 0 else "train"
        d = root / split / f"c{lab}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i:03d}.png")
    for j, src in enumerate((1, 2, 3)):  # train images (one per class), copied into test under a new name
        lab = labels[src]
        target = root / "test" / f"c{lab}" / f"copy{j}.png"
        Image.fromarray(images[src]).save(target)
        planted.append((f"test/c{lab}/copy{j}.png", f"train/c{lab}/{src:03d}.png"))
    return root, planted


@pytest.mark.slow
def test_leakage_check_finds_the_planted_duplicates(leaky_folder, tmp_path):
    root, planted = leaky_folder
    cache = featcache.extract(root, out=tmp_path / "cache", **TINY)
    ids = cache.ids()
    found = near_duplicates(cache, threshold=0.9999)
    pairs = {(p["test_id"], p["train_id"]) for p in found["pairs"]}

    def short(i):
        return os.path.relpath(i, root) if os.path.isabs(i) else i

    short_pairs = {(short(a), short(b)) for a, b in pairs}
    assert short_pairs == set(planted), (short_pairs, ids[:3])  # exactly the copies, nothing else
    assert found["n_leaked"] == 3 and sum(found["leaked"]) == 3
    assert all(p["cosine"] > 0.9999 for p in found["pairs"])
    # the default threshold flags at least those
    assert near_duplicates(cache)["n_leaked"] >= 3
    # a search held to a few kilobytes (one fitting row and a few test rows per block) finds the same
    small = near_duplicates(cache, threshold=0.9999, work_bytes=4 * 2 * int(np.prod(cache.output_info()["shape"])))
    assert small["leaked"] == found["leaked"] and small["n_leaked"] == 3  # float sums differ in the last bit
    assert {(p["test_row"], p["train_row"]) for p in small["pairs"]} == {(p["test_row"], p["train_row"])
                                                                        for p in found["pairs"]}

    out = tmp_path / "report"
    rows = featcache.bench(cache, ["logreg"], out=out, baseline_heads=(), save_best=False, learning_curve=())
    leak = json.loads((out / "leakage.json").read_text())
    assert leak["n_leaked"] >= 3 and leak["best_head_accuracy"]["all"] == pytest.approx(rows[0]["accuracy"])
    assert (out / "leakage_pairs.png").is_file()  # thumbnails read back from the folder
    assert "Leakage check" in (out / "report.html").read_text()


def test_accuracy_with_and_without_the_leaked_rows():
    got = accuracy_with_and_without([0, 1, 1, 0], [0, 1, 0, 1], [True, True, False, False])
    assert got == {"all": 0.5, "without": 0.0, "leaked": 1.0}


# --------------------------------------------------------------------------- re-runs


def test_a_timed_out_row_is_retried_under_a_larger_budget(small_cache, tmp_path):
    kw = dict(out=tmp_path, baseline_heads=(), save_best=False, learning_curve=(), leakage=False)
    first = featcache.bench(small_cache, ["gaussian_nb"], timeout=0.2, **kw)[0]
    assert first["status"] == "timed out" and first["budget_seconds"] == 0.2
    again = featcache.bench(small_cache, ["gaussian_nb"], timeout=0.2, **kw)[0]
    assert again == first  # same budget: kept as it was
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1
    retried = featcache.bench(small_cache, ["gaussian_nb"], timeout=120, **kw)[0]
    assert retried["status"] == "ok" and retried["budget_seconds"] == 120
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    assert featcache.bench(small_cache, ["gaussian_nb"], timeout=600, **kw)[0]["wall_seconds"] == \
        retried["wall_seconds"]  # a finished row stands, whatever the budget


def test_retry_reasons():
    assert retry_reason({"status": "timed out", "budget_seconds": 10.0}, None) == "budget 10 s -> no limit"
    assert retry_reason({"status": "timed out", "error": "no result within the 120 s budget"}, 600) \
        == "budget 120 s -> 600 s"  # a row from before budgets were recorded
    assert retry_reason({"status": "timed out", "budget_seconds": 600.0}, 120) is None
    assert retry_reason({"status": "failed", "versions": {"featcache": "0.0.1"}}, 600) == "versions changed"
    from featcache.versions import HEAD_PACKAGES, versions

    assert retry_reason({"status": "failed", "versions": versions(HEAD_PACKAGES, backend=False)}, 600) is None
    assert retry_reason({"status": "ok"}, 600) is None


# --------------------------------------------------------------------------- scripts, notebooks, pipes


@pytest.mark.slow
def test_bench_from_a_script_without_a_main_guard(small_cache, tmp_path):
    script = tmp_path / "notebook_cell.py"
    script.write_text(textwrap.dedent(f"""
        import featcache
        rows = featcache.bench({str(small_cache.path)!r}, ["gaussian_nb", "lda"], out={str(tmp_path / "r")!r},
                               baseline_heads=(), save_best=False, learning_curve=(), leakage=False)
        print("STATUSES", sorted(r["status"] for r in rows))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr
    assert "STATUSES ['ok', 'ok']" in proc.stdout


def test_a_dead_head_process_leaves_its_stderr_in_the_row(small_cache, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    # loaded by every new Python on this path: the head's process prints and dies before it reads its task
    (site / "sitecustomize.py").write_text("import os, sys\nsys.stderr.write('out of cheese: redo from start\\n')\n"
                                           "os._exit(7)\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    row = featcache.bench(small_cache, ["gaussian_nb"], out=tmp_path / "r", baseline_heads=(), save_best=False,
                          learning_curve=(), leakage=False)[0]
    assert row["status"] == "failed"
    assert "exit code 7" in row["error"] and "out of cheese" in row["error"]
    assert "out of cheese: redo from start" in row["stderr"]


@pytest.mark.slow
def test_piped_live_table_ends_its_last_line(small_cache, tmp_path):
    proc = run_featcache("bench", small_cache.path, "--heads", "gaussian_nb", "--out", tmp_path / "r",
                         "--baseline-heads", "")
    bottom = [line for line in proc.stderr.splitlines() if "└" in line]
    assert bottom and all(line.rstrip().endswith("┘") for line in bottom), proc.stderr


def test_logreg_path_takes_the_classifiers_own_parameters_by_either_name(small_cache, tmp_path):
    """--param logreg:clf__max_iter=... reached the warm-started path as a key the classifier lacks."""
    rows = featcache.bench(small_cache, ["logreg"], params={"logreg": {"clf__max_iter": 7, "tol": 1e-2}},
                           out=tmp_path / "r", baseline_heads=(), save_best=False, learning_curve=(), leakage=False)
    assert rows[0]["status"] == "ok", rows[0].get("error")
    assert rows[0]["params"]["clf__max_iter"] == 7 and rows[0]["params"]["tol"] == 1e-2
