"""Fuzz the command line: about nine hundred generated argument combinations, good and hostile, in-process.

Every one must end with exit code 0 or 2 (``verify`` may also say 1: problems
found), never an uncaught exception. The values come from pools of good and
hostile ones: negative, zero, huge, non-numeric, empty, unicode, paths to
nothing, to a plain file, to a folder that is not a cache, to broken caches
and model directories. ``featcache.cli.main`` runs in this process, so
TensorFlow is imported once and a valid extraction takes a fraction of a
second (a tiny 16x16 conv model saved once as the backbone).

FEATCACHE_FUZZ_RANDOM=1 draws new examples on each run instead of the fixed,
reproducible ones; FEATCACHE_FUZZ_SCALE=5 runs five times as many (the suite's
counts repeat the same fixed examples on every run, so they are kept small).
"""

import importlib
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st
from PIL import Image

from featcache.cli import main
from featcache.store import MANIFEST

FUZZ = settings(deadline=None, database=None, derandomize=not os.environ.get("FEATCACHE_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])

SCALE = float(os.environ.get("FEATCACHE_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


pytestmark = pytest.mark.slow  # about nine hundred in-process CLI runs

FLAG = object()  # a flag that takes no value
_count = itertools.count()


class World:
    """Paths every example may use; nothing an example can write to is shared between examples."""

    def fresh(self, suffix=""):
        return str(self.root / "outs" / f"o{next(_count)}{suffix}")

    def copy(self, path):
        dst = self.fresh()
        shutil.copytree(path, dst)
        return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import keras

    w = World()
    w.root = root = tmp_path_factory.mktemp("fuzz")
    (root / "outs").mkdir()
    (root / "cwd").mkdir()
    mp = pytest.MonkeyPatch()
    mp.chdir(root / "cwd")  # default outputs (caches/, models/, report/) land here
    mp.setenv("FEATCACHE_HOME", str(root / "home"))  # predict's default feature caches

    def no_benchmark(*_a, **_k):
        raise AssertionError("a bench example got past validation and would spawn head processes")

    # featcache.bench is also the name of the function, hence import_module for the module
    mp.setattr(importlib.import_module("featcache.bench"), "_run_tasks", no_benchmark)

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Conv2D(8, 3, name="feat")(x)
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x)).save(root / "tiny.keras")
    w.backbone = str(root / "tiny.keras")
    w.folder = root / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (w.folder / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(w.folder / cls / f"{i}.png")
    w.png = str(w.folder / "a" / "0.png")
    w.plain = root / "notes.txt"
    w.plain.write_text("not an image, not a cache\n")
    w.fake_keras = root / "fake.keras"
    w.fake_keras.write_text("not a zip\n")
    w.empty = root / "empty"
    w.empty.mkdir()
    w.missing = str(root / "no" / "such" / "thing")
    w.unicode_missing = str(root / "ünï cødé 💥")
    w.bad_csv = root / "bad.csv"
    w.bad_csv.write_text("path,label\n\"unterminated,\x01\nnope.png,a\n")

    w.cache = str(root / "cache")
    assert main(["extract", str(w.folder), "--backbone", w.backbone, "--layer", "feat", "--out", w.cache,
                 "--quiet"]) == 0
    w.bad_manifest = w.copy(w.cache)
    (Path(w.bad_manifest) / MANIFEST).write_text("{not json")
    w.no_shards = w.copy(w.cache)
    shutil.rmtree(os.path.join(w.no_shards, "shards"))
    w.model_sk, w.model_keras = str(root / "m_sk"), str(root / "m_keras")
    assert main(["train", w.cache, "--head", "logreg", "--out", w.model_sk]) == 0
    assert main(["train", w.cache, "--head", "keras_linear", "--param", "epochs=2", "--out", w.model_keras]) == 0
    w.card_wrong_format = w.copy(w.model_sk)
    (Path(w.card_wrong_format) / "card.json").write_text("{}")
    w.head_missing = w.copy(w.model_sk)
    os.remove(os.path.join(w.head_missing, "head.joblib"))
    yield w
    mp.undo()


def run(argv, allowed=(0, 2)):
    """``featcache ARGV`` in this process: its exit code, which must be one of ``allowed``."""
    argv = [str(a) for a in argv]
    in_example = currently_in_test_context()
    if in_example:
        note(f"featcache {' '.join(argv)}")
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: 2 for a usage error, 0 for --help
        rc = 0 if exc.code is None else exc.code
    if in_example:
        event(f"{argv[0]}: exit {rc}")  # --hypothesis-show-statistics: how many got past validation
    assert rc in allowed, f"featcache {argv} exited {rc}"
    return rc


def draw_flags(data, flags: dict, max_flags: int) -> list:
    """Some of ``flags`` (name -> pool of values, or FLAG), each with one value from its pool.

    A pool's first value is a good one and is drawn half the time, so that enough combinations get past
    the first check and reach the code behind it.
    """
    names = data.draw(st.lists(st.sampled_from(sorted(flags)), unique=True, max_size=max_flags))
    argv = []
    for name in names:
        pool = flags[name]
        if pool is FLAG:
            argv.append(name)
        else:
            value = data.draw(st.sampled_from([pool[0]] * len(pool) + list(pool)))
            argv += [name, value() if callable(value) else value]
    return argv


# Hostile values shared by the numeric flags: zero, negative, huge, non-numeric, empty, unicode.
NUMBERS = ["0", "-1", "-0.5", "2147483648", "1e400", "nan", "inf", "abc", "", "٣", "1_0", " 7 "]


def paths(w, *extra):
    """Hostile paths: nothing, a plain file, a folder that is not a cache, unicode, empty."""
    return [w.missing, str(w.plain), str(w.empty), w.unicode_missing, "", *extra]


# --------------------------------------------------------------------------- extract


@settings(FUZZ, max_examples=examples(120))
@given(data=st.data())
def test_fuzz_extract(world, data):
    w = world
    flags = {
        "--backbone": [w.backbone] * 4 + ["nope", w.missing + ".keras", str(w.fake_keras), str(w.plain), "",
                                          "mobilenet_v2:x"],
        "--layer": ["feat", "conv", "nope", "", "ü"],
        "--weights": ["none", "imagenet", w.missing, str(w.plain)],
        "--image-size": ["16"] + NUMBERS,
        "--pooling": ["avg", "max", "none", "banana"],
        "--outputs": ["feat", "conv,feat", "nope", ",", ""],
        "--preprocess": ["none", "tf", "banana"],
        "--dtype": ["float32", "int8"],
        "--compute-dtype": ["float32", "float64"],
        "--batch-size": ["4", "1", "0", "-1", "abc", "", "2.5", "2147483648", "100000000"],
        "--shard-size": ["5", "2147483648"] + NUMBERS,
        "--compression": ["lzf", "gzip", "zip"],
        "--jit": ["auto", "false", "banana", "", "TRUE"],
        "--decode-threads": ["2", "100000"] + NUMBERS,
        "--prefetch": ["1", "100000"] + NUMBERS,
        "--wait": ["0", "2"] + NUMBERS,
        "--classes": ["0", "0,1", "99", "x", "", ",,"],
        "--limit": ["3", "2147483648"] + NUMBERS,
        "--first": ["3", "2147483648"] + NUMBERS,
        "--limit-seed": ["0", "7", "-1", "x"],
        "--data-dir": [w.missing, str(w.plain)],
        "--allow-outside": FLAG,
        "--engine": ["local", "nope"],  # not ray: a valid combination would start a Ray instance
        "--workers": ["2", "0", "-1"],
        "--gpus-per-worker": ["0.5", "-1", "nan"],
        "--overwrite": FLAG,
        "--repair": FLAG,
        "--out": [w.fresh, w.fresh, str(w.plain), lambda: w.copy(w.cache), lambda: w.copy(w.bad_manifest)],
    }
    source = data.draw(st.sampled_from([str(w.folder)] * 4 + paths(w, str(w.bad_csv), w.cache, w.png) + [
        "fashion_mnist:nope", "nope_dataset:test"]))
    argv = ["extract", source, "--quiet"] + draw_flags(data, flags, 6)
    if "--backbone" not in argv:
        argv += ["--backbone", w.backbone]  # the default backbone is a real, slower one
    if "--out" not in argv:
        argv += ["--out", w.fresh()]
    run(argv)


# --------------------------------------------------------------------------- train


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_fuzz_train(world, data):
    w = world
    params = ["C=0.5", "C=abc", "C=-1", "C=", "C=nan", "C=1e400", "n_neighbors=1000", "n_neighbors=2", "epochs=1",
              "epochs=-1", "epochs=2.5", "hidden=4", "hidden=4,2", "hidden=-1", "hidden=abc", "hidden=[]",
              "noequals", "=3", "nonsense=1", "max_iter=0", "ü=1", "C=ü", "class_weight=balanced", "C__x=1",
              "__=1", "clf__C=2", "scale__with_mean=maybe", "shrinkage=7"]
    flags = {
        "--head": ["logreg", "logreg", "knn", "lda", "gaussian_nb", "sgd", "keras_linear", "nope", "", "LOGREG"],
        "--preprocess": ["none", "standard", "pca", "pca:2", "pca:0.5", "pca:abc", "pca:0", "pca:-1", "pca:99999",
                         "standard+pca:2", "pca+pca", "bogus", "", "+", "pca:"],
        "--output": ["avg", "nope", ""],
        "--stream": FLAG,
        "--val-fraction": ["0.1", "0.5"] + NUMBERS,
        "--test-fraction": ["0.2", "0.6"] + NUMBERS,
        "--out": [w.fresh, lambda: w.fresh(".ünï"), str(w.plain), str(w.folder), lambda: w.copy(w.cache)],
    }
    cache = data.draw(st.sampled_from([w.cache] * 5 + paths(w, w.bad_manifest, w.no_shards, w.model_sk)))
    argv = ["train", cache] + draw_flags(data, flags, 5)
    for _ in range(data.draw(st.integers(0, 3))):
        argv += ["--param", data.draw(st.sampled_from(params))]
    if "--out" not in argv:
        argv += ["--out", w.fresh()]
    run(argv)


# --------------------------------------------------------------------------- predict, export


MODELS = ["model_sk", "model_keras", "model_sk", "model_keras", "card_wrong_format", "head_missing", "cache",
          "missing", "empty", "unicode_missing", "plain"]


def _folder(path):
    os.makedirs(path)
    return path


@settings(FUZZ, max_examples=examples(100))
@given(data=st.data())
def test_fuzz_predict(world, data):
    w = world
    model = getattr(w, data.draw(st.sampled_from(MODELS)))
    single = st.sampled_from([str(w.folder), w.png, w.cache, w.missing, str(w.empty), w.unicode_missing, "",
                              str(w.plain), str(w.bad_csv)])
    several = st.lists(st.sampled_from([str(w.folder), w.png, w.cache, str(w.bad_csv)] + paths(w)), min_size=1,
                       max_size=2)
    images = data.draw(st.one_of(single.map(lambda one: [one]), several))
    flags = {
        "--out": [lambda: w.fresh(".csv"), lambda: w.fresh(".json"), lambda: w.fresh(".txt"), str(w.empty), "",
                  lambda: _folder(w.fresh(".csv"))],
        "--cache-dir": [w.fresh, w.fresh, "", str(w.plain)],
        "--quiet": FLAG,
    }
    run(["predict", model, *images] + draw_flags(data, flags, 3))


@settings(FUZZ, max_examples=examples(60))
@given(data=st.data())
def test_fuzz_export(world, data):
    w = world
    model = getattr(w, data.draw(st.sampled_from(MODELS)))
    out = data.draw(st.sampled_from([lambda: w.fresh(".keras"), lambda: w.fresh(".txt"), lambda: w.fresh(),
                                     lambda: os.path.join(w.missing, "m.keras"), str(w.empty), ""]))
    run(["export", model, out() if callable(out) else out])


# --------------------------------------------------------------------------- info, verify


@settings(FUZZ, max_examples=examples(80))
@given(data=st.data())
def test_fuzz_info_and_verify(world, data):
    w = world
    command = data.draw(st.sampled_from(["info", "verify"]))
    target = data.draw(st.sampled_from([w.cache, w.bad_manifest, w.no_shards, w.model_sk, str(w.folder)] + paths(w)))
    extra = data.draw(st.sampled_from([[], [], ["--bogus"], [w.cache], ["-h"]]))
    run([command, target, *extra], allowed=(0, 1, 2) if command == "verify" else (0, 2))  # verify: 1 = problems


# --------------------------------------------------------------------------- bench


BENCH_BAD = [("--n-jobs", "0"), ("--n-jobs", "abc"), ("--n-jobs", ""), ("--timeout", "0"), ("--timeout", "-1"),
             ("--timeout", "nan"), ("--timeout", "inf"), ("--timeout", "x"), ("--cv", "1"), ("--cv", "0"),
             ("--cv", "-2"), ("--cv", "ü"), ("--pixel-size", "0"), ("--pixel-size", "-3"), ("--pixel-size", "1.5"),
             ("--param", "knn:n_neighbors=-3"), ("--param", "logreg:C=abc"), ("--param", "nocolon"),
             ("--param", "nope:C=1"), ("--param", "logreg:nonsense=1"), ("--param", "keras_linear:hidden=0"),
             ("--heads", "nope"), ("--heads", "logreg,,ü"), ("--baseline-heads", "nope"), ("--backend", "nope"),
             ("--cv", "2147483648x")]


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_fuzz_bench_refuses_every_bad_value_before_any_work(world, data):
    """Every example has at least one bad value, so none spawns a head process (that would fail the test)."""
    w = world
    flags = {
        "--heads": ["logreg", "logreg,knn", "keras_linear"],
        "--all": FLAG,
        "--param": ["logreg:C=0.5", "knn:n_neighbors=3"],
        "--cv": ["3"],
        "--timeout": ["5", "0.5"],
        "--n-jobs": ["1", "-1", "2"],
        "--backend": ["threading", "ray"],
        "--baseline-heads": ["logreg", ""],
        "--pixel-size": ["8"],
        "--quiet": FLAG,
    }
    out = data.draw(st.sampled_from([w.fresh, str(w.plain)]))
    out = out() if callable(out) else out
    caches = data.draw(st.lists(st.sampled_from([w.cache, w.cache, w.bad_manifest] + paths(w)), min_size=1,
                                max_size=2))
    argv = ["bench", *caches] + draw_flags(data, flags, 4) + ["--out", out]
    if all(c == w.cache for c in caches):  # no bad cache: one bad value, last, so argparse keeps it
        bad = data.draw(st.sampled_from(BENCH_BAD))
        argv += list(bad)
    assert run(argv) == 2
    assert not os.path.isdir(out)  # no report folder: nothing was written


# --------------------------------------------------------------------------- what is read from disk


def _paths(obj, prefix=()):
    """Every key path into a JSON document, containers included."""
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _deep(n):
    out = []
    for _ in range(n):
        out = [out]
    return out


# What an attacker or a damaged disk puts in a field: wrong types, absurd sizes, paths out of the directory.
HOSTILE_JSON = [None, True, 0, -1, -5, 57, 10**13, 2**63, 1.5, float("nan"), float("inf"), "", "abc", "4096x",
                "lots", "object", "\x00", "a\nb", "<script>x</script>", "/etc/passwd", "../../etc/passwd",
                "shards/00000.h5", [], [1e7, 1e7], [0], [-3], [1, 2, 3], {}, {"0": 1}, ["a", 2], _deep(60)]


def _mutate(doc, data):
    """One hostile edit of ``doc`` (a parsed JSON document): replace a field, delete it, or bury it deep."""
    path = data.draw(st.sampled_from(sorted((p for p in _paths(doc) if p), key=repr)))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    op = data.draw(st.sampled_from(["replace"] * 4 + ["delete", "deep"]))
    if op == "delete":
        del parent[path[-1]]
    elif op == "deep":
        parent[path[-1]] = _deep(5000)
    else:
        parent[path[-1]] = data.draw(st.sampled_from(HOSTILE_JSON))
    note(f"{op} {path}")


def _dump(doc, path):
    """JSON as Python writes it (NaN and Infinity included), nesting deeper than ``json.dumps`` recurses."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)
    try:
        Path(path).write_text(json.dumps(doc))
    finally:
        sys.setrecursionlimit(limit)


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_fuzz_forged_manifests_are_one_line_errors(world, data):
    """A manifest edited anywhere, to any hostile value, is read by every reader as exit 0, 1 or 2."""
    w = world
    cache = w.copy(w.cache)
    manifest = json.loads((Path(cache) / MANIFEST).read_text())
    _mutate(manifest, data)
    _dump(manifest, Path(cache) / MANIFEST)
    command = data.draw(st.sampled_from(["info", "verify", "train", "export-features"]))
    argv = {"info": ["info", cache], "verify": ["verify", cache],
            "train": ["train", cache, "--head", "logreg", "--out", w.fresh()],
            "export-features": ["export-features", cache, w.fresh(".npz")]}[command]
    run(argv, allowed=(0, 1, 2) if command == "verify" else (0, 2))


@settings(FUZZ, max_examples=examples(100))
@given(data=st.data())
def test_fuzz_forged_cards_are_one_line_errors(world, data):
    """A model card edited anywhere is exit 0 or 2 for predict and export."""
    w = world
    model = w.copy(data.draw(st.sampled_from([w.model_sk, w.model_keras])))
    card = json.loads((Path(model) / "card.json").read_text())
    _mutate(card, data)
    _dump(card, Path(model) / "card.json")
    if data.draw(st.booleans()):
        run(["predict", model, str(w.folder), "--out", w.fresh(".csv"), "--quiet"])
    else:
        run(["export", model, w.fresh(".keras")])


@pytest.mark.parametrize("command", ["info", "verify", "train", "export-features"])
def test_a_truncated_shard_is_a_one_line_error(world, command):
    w = world
    cache = w.copy(w.cache)
    shard = Path(cache) / "shards" / "00000.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    argv = {"info": ["info", cache], "verify": ["verify", cache],
            "train": ["train", cache, "--head", "logreg", "--out", w.fresh()],
            "export-features": ["export-features", cache, w.fresh(".npz")]}[command]
    run(argv, allowed=(1,) if command == "verify" else (0, 2) if command == "info" else (2,))
