"""Resume at any size (issue 29): the default shard size follows the dataset, so a kill keeps all but seconds."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from featcache import store
from featcache.plan import auto_shard_size

from conftest import REPO, TINY_ARGS, assert_same_cache, run_here

N = 500


def _folder(root, n=N):
    """``n`` small distinct PNGs in two class folders."""
    y, x = np.mgrid[0:64, 0:64]
    for i in range(n):
        a = ((x * (i % 5 + 1) + y * (i % 7 + 1)) % 256).astype(np.uint8)
        d = root / "ab"[i % 2]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([a, a.T, np.full_like(a, i % 256)], -1)).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("auto") / "imgs")


def test_the_automatic_shard_size_rule():
    assert [auto_shard_size(n) for n in (1, 300, 2048, 2049, 5000, 10_000, 32_768, 10**6)] == \
        [64, 64, 64, 128, 256, 512, 1024, 1024]


def _progress_kill(args, target: int, timeout=240) -> int:
    """Start ``extract``, SIGKILL it once its progress bar shows ``target`` images through the CNN; returns that count.

    FORCE_COLOR makes rich draw the bar into the pipe: its count is what went through the model (it advances after
    each batch's model call), read within a poll of the kill.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "FORCE_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "featcache", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.set_blocking(proc.stderr.fileno(), False)
    seen, text, deadline = 0, b"", time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            text = (text + (proc.stderr.read() or b""))[-4096:]
            counts = re.findall(rb"(\d+)/" + str(N).encode(), text)
            seen = int(counts[-1]) if counts else 0
            if seen >= target:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return seen if proc.returncode == -signal.SIGKILL else -1


@pytest.mark.slow
def test_sigkill_at_a_random_point_at_the_default_shard_size_loses_at_most_a_shard(folder, tmp_path):
    # 96 px keeps the CNN slower than a shard's fsyncs, as real CNNs are: a tiny model outruns the disk and the writer
    # queue then holds up to three computed shards (milliseconds of work, yet more than one shard of images)
    args = ["extract", folder, *TINY_ARGS, "--image-size", "96", "--decode-threads", "1"]  # no --shard-size
    reference = tmp_path / "reference"
    run_here(*args, "--quiet", "--out", reference)
    ref = store.read_manifest(reference)
    shard = ref["params"]["shard_size"]
    assert shard == auto_shard_size(N) == 64 and ref["n_shards"] == 8  # a kill can keep something
    assert ref["timings"]["images_computed"] == N

    rng = random.Random()
    for attempt in range(3):  # the bar may jump past a target near the end: try again
        target = rng.randint(int(0.3 * N), int(0.8 * N))
        out = tmp_path / f"killed{attempt}"
        before = _progress_kill([*args, "--out", out], target)
        if before > 0:
            break
    assert before >= target, "never killed mid-run"
    partial = store.read_manifest(out)
    assert partial is None or not partial["complete"]

    run_here(*args, "--quiet", "--out", out)
    resumed = store.read_manifest(out)["timings"]["images_computed"]
    total = before + resumed  # images through the CNN: the killed run's (its bar) and the resume's
    assert total <= 1.1 * N + shard, f"killed at {before} (target {target}), resumed {resumed}"
    assert_same_cache(reference, out)


def _plain_shards(manifest):
    return [s for s in manifest["shards"] if s["index"] < manifest["n_shards"]]


@pytest.mark.slow
def test_a_cache_made_before_automatic_sizes_is_up_to_date_and_resumes_at_its_own_size(folder, tmp_path):
    old = tmp_path / "old"
    args = ["extract", folder, *TINY_ARGS, "--quiet"]
    run_here(*args, "--shard-size", "4096", "--out", old)
    manifest = json.loads((old / "manifest.json").read_text())
    for s in manifest["shards"]:  # as a cache made before alpha counts: no count anywhere
        s.pop("alpha")
    manifest["counts"].pop("alpha")
    (old / "manifest.json").write_text(json.dumps(manifest, indent=2))
    before = (old / "manifest.json").read_bytes()

    rerun = run_here(*args, "--out", old)  # the default shard size: the cache's own 4096, recognised by its key
    assert "nothing to do" in rerun.stdout, rerun.stdout
    assert (old / "manifest.json").read_bytes() == before
    assert "not counted" in run_here("info", old).stdout

    # an unfinished cache made with an explicit size resumes at that size when the flag is left out
    explicit = tmp_path / "explicit"
    run_here(*args, "--shard-size", "100", "--out", explicit)
    manifest = json.loads((explicit / "manifest.json").read_text())
    last = manifest["shards"].pop()  # as if killed before the last shard was committed
    (explicit / last["file"]).unlink()
    manifest["complete"] = False
    (explicit / "manifest.json").write_text(json.dumps(manifest, indent=2))
    resumed = run_here(*args, "--out", explicit)
    assert "1 computed, 4 reused" in resumed.stdout, resumed.stdout
    manifest = store.read_manifest(explicit)
    assert manifest["complete"] and manifest["params"]["shard_size"] == 100
    assert manifest["timings"]["images_computed"] == 100


@pytest.mark.slow
def test_an_explicit_shard_size_still_wins_and_another_cache_gets_the_automatic_one(folder, tmp_path):
    args = ["extract", folder, *TINY_ARGS, "--quiet", "--limit", "200"]
    run_here(*args, "--shard-size", "50", "--out", tmp_path / "a")
    assert store.read_manifest(tmp_path / "a")["params"]["shard_size"] == 50
    run_here(*args, "--out", tmp_path / "b")
    b = store.read_manifest(tmp_path / "b")
    assert b["params"]["shard_size"] == 64 and b["n_shards"] == 4
    assert "nothing to do" in run_here(*args, "--out", tmp_path / "b").stdout
