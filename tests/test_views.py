"""Augmented views in the cache: seeded per image, train images only, kept when K rises, used by every head."""

import hashlib
import json
import shutil

import numpy as np
import pytest

import featcache
from featcache import store
from featcache.augment import DEFAULT_RECIPE, augment_images, parse_recipe
from featcache.errors import FeatcacheError

from conftest import (TINY, TINY_ARGS, assert_same_cache, kill_at, kill_when, reference_cache, run_here,
                      start_featcache)

N = 72


def _images():
    rng = np.random.default_rng(0)
    labels = np.arange(N) % 3
    imgs = rng.integers(0, 70, (N, 24, 24, 3)).astype(np.uint8)
    imgs[labels == 1, :12] += 150  # the classes differ in where the light is
    imgs[labels == 2, :, :12] += 150
    return imgs, labels


def _extract(out, views, **kw):
    imgs, labels = _images()
    return featcache.extract(imgs, labels=labels, out=out, shard_size=16, views=views, return_summary=True,
                             **{**TINY, **kw})


@pytest.fixture(scope="module")
def viewed(tmp_path_factory):
    cache, _ = _extract(tmp_path_factory.mktemp("views") / "cache", 2)
    return cache


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the recipe


def test_a_recipe_has_one_canonical_spelling_and_bad_ones_are_one_line_errors():
    assert parse_recipe(" rotate=15 , flip ").text == "flip,rotate=15,seed=0"
    assert parse_recipe(None).text == DEFAULT_RECIPE
    for bad, says in [("blur=2", "unknown step 'blur'"), ("crop", "crop needs a value"), ("crop=3", "between"),
                      ("flip=1", "takes no value"), ("flip,flip", "twice"), ("seed=x", "not an integer"),
                      ("seed=4", "changes nothing"), ("contrast=-1", "between")]:
        with pytest.raises(FeatcacheError, match=says):
            parse_recipe(bad)


def test_a_views_parameters_depend_on_its_image_and_number_alone():
    recipe = parse_recipe("flip,crop=0.5,rotate=20,contrast=0.3,brightness=0.2,seed=1")
    alone = recipe.params(["b"], 1, (32, 32))
    in_a_batch = recipe.params(["a", "b", "c"], 1, (32, 32))
    np.testing.assert_array_equal(alone[0], in_a_batch[1])  # the batch an image falls in changes nothing
    assert not np.array_equal(in_a_batch[0], in_a_batch[1])
    assert not np.array_equal(recipe.params(["b"], 2, (32, 32)), alone)  # view 2 is another draw
    other_seed = parse_recipe("flip,crop=0.5,rotate=20,contrast=0.3,brightness=0.2,seed=2")
    assert not np.array_equal(other_seed.params(["b"], 1, (32, 32)), alone)


def test_the_identity_transform_leaves_an_image_unchanged_and_a_flip_mirrors_it():
    img = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    identity = np.tile(np.array([1, 0, 0, 0, 1, 0, 0, 0, 1, 0], np.float32), (2, 1))
    np.testing.assert_array_equal(augment_images(img, identity), img)
    flip = identity.copy()
    flip[:, 0], flip[:, 2] = -1, 15
    np.testing.assert_array_equal(augment_images(img, flip), img[:, :, ::-1])


# ---------------------------------------------------------------- extraction


def test_views_hold_every_train_image_and_nothing_of_val_or_test(viewed):
    masks = viewed.split_masks()
    ids = np.array(viewed.ids())
    train_ids = set(ids[masks["train"]])
    held_out = set(ids[masks["val"] | masks["test"]])
    assert viewed.views == 2 and viewed.augment == DEFAULT_RECIPE and held_out
    for v in (1, 2):
        view_ids = viewed.view_ids(v)
        assert sorted(view_ids) == sorted(train_ids)  # each train image once in each view ...
        assert not held_out & set(view_ids)  # ... and no view of a val or test image, ever
    tr = np.flatnonzero(masks["train"])
    V = viewed.views_of(tr)
    plain = viewed.features()[tr]
    assert V.shape == (2,) + plain.shape
    assert not np.allclose(V[0], plain) and not np.allclose(V[0], V[1])  # they are other images
    # a val row asked for its views gets itself: stacking views never adds a held-out image
    va = np.flatnonzero(masks["val"])
    np.testing.assert_array_equal(viewed.views_of(va)[1], viewed.features()[va])
    assert len(viewed) == N and viewed.verify() == []
    with pytest.raises(store.CacheError, match="views 1 to 2"):
        viewed.view_shards(3)


