"""A SIGKILL at any moment, then the same command, gives an uninterrupted run's cache."""

import time

import pytest

import featcache
from featcache import store

from conftest import TINY_ARGS, assert_same_cache, kill_when, reference_cache, start_featcache, run_here

ARGS = ["fashion_mnist:test", *TINY_ARGS, "--limit", "1500", "--shard-size", "128", "--quiet"]


def _start(out):
    return start_featcache("extract", *ARGS, "--out", out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fashion_mnist_available):
    return reference_cache(tmp_path_factory, ARGS)


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed"
    proc = _start(out)
    kill_when(proc, lambda: len(list((out / "shards").glob("*.h5")) if (out / "shards").is_dir() else []) >= 3)
    partial = store.read_manifest(out)
    assert partial is not None and not partial["complete"]
    n_before = len(list((out / "shards").glob("*.h5")))
    assert 3 <= n_before < 12
    # no temporary file ever looks like a shard
    assert all(p.name[0].isdigit() for p in (out / "shards").glob("*.h5"))

    rerun = run_here("extract", *ARGS, "--out", out)
    assert f"{12 - n_before} computed, {n_before} reused" in rerun.stdout
    assert_same_cache(reference, out)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
def test_reader_during_a_write_sees_only_complete_shards(reference, tmp_path):
    out = tmp_path / "live"
    proc = _start(out)
    seen = 0
    try:
        while proc.poll() is None:
            m = store.read_manifest(out) if (out / "manifest.json").exists() else None
            if m and m["shards"]:
                cache = featcache.open_cache(out, allow_partial=True)  # one consistent manifest snapshot
                assert cache.verify(deep=False) == []
                assert len(cache.labels()) == len(cache) == sum(s["n_rows"] for s in cache.manifest["shards"])
                seen = max(seen, len(cache.manifest["shards"]))
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    assert seen >= 1
    assert_same_cache(reference, out)
