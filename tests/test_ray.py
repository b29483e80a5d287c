"""The Ray engine: same shards, same cache, same guarantees, on a local Ray instance.

The README's command and the killed-worker test start their own local
instance (``ray.init`` with no address, no network), the way a user's first
``--engine ray`` run does; the rest run in this process and share one instance,
which saves a Ray start and a TensorFlow import each.
"""

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import featcache
from featcache import store

from conftest import TINY_ARGS, assert_same_cache, reference_cache, run_featcache, run_here, start_featcache

if os.environ.get("CI"):
    import ray  # noqa: F401 - CI installs the ray extra; a missing one must fail, not skip
else:
    pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARGS = ["fashion_mnist:test", *TINY_ARGS, "--limit", "1280", "--shard-size", "128", "--quiet"]


@pytest.fixture(scope="module")
def local(tmp_path_factory, fashion_mnist_available):
    return reference_cache(tmp_path_factory, ARGS)


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray instance for the in-process tests, started with the engine's own settings."""
    from featcache import ray_cluster

    started = ray_cluster.connect()
    yield
    if started:
        ray_cluster.import_ray().shutdown()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray's raylet and its workers are children of the driver)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _n_shards(out: Path) -> int:
    return len(list((out / "shards").glob("*.h5"))) if (out / "shards").is_dir() else 0


def test_ray_engine_builds_the_same_cache_as_the_local_engine(local, shared_ray, tmp_path):
    out = tmp_path / "ray"
    proc = run_here("extract", *ARGS, "--out", out, "--engine", "ray", "--workers", "2")
    assert "10 computed" in proc.stdout
    assert_same_cache(local, out)
    timings = featcache.open_cache(out).manifest["timings"]
    assert timings["engine"] == "ray" and timings["workers"] == 2
    # the same command again is the local engine's no-op, whichever engine asked
    again = run_here("extract", *ARGS, "--out", out, "--engine", "ray")
    assert "nothing to do" in again.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the Ray workers")
def test_a_killed_ray_worker_has_its_shard_retried_and_the_cache_completes(local, tmp_path):
    out = tmp_path / "ray"
    proc = start_featcache("extract", *ARGS, "--out", out, "--engine", "ray", "--workers", "2",
                           "--shard-size", "128")
    try:
        deadline = time.monotonic() + 180
        while _n_shards(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [p for p in _descendants(proc.pid) if "ray::ShardWorker" in _cmdline(p)]
        assert proc.poll() is None and workers, "the run ended before a worker could be killed"
        os.kill(workers[0], signal.SIGKILL)
        assert proc.wait(timeout=240) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_same_cache(local, out)
    assert featcache.open_cache(out).manifest["timings"]["worker_restarts"] >= 1
    assert not [p for p in (out / "shards").iterdir() if not p.name[:5].isdigit()]  # no temporaries left


def test_ray_engine_resumes_a_killed_local_run(local, shared_ray, tmp_path):
    out = tmp_path / "mixed"
    proc = start_featcache("extract", *ARGS, "--out", out)
    deadline = time.monotonic() + 120
    while _n_shards(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not store.read_manifest(out)["complete"]
    kept = _n_shards(out)  # finished shard files (the manifest may lag the last rename by one)
    assert 0 < kept < 10
    finish = run_here("extract", *ARGS, "--out", out, "--engine", "ray")
    assert f"{10 - kept} computed, {kept} reused" in finish.stdout
    assert_same_cache(local, out)


def test_bench_runs_its_heads_through_joblibs_ray_backend(local, shared_ray, tmp_path):
    from featcache.cli import main

    common = ["bench", local, "--heads", "lda,gaussian_nb", "--baseline-heads", "", "--quiet"]
    # the threads reference needs no fresh process: in-process saves a TensorFlow import
    assert main([*map(str, common), "--out", str(tmp_path / "threads")]) == 0
    run_here(*common, "--out", tmp_path / "ray", "--backend", "ray", "--n-jobs", "2")
    rows = {}
    for name in ("threads", "ray"):
        lines = (tmp_path / name / "results.jsonl").read_text().splitlines()
        rows[name] = {r["head"]: r for r in map(json.loads, lines)}
    assert set(rows["ray"]) == {"lda", "gaussian_nb"}
    for head in ("lda", "gaussian_nb"):
        assert rows["ray"][head]["status"] == "ok"
        assert np.isclose(rows["ray"][head]["accuracy"], rows["threads"][head]["accuracy"])


def test_without_ray_the_ray_engine_says_how_to_install_it(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ImportError('No module named ray')\n")  # as if ray were not installed
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    proc = run_featcache("extract", *ARGS, "--out", tmp_path / "c", "--engine", "ray", env=env, check=False)
    assert proc.returncode != 0
    assert "pip install 'featcache[ray]'" in proc.stderr
    assert not (tmp_path / "c").exists()  # refused before any work
    # the local engine does not need Ray at all
    run_featcache("extract", *ARGS, "--limit", "64", "--out", tmp_path / "local", env=env)


def test_the_readme_ray_command_runs_as_written(tmp_path, shared_ray, fashion_mnist_available):
    from conftest import REPO

    text = (REPO / "README.md").read_text().split("## When one machine is not enough", 1)[1]
    command = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip()
    words = command.split()
    assert words[0] == "featcache" and "--engine" in words and "\n" not in command
    # in-process on the module's Ray instance: a fresh one is what the killed-worker test starts
    proc = run_here(*words[1:], "--quiet", cwd=tmp_path)
    assert "extraction summary" in proc.stdout
    cache = featcache.open_cache(tmp_path / "caches" / "fm-ray")
    assert len(cache) == 512 and cache.manifest["timings"]["engine"] == "ray"


def test_views_built_on_ray_equal_the_local_engines_row_for_row(tmp_path, shared_ray, fashion_mnist_available):
    args = ["fashion_mnist:test", *TINY_ARGS, "--limit", "300", "--shard-size", "64", "--views", "2", "--quiet"]
    run_here("extract", *args, "--out", tmp_path / "local")
    run_here("extract", *args, "--out", tmp_path / "ray", "--engine", "ray", "--workers", "2")
    assert_same_cache(tmp_path / "local", tmp_path / "ray")  # every view of every image, bit for bit