def test_views_are_identical_on_every_run_and_whatever_the_batch_size(viewed, tmp_path):
    again, _ = _extract(tmp_path / "again", 2)
    tr = again.split_rows("train")
    np.testing.assert_array_equal(again.views_of(tr), viewed.views_of(tr))
    assert again.key == viewed.key
    other_batches, _ = _extract(tmp_path / "b7", 2, batch_size=7)
    # the CNN's arithmetic may round differently at another batch shape; the augmented images do not
    np.testing.assert_allclose(other_batches.views_of(tr).astype(np.float32),
                               viewed.views_of(tr).astype(np.float32), rtol=2e-3, atol=2e-3)


def test_raising_k_computes_only_the_new_views_and_keeps_the_first(viewed, tmp_path):
    out = tmp_path / "grow"
    plain, s0 = _extract(out, 0)
    n_base = s0.computed_shards
    first, s1 = _extract(out, 1)  # a cache made without views gains one, its plain shards kept
    assert (s1.computed_shards, s1.reused_shards) == (n_base, n_base) and first.augment == DEFAULT_RECIPE
    kept = {p.name: _sha(p) for p in (out / "shards").glob("*.h5")}
    grown, s2 = _extract(out, 2)
    assert (s2.computed_shards, s2.reused_shards) == (n_base, 2 * n_base)
    assert {p.name: _sha(p) for p in (out / "shards").glob("*.h5") if p.name in kept} == kept
    tr = grown.split_rows("train")
    np.testing.assert_array_equal(grown.views_of(tr), viewed.views_of(tr))  # views 1 and 2 as a K=2 run makes them
    fewer, s3 = _extract(out, 0)  # asking for fewer throws nothing away
    assert s3.noop and fewer.views == 2 and "keeps the 2 views" in " ".join(s3.notes)


def test_the_recipe_is_part_of_the_key_and_the_default_keeps_older_keys(viewed, tmp_path):
    plain, _ = _extract(tmp_path / "plain", 0)
    assert plain.key == viewed.key  # adding views to a cache keeps its plain shards
    with pytest.raises(store.KeyMismatchError, match="augment"):
        _extract(viewed.path, 2, augment="flip,seed=1")
    manifest = store.read_manifest(viewed.path)  # views made under another default recipe are never mixed in
    forged = tmp_path / "forged"
    shutil.copytree(viewed.path, forged)
    store.write_manifest(forged, {**manifest, "augment": "flip,crop=0.6,rotate=10,seed=0"})
    with pytest.raises(store.CacheError, match="holds views made with the recipe 'flip,crop=0.6"):
        _extract(forged, 3)
    with pytest.raises(FeatcacheError, match="views must be an integer of at least 0"):
        _extract(tmp_path / "neg", -1)


