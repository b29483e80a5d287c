"""``limit``'s stratified sample: by hand, the very rows scikit-learn's ``resample(stratify=)`` picks.

The rows picked are part of existing caches' keys (a subset's fingerprint
lists its ids), so the hand-written sample must agree with scikit-learn's
on every input, not just in distribution.
"""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.utils import resample

from featcache.sources import ArraySource, Item, stratified_sample

from conftest import REPO


def _items(labels, splits=None):
    splits = splits if splits is not None else [None] * len(labels)
    return [Item(i, f"id{i}", label, split) for i, (label, split) in enumerate(zip(labels, splits))]


def _sklearn_rows(items, n, seed):
    """What the sample was before: scikit-learn's resample over (split, label) strata, in source order."""
    strata = np.array([f"{it.split}|{it.label}" for it in items])
    picked = resample(np.arange(len(items)), replace=False, n_samples=n, stratify=strata, random_state=seed)
    return sorted(int(i) for i in picked)


def _assert_same(items, n, seed):
    ours = [it.index for it in stratified_sample(items, n, seed)]
    assert ours == _sklearn_rows(items, n, seed), (n, seed, len(items))


def _random_case(rng):
    """Items with a random number of strata of random sizes, some of one item, some splits, shuffled order."""
    n_strata = int(rng.integers(1, 40))
    sizes = rng.integers(1, rng.choice([2, 5, 30]) + 1, size=n_strata)
    labels = np.repeat(np.arange(n_strata), sizes)
    splits = rng.choice([None, "train", "val", "test"], size=len(labels)) if rng.random() < 0.5 else None
    order = rng.permutation(len(labels)) if rng.random() < 0.7 else np.arange(len(labels))
    labels = labels[order].tolist()
    return _items(labels, None if splits is None else splits[order].tolist())


def test_the_sample_is_sklearns_on_many_random_cases():
    rng = np.random.default_rng(2026)
    for _ in range(400):
        items = _random_case(rng)
        if len(items) < 2:
            continue
        n = int(rng.choice([1, len(items) - 1, rng.integers(1, len(items))]))
        _assert_same(items, n, int(rng.integers(0, 2**31 - 1)))


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_ties_in_remainders_are_broken_like_sklearn(seed):
    # equal strata: every remainder ties, so the seed alone decides which strata get the extra row
    for n_strata, per, n in [(7, 3, 10), (10, 5, 13), (3, 1, 2), (4, 2, 5), (12, 4, 25)]:
        _assert_same(_items(np.repeat(np.arange(n_strata), per).tolist()), n, seed)
    # several tie levels: three strata of 5, three of 3, one of 1
    _assert_same(_items([0] * 5 + [1] * 5 + [2] * 5 + [3] * 3 + [4] * 3 + [5] * 3 + [6]), 9, seed)


@pytest.mark.parametrize("seed", [0, 3, 99])
def test_one_item_strata_many_strata_and_all_but_one(seed):
    singletons = _items(list(range(50)))  # fifty strata of one item each
    for n in (1, 10, 25, 49):
        _assert_same(singletons, n, seed)
    many = _items((np.arange(1000) % 137).tolist())
    for n in (1, 136, 137, 500, 999):
        _assert_same(many, n, seed)
    _assert_same(_items([0] * 40 + [1]), 40, seed)  # k = n - 1 with a one-item stratum
    _assert_same(_items([5] * 30), 29, seed)  # a single stratum


def test_strata_sort_as_strings_with_their_bar_like_sklearn():
    # labels 2 and 10 sort as "None|10" < "None|2"; split names and -1 (unlabelled) sort among them
    labels = [2] * 7 + [10] * 7 + [-1] * 4 + [1] * 3 + [11] * 5
    splits = ["train", "test", None, "val", "train", "test", "val"] * 3 + ["train"] * 5
    items = _items(labels, splits)
    for seed in range(20):
        for n in (3, 5, 11, len(items) - 1):
            _assert_same(items, n, seed)
    _assert_same(_items(labels), 6, 4)


def test_limit_needs_no_scikit_learn():
    # a no-op pipeline run with a limit draws this sample: importing scikit-learn would dominate its startup
    code = ("import sys, numpy as np; from featcache.sources import ArraySource; "
            "sub = ArraySource(np.zeros((40, 4, 4), np.uint8), np.arange(40) % 4).subset(limit=10); "
            "assert len(sub.items) == 10; print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.filterwarnings("ignore::featcache.sources.SubsetWarning")  # a small limit drops small classes
def test_a_subset_keeps_sklearns_ids_and_so_its_fingerprint():
    labels = np.repeat(np.arange(10), [30, 29, 31, 5, 1, 44, 30, 30, 2, 8])
    src = ArraySource(np.zeros((len(labels), 4, 4), np.uint8), labels)
    for limit, seed in ((60, 0), (17, 3), (len(labels) - 1, 1)):
        sub = src.subset(limit=limit, limit_seed=seed)
        assert [it.id for it in sub.items] == [src.items[i].id for i in _sklearn_rows(src.items, limit, seed)]
