"""train --tensorboard: a Keras head's epochs as TensorBoard scalars, read back from the event files."""

import os

import pytest

import featcache
from featcache.cli import main

pytest.importorskip("tensorboard")


def _events(run_dir):
    """``{tag: [(step, value), ...]}`` of the event files in ``run_dir``."""
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    return {t: [(e.step, float(np.asarray(tensor_util.make_ndarray(e.tensor_proto)))) for e in acc.Tensors(t)]
            for t in tags["tensors"]} | {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}


def _scalars(run_dir):
    return {t: [step for step, _ in points] for t, points in _events(run_dir).items()}


def test_keras_head_epochs_are_logged(small_cache, tmp_path):
    logs = tmp_path / "tb"
    res = featcache.train(small_cache, "keras_mlp", params={"epochs": 3, "patience": 10}, tensorboard=logs)
    epochs = res.estimator.steps[-1][1].n_iter_
    assert epochs == 3
    assert _scalars(logs / "train")["epoch_loss"] == [0, 1, 2]  # one point an epoch, train and val
    assert _scalars(logs / "validation")["epoch_loss"] == [0, 1, 2]
    # each epoch's accuracy beside its loss; at the epoch whose weights the head kept, the head's own accuracy
    from featcache.store import split_masks

    val_loss = res.estimator.steps[-1][1].history_["val_loss"]
    kept = val_loss.index(min(val_loss))
    masks, y = split_masks(small_cache), small_cache.labels()
    X = small_cache.features().reshape(len(y), -1)
    for run, split in (("train", "train"), ("validation", "val")):
        points = _events(logs / run)["epoch_accuracy"]
        assert [s for s, _ in points] == [0, 1, 2]
        ours = float((res.estimator.predict(X[masks[split]]) == y[masks[split]]).mean())
        assert points[kept][1] == pytest.approx(ours, abs=1e-6)
    assert res.estimator.steps[-1][1].__getstate__()["callbacks"] is None  # the saved head holds no writer


def test_a_scikit_learn_head_has_no_epochs(small_cache, tmp_path, capsys):
    code = main(["train", str(small_cache.path), "--head", "logreg", "--tensorboard", str(tmp_path / "tb")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "only Keras heads have epochs" in err[0]
    assert not os.path.exists(tmp_path / "tb")


def test_a_regression_keras_head_logs_its_loss(small_cache, tmp_path):
    import shutil

    shutil.copytree(small_cache.path, tmp_path / "cache")
    cache = featcache.open_cache(tmp_path / "cache")
    featcache.attach_targets(cache, {"id": cache.ids(), "shade": [float(v) * 10.0 for v in cache.labels()]})
    featcache.train(cache, "keras_linear", target="shade", params={"epochs": 2, "patience": 10},
                    tensorboard=tmp_path / "tb")
    assert _scalars(tmp_path / "tb" / "train")["epoch_loss"] == [0, 1]
    assert _scalars(tmp_path / "tb" / "validation")["epoch_loss"] == [0, 1]
