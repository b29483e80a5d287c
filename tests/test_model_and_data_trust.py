"""Model directories that disagree with their card, and legitimate data that used to break default heads.

Issue #27, sections 4 and 5 and the minor items: every forgery is made the
way an attacker would (editing card.json, swapping the head file and
updating the card's sha256), and every data problem is a real folder or
CSV run through the real CLI.
"""

import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_ARGS, run_here
from featcache.splits import assign_splits

#: TensorFlow's own start-up lines on stderr (absl logging), which are not featcache's
TF_LOG = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} )")
COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), "cat": (30, 30, 200)}


def _image(path, colour, seed):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _folder(root, per_split=(("train", 6), ("val", 5), ("test", 3)), rare=None):
    """train/ val/ test/ folders of three coloured classes; ``rare``: (class, split) holding a single image."""
    seed = 0
    for split, n in per_split:
        for cls, colour in COLOURS.items():
            for i in range(n):
                seed += 1
                _image(root / split / cls / f"{cls}_{i}.png", colour, seed)
    if rare:
        _image(root / rare[1] / rare[0] / "only.png", (220, 220, 30), 999)
    return root


def _one_line_exit_2(proc):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip() and not TF_LOG.match(line)]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cache3(tmp_path_factory):
    """A tiny cache of the three-class folder."""
    root = _folder(tmp_path_factory.mktemp("three") / "images")
    out = root.parent / "cache"
    run_here("extract", root, *TINY_ARGS, "--out", out, "--quiet")
    return out



def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_card(model, **changes):
    card = json.loads((model / "card.json").read_text())
    card.update(changes)
    (model / "card.json").write_text(json.dumps(card, indent=2))
    return card


@pytest.fixture(scope="module")
def models(cache3, tmp_path_factory):
    """A logreg and a keras_linear model directory trained on the three-class cache, through the CLI."""
    base = tmp_path_factory.mktemp("models")
    run_here("train", cache3, "--head", "logreg", "--out", base / "logreg", "--quiet")
    run_here("train", cache3, "--head", "keras_linear", "--out", base / "keras", "--quiet")
    return base


@pytest.fixture
def model_copy(models, tmp_path):
    import shutil

    def copy(name):
        shutil.copytree(models / name, tmp_path / name)
        return tmp_path / name
    return copy


def _predict_refused(model, images, tmp_path):
    out = tmp_path / "predictions.csv"
    line = _one_line_exit_2(run_here("predict", model, images, "--out", out, check=False))
    assert not out.exists()
    return line


def test_predict_refuses_a_swapped_head_with_2000_classes_and_its_sha256_updated(model_copy, cache3, tmp_path):
    import joblib
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import Pipeline

    model = model_copy("logreg")
    width = json.loads((model / "card.json").read_text())["features"]["n_features"]
    rng = np.random.default_rng(0)
    forged = Pipeline([("clf", GaussianNB())]).fit(rng.normal(size=(2000, width)), np.arange(2000))
    joblib.dump(forged, model / "head.joblib")
    _edit_card(model, sha256=_sha256(model / "head.joblib"))
    line = _predict_refused(model, cache3.parent / "images" / "test", tmp_path)
    assert "2000 classes" in line and "card names 3" in line


def test_predict_refuses_a_card_whose_classes_were_cut(model_copy, cache3, tmp_path):
    model = model_copy("logreg")
    _edit_card(model, classes=[0, 1], class_names=["ant", "bee"])
    line = _predict_refused(model, cache3.parent / "images" / "test", tmp_path)
    assert "3 classes" in line and "card names 2" in line


@pytest.mark.parametrize("names", [[{"a": 1}, {"b": 2}, {"c": 3}], [1, 2, 3]], ids=["dicts", "integers"])
def test_predict_refuses_class_names_that_are_not_strings(model_copy, cache3, tmp_path, names):
    model = model_copy("logreg")
    _edit_card(model, class_names=names)
    assert "class_names must all be strings" in _predict_refused(model, cache3.parent / "images" / "test", tmp_path)


def test_export_and_predict_refuse_a_keras_head_with_1400_outputs(model_copy, cache3, tmp_path):
    import keras

    model = model_copy("keras")
    width = json.loads((model / "card.json").read_text())["features"]["n_features"]
    inputs = keras.Input((width,), name="features")
    keras.Model(inputs, keras.layers.Dense(1400, activation="softmax")(inputs)).save(model / "head.keras")
    _edit_card(model, sha256=_sha256(model / "head.keras"))
    out = tmp_path / "exported.keras"
    line = _one_line_exit_2(run_here("export", model, out, check=False))
    assert "1400 outputs" in line and "3 classes" in line
    assert not out.exists() and not list(tmp_path.glob("*.keras"))
    assert "1400 outputs" in _predict_refused(model, cache3.parent / "images" / "test", tmp_path)


