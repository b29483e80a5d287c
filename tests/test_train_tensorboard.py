"""train --tensorboard: a Keras head's epochs as TensorBoard scalars, read back from the event files."""

import os

import pytest

import featcache
from featcache.cli import main

pytest.importorskip("tensorboard")


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    return {t: [e.step for e in acc.Tensors(t)] for t in tags["tensors"]} | \
        {t: [e.step for e in acc.Scalars(t)] for t in tags["scalars"]}


def test_keras_head_epochs_are_logged(small_cache, tmp_path):
    logs = tmp_path / "tb"
    res = featcache.train(small_cache, "keras_mlp", params={"epochs": 3, "patience": 10}, tensorboard=logs)
    epochs = res.estimator.steps[-1][1].n_iter_
    assert epochs == 3
    assert _scalars(logs / "train")["epoch_loss"] == [0, 1, 2]  # one point an epoch, train and val
    assert _scalars(logs / "validation")["epoch_loss"] == [0, 1, 2]
    assert res.estimator.steps[-1][1].__getstate__()["callbacks"] is None  # the saved head holds no writer


def test_a_scikit_learn_head_has_no_epochs(small_cache, tmp_path, capsys):
    code = main(["train", str(small_cache.path), "--head", "logreg", "--tensorboard", str(tmp_path / "tb")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "only Keras heads have epochs" in err[0]
    assert not os.path.exists(tmp_path / "tb")
