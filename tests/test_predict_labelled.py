"""predict on labelled images: accuracy with its interval, a per-class table, the true class in its own columns."""

import csv
import re

import numpy as np
from PIL import Image

import featcache
from featcache.predict import score_predictions

from conftest import class_sorted_images, run_here


def _labelled_folder(root):
    """Class folders of new images of sorted_cache's classes, made hard (dimmed) so some are missed, and one
    folder of a class the head never learned."""
    images, labels = class_sorted_images(n_per_class=8, seed=3)
    images[::3] = (images[::3] * 0.55).astype(np.uint8)
    for i, (img, cls) in enumerate(zip(images, labels)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / cls / f"{i:03d}.png")
    (root / "owl").mkdir()
    Image.fromarray(images[0]).save(root / "owl" / "owl.png")
    return root


def test_predict_on_a_labelled_folder_reports_the_accuracy_counted_by_hand(sorted_cache, tmp_path):
    featcache.train(sorted_cache, "logreg", out=tmp_path / "m")
    images = _labelled_folder(tmp_path / "images")
    out = tmp_path / "preds.csv"
    proc = run_here("predict", tmp_path / "m", images, "--out", out, "--cache-dir", tmp_path / "pc", "--quiet")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:7] == ["id", "predicted_label", "predicted_class", "probability", "error", "true_label",
                                 "true_class"]
    assert len(rows) == 25 and {r["true_class"] for r in rows} == {"cat", "dog", "fox", "owl"}
    owl = [r for r in rows if r["true_class"] == "owl"]
    assert owl[0]["true_label"] == ""  # a class the head does not know has no label index
    for r in rows:
        assert r["id"].split("/")[0] == r["true_class"]  # the true class is the image's folder
    correct = sum(r["true_class"] == r["predicted_class"] for r in rows)
    assert 0 < correct < 25  # a real score: some hits, some misses (the owl at least)
    m = re.search(r"accuracy ([\d.]+)% \((\d+)/(\d+) labelled images; 95% bootstrap interval ([\d.]+)%-([\d.]+)%\)",
                  proc.stdout)
    assert m, proc.stdout
    assert (int(m[2]), int(m[3])) == (correct, 25)
    assert float(m[1]) == round(100 * correct / 25, 1)
    assert float(m[4]) <= float(m[1]) <= float(m[5])
    assert "per class (true class)" in proc.stdout and "owl" in proc.stdout

    api = featcache.predict(tmp_path / "m", images, cache_dir=tmp_path / "pc")
    score = score_predictions(api)
    assert score["correct"] == correct and score["n"] == 25
    by_class = {c["class"]: c for c in score["per_class"]}
    assert by_class["owl"] == {"class": "owl", "n": 1, "correct": 0, "accuracy": 0.0, "predicted": 0}
    assert sum(c["n"] for c in score["per_class"]) == 25
    assert sum(c["correct"] for c in score["per_class"]) == correct


def test_unlabelled_images_get_no_score_and_empty_true_columns(sorted_cache, tmp_path):
    featcache.train(sorted_cache, "logreg", out=tmp_path / "m")
    images, _ = class_sorted_images(n_per_class=2, seed=4)
    rows = featcache.predict(tmp_path / "m", images, cache_dir=tmp_path / "pc")
    assert "true_class" not in rows[0] and score_predictions(rows) is None