def test_hashed_split_keeps_one_image_of_every_class_in_train():
    ids = [f"common/{i}.png" for i in range(60)] + ["rare/only.png"]
    labels = [i % 3 for i in range(60)] + [3]
    rare_id = next(f"rare/{i}.png" for i in range(1000) if assign_splits([f"rare/{i}.png"])[0] == "val")
    ids[-1] = rare_id
    before = assign_splits(ids)
    after = assign_splits(ids, labels=labels)
    assert before[-1] == "val" and after[-1] == "train"
    assert after[:-1].tolist() == before[:-1].tolist()  # every class that had a train image keeps its split
    # the same with a source that names splits for some rows only
    given = ["train"] * 30 + [None] * 31
    assert assign_splits(ids, given, labels=labels)[-1] == "train"


def test_csv_rows_of_one_image_by_dotdot_or_symlink_are_duplicates(tmp_path):
    _image(tmp_path / "img" / "0000.png", (10, 20, 30), 1)
    _image(tmp_path / "img" / "0001.png", (30, 20, 10), 2)
    (tmp_path / "img" / "link.png").symlink_to(tmp_path / "img" / "0001.png")
    for second in ("img/../img/0000.png", "img/link.png"):
        first = "img/0000.png" if "0000" in second else "img/0001.png"
        (tmp_path / "list.csv").write_text(f"path,label\n{first},a\nimg/0002.png,b\n{second},b\n")
        _image(tmp_path / "img" / "0002.png", (90, 90, 90), 3)
        line = _one_line_exit_2(run_here("extract", tmp_path / "list.csv", *TINY_ARGS,
                                              "--out", tmp_path / "cache", check=False))
        assert second in line and first in line and "line 4" in line and "line 2" in line
        assert not (tmp_path / "cache").exists()


def test_a_nul_in_a_csv_label_is_refused_before_any_work(tmp_path):
    _image(tmp_path / "a.png", (10, 20, 30), 1)
    _image(tmp_path / "b.png", (30, 20, 10), 2)
    (tmp_path / "list.csv").write_bytes(b"path,label\na.png,ant\nb.png,be\x00e\n")
    line = _one_line_exit_2(run_here("extract", tmp_path / "list.csv", *TINY_ARGS,
                                          "--out", tmp_path / "cache", check=False))
    assert "NUL" in line and "line 3" in line
    assert not (tmp_path / "cache").exists()


NASTY = "a|b\n<script>`x`&"


@pytest.fixture(scope="module")
def rare_bench(tmp_path_factory):
    """bench's default heads and the pixel baseline on a folder whose class 'zebra' has one image, in val
    (the source's own split: train never sees it), beside a class whose name is hostile Markdown."""
    root = tmp_path_factory.mktemp("rare") / "images"
    _folder(root, rare=("zebra", "val"))
    for split in ("train", "val", "test"):
        (root / split / "cat").rename(root / split / NASTY)
    cache = root.parent / "cache"
    run_here("extract", root, *TINY_ARGS, "--out", cache, "--quiet")
    out = root.parent / "report"
    run_here("bench", cache, "--heads", "logreg,ridge", "--baseline-heads", "logreg", "--out", out,
                  "--quiet", "--n-jobs", "1", "--timeout", "120")
    return out


@pytest.mark.slow
def test_bench_with_a_class_only_in_val_finishes_every_default_head(rare_bench):
    rows = [json.loads(line) for line in (rare_bench / "results.jsonl").read_text().splitlines() if line.strip()]
    assert {(r["head"], bool(r.get("baseline"))) for r in rows} >= {("logreg", False), ("ridge", False),
                                                                     ("logreg", True)}, rows
    for r in rows:
        assert r.get("status") == "ok" and r.get("accuracy") is not None, r
        assert "classes absent from train: zebra" in r["note"], r


@pytest.mark.slow
def test_report_md_escapes_class_names_in_its_tables(rare_bench):
    md = (rare_bench / "report.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "a\\|b &lt;script&gt;\\`x\\`&amp;" in md
    assert "| zebra |" in md or "zebra" in md.split("## Per class")[1]  # the per-class table was written
    width = None
    for line in md.splitlines():  # each table's rows have as many unescaped cell separators as its header
        if not line.startswith("|"):
            width = None
            continue
        cells = line.replace("\\|", "").count("|")
        width = width or cells
        assert cells == width, line


def test_train_refuses_a_label_outside_the_cache_class_names(cache3, tmp_path):
    import shutil

    import h5py

    cache = tmp_path / "cache"
    shutil.copytree(cache3, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    record = manifest["shards"][0]
    shard = cache / record["file"]
    with h5py.File(shard, "r+") as f:  # a shard's label rewritten past the 3 class names, its digest updated
        labels = f["labels"][:]
        labels[0] = 57
        f["labels"][:] = labels
    record.update(sha256=_sha256(shard), bytes=shard.stat().st_size)
    (cache / "manifest.json").write_text(json.dumps(manifest, indent=2))
    proc = run_here("train", cache, "--head", "logreg", "--out", tmp_path / "model", check=False)
    assert "57" in _one_line_exit_2(proc)
    assert not (tmp_path / "model").exists()