def test_views_from_the_command_line_and_a_bad_recipe_is_one_line(tmp_path, fashion_mnist_available):
    out = tmp_path / "cli"
    proc = run_here("extract", "fashion_mnist:test", *TINY_ARGS, "--limit", "60", "--views", "2",
                         "--augment", "flip,crop=0.7", "--out", out)
    assert "2 augmented views of each train image (flip,crop=0.7,seed=0)" in proc.stderr  # progress: stderr
    assert "augmented views" in proc.stderr.split("bytes per image")[1]  # the projected size counts them
    assert "2 per train image" in proc.stdout
    cache = featcache.open_cache(out)
    assert cache.views == 2 and cache.augment == "flip,crop=0.7,seed=0"
    info = run_here("info", out)
    assert "flip,crop=0.7,seed=0" in info.stdout
    bad = run_here("extract", "fashion_mnist:test", *TINY_ARGS, "--limit", "60", "--views", "2",
                        "--augment", "flip,zoom=2", "--out", tmp_path / "bad", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "zoom" in bad.stderr
    assert not (tmp_path / "bad").exists()


KILL_ARGS = ["fashion_mnist:test", *TINY_ARGS, "--limit", "600", "--shard-size", "64", "--views", "2", "--quiet"]


@pytest.mark.slow
def test_a_kill_during_view_extraction_resumes_to_the_same_cache(tmp_path_factory, tmp_path, fashion_mnist_available):
    reference = reference_cache(tmp_path_factory, KILL_ARGS)
    out = tmp_path / "killed"
    proc = start_featcache("extract", *KILL_ARGS, "--out", out)
    n_base = 10  # 600 items in shards of 64

    def first_view_shard_written():
        shards = list((out / "shards").glob("*.h5")) if (out / "shards").is_dir() else []
        return any(p.name[0].isdigit() and int(p.stem) >= n_base for p in shards)

    kill_when(proc, first_view_shard_written, timeout=300, poll=0.02)
    partial = store.read_manifest(out)
    assert partial is not None and not partial["complete"] and partial["views"] == 2
    run_here("extract", *KILL_ARGS, "--out", out)
    assert_same_cache(reference, out)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_a_cache_gaining_views_stays_readable_with_the_views_it_had_even_when_killed(tmp_path,
                                                                                      fashion_mnist_available):
    args = ["fashion_mnist:test", *TINY_ARGS, "--limit", "120", "--shard-size", "64", "--quiet"]
    out = tmp_path / "grow"
    run_here("extract", *args, "--views", "1", "--out", out)
    before = featcache.open_cache(out)
    tr = before.split_rows("train")
    first_view = before.views_of(tr)
    kill_at("before-rename:shard", tmp_path / "paused", "extract", *args, "--views", "3", "--out", out)
    during = featcache.open_cache(out)  # still complete, with its one view
    assert during.complete and during.views == 1 and during.verify() == []
    np.testing.assert_array_equal(during.views_of(tr), first_view)
    assert store.read_manifest(out)["views_target"] == 3
    run_here("extract", *args, "--views", "3", "--out", out)
    after = featcache.open_cache(out)
    assert after.views == 3 and after.verify() == [] and "views_target" not in after.manifest
    np.testing.assert_array_equal(after.views_of(tr)[:1], first_view)


# ---------------------------------------------------------------- heads


def test_each_head_trains_on_the_views_its_entry_names(viewed):
    masks = viewed.split_masks()
    n_train = int(masks["train"].sum())
    rows = featcache.train(viewed, "logreg")
    assert rows.card["views"] == {"count": 2, "mode": "rows", "recipe": DEFAULT_RECIPE}
    assert rows.estimator.steps[-1][1].n_features_in_ == viewed.output_info()["shape"][0]
    mean = featcache.train(viewed, "knn", params={"n_neighbors": 3})
    assert mean.card["views"]["mode"] == "mean" and mean.estimator.steps[-1][1].n_samples_fit_ == n_train
    plain = featcache.train(viewed, "logreg", views="none")
    assert "views" not in plain.card
    assert rows.estimator.steps[-1][1].n_iter_ is not None
    with pytest.raises(FeatcacheError, match="'draw' is for Keras heads"):
        featcache.train(viewed, "logreg", views="draw")
    with pytest.raises(FeatcacheError, match="Keras head draws"):
        featcache.train(viewed, "keras_linear", views="rows")


def test_sklearn_rows_are_the_plain_rows_and_every_view_with_its_label(viewed):
    from sklearn.linear_model import LogisticRegression

    masks = viewed.split_masks()
    tr = np.flatnonzero(masks["train"])
    X, y = viewed.features()[tr].astype(np.float32), viewed.labels()[tr]
    V = viewed.views_of(tr).astype(np.float32)
    ours = featcache.train(viewed, LogisticRegression(max_iter=500))
    by_hand = LogisticRegression(max_iter=500).fit(np.concatenate([X, *V]), np.tile(y, 3))
    np.testing.assert_allclose(ours.estimator.steps[-1][1].coef_, by_hand.coef_, rtol=1e-4, atol=1e-5)


def test_a_keras_head_draws_one_view_per_image_per_epoch_the_same_streamed_or_in_memory(viewed):
    from featcache.heads.views import choice

    shown = [choice(0, e, 40, 2) for e in range(6)]
    assert all(len(s) == 40 and set(s.tolist()) <= {0, 1, 2} for s in shown)
    assert len({tuple(s) for s in shown}) == 6  # a new draw each epoch
    params = {"epochs": 5}
    memory = featcache.train(viewed, "keras_linear", params=params)
    streamed = featcache.train(viewed, "keras_linear", params=params, stream=True)
    plain = featcache.train(viewed, "keras_linear", params=params, views="none")
    X = viewed.features().astype(np.float32)
    p_mem, p_stream = memory.estimator.predict_proba(X), streamed.estimator.predict_proba(X)
    np.testing.assert_allclose(p_mem, p_stream, atol=1e-5)  # the very same batches
    assert not np.allclose(p_mem, plain.estimator.predict_proba(X), atol=1e-5)  # and they did see the views
    assert memory.card["views"]["mode"] == "draw"


def test_a_keras_head_standardises_over_the_views_it_trains_on(viewed):
    from featcache.heads.keras_head import KerasHeadClassifier

    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    X = rng.normal(size=(60, 4)).astype(np.float32) + y[:, None]
    X[:, 3] = 0  # a feature the plain rows never use ...
    V = np.stack([X + rng.normal(scale=0.1, size=X.shape)]).astype(np.float32)
    V[0, :, 3] = rng.normal(scale=3.0, size=60)  # ... and a view does: divided by ~0, it swamped the head
    clf = KerasHeadClassifier(epochs=3, validation_fraction=0.0).fit(X, y, views=V)
    variance = np.asarray(clf.model_.get_layer("standardize").variance).reshape(-1)
    np.testing.assert_allclose(variance, np.concatenate([X, V[0]]).var(0), rtol=1e-4)
    # streamed from a cache: the same statistics, over the plain train rows and every view
    streamed = featcache.train(viewed, "keras_linear", params={"epochs": 1}, stream=True).estimator.steps[-1][1]
    tr = viewed.split_rows("train")
    rows = np.concatenate([viewed.features()[tr], *viewed.views_of(tr)]).astype(np.float64)
    np.testing.assert_allclose(np.asarray(streamed.model_.get_layer("standardize").mean).reshape(-1), rows.mean(0),
                               rtol=1e-4, atol=1e-5)


def test_streamed_partial_fit_heads_see_the_views_too(viewed):
    with_views = featcache.train(viewed, "sgd", stream=True)
    without = featcache.train(viewed, "sgd", stream=True, views="none")
    assert with_views.card["views"]["count"] == 2
    coef = with_views.estimator.steps[-1][1].coef_
    assert not np.allclose(coef, without.estimator.steps[-1][1].coef_)
    with pytest.raises(FeatcacheError, match="'mean' needs the features in memory"):
        featcache.train(viewed, "sgd", stream=True, views="mean")


def test_bench_rows_say_the_views_they_used_and_its_best_model_trained_on_them(viewed, tmp_path):
    rows = featcache.bench(viewed, ["logreg", "lda"], out=tmp_path / "report", learning_curve=(), baseline_heads=(),
                           leakage=False)
    n_train = int(viewed.split_masks()["train"].sum())
    for row in rows:
        assert row["status"] == "ok" and row["views"] == 2 and row["views_mode"] == "rows"
        assert row["augment"] == DEFAULT_RECIPE and "2 augmented views" in row["note"]
        assert row["features"].endswith("+ 2 views")  # what the report's table shows
    assert "+ 2 views" in (tmp_path / "report" / "report.md").read_text()
    card = json.loads((tmp_path / "report" / "best_model" / "card.json").read_text())
    assert card["views"]["count"] == 2
    again = featcache.bench(viewed, ["logreg", "lda"], out=tmp_path / "report", learning_curve=(),
                            baseline_heads=(), leakage=False, views="none")  # another row: the views are settings
    assert all(r["views"] == 0 and r["n_train"] <= n_train + int(viewed.split_masks()["val"].sum()) for r in again)
    cv = featcache.bench(viewed, ["logreg"], out=tmp_path / "cv", cv=3, learning_curve=(), baseline_heads=(),
                         leakage=False, save_best=False)
    assert cv[0]["status"] == "ok" and cv[0]["n_train"] == 3 * n_train
    with pytest.raises(FeatcacheError, match="views must be one of"):
        featcache.bench(viewed, ["logreg"], out=tmp_path / "bad", views="draw")


@pytest.mark.slow
def test_a_pipeline_with_views_reruns_only_the_new_views_and_the_heads_that_saw_too_few(tmp_path,
                                                                                       fashion_mnist_available):
    text = """
[pipeline]
name = "v"
out = "out"
[data]
source = "fashion_mnist:test"
limit = 150
[[extract]]
name = "a"
backbone = "mobilenet_v2"
weights = "none"
image_size = 32
shard_size = 64
views = 1
augment = "flip,crop=0.7,seed=3"
[train]
heads = ["logreg"]
"""
    path = tmp_path / "v.toml"
    path.write_text(text)
    first = run_here("run", path, "--quiet", cwd=tmp_path)
    assert "6 shards computed" in first.stderr  # 3 plain + 3 of the view
    card = json.loads((tmp_path / "out" / "models" / "a-logreg" / "card.json").read_text())
    assert card["views"] == {"count": 1, "mode": "rows", "recipe": "flip,crop=0.7,seed=3"}
    same = run_here("run", path, "--quiet", cwd=tmp_path)
    assert "nothing extracted" in same.stderr and "logreg: up to date" in same.stderr
    path.write_text(text.replace("views = 1", "views = 2"))
    more = run_here("run", path, "--quiet", cwd=tmp_path)
    assert "3 shards computed" in more.stderr and "logreg: up to date" not in more.stderr
    card = json.loads((tmp_path / "out" / "models" / "a-logreg" / "card.json").read_text())
    assert card["views"]["count"] == 2
