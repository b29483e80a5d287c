import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from featcache.datasets import DEBIAN_FASHION_MNIST  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The small extraction every stage-one test uses: random-but-seeded MobileNetV2 at 32 px.
TINY = dict(backbone="mobilenet_v2", weights="none", image_size=32, batch_size=32)
# The head of the tiny pipelines the pipeline tests write ({source} to fill): TINY's backbone as one extract.
TINY_PIPE = """
[pipeline]
name = "t"
[data]
source = "{source}"
[[extract]]
name = "a"
backbone = "mobilenet_v2"
weights = "none"
image_size = 32
"""
TINY_ARGS = ["--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32", "--batch-size", "32"]


def pytest_addoption(parser):
    parser.addoption("--kill-count", type=int, default=int(os.environ.get("FEATCACHE_KILL_COUNT", "3")),
                     help="SIGKILLs in the random kill loop (the full reliability run uses 20)")


def run_featcache(*args, env=None, timeout=300, check=True, cwd=REPO):
    """Run the real console entry point in a fresh process."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "featcache", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"featcache {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def run_here(*args, check=True, cwd=None, timeout=None, env=None):
    """The console entry point in this process, answered like :func:`run_featcache`.

    For a test about what a command does rather than about a fresh process: it
    saves the TensorFlow import a new interpreter pays (about 6 s of CPU each).
    ``env`` holds variables read at run time (FEATCACHE_HOME), set for the call only.
    """
    import contextlib
    import io
    from unittest import mock

    from featcache.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd or REPO), \
            mock.patch.dict(os.environ, env or {}):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    proc = subprocess.CompletedProcess(["featcache", *map(str, args)], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"featcache {' '.join(map(str, args))} failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_featcache(*args, env=None):
    """Start the real entry point without waiting: for tests that kill it mid-run."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "featcache", *map(str, args)], cwd=REPO, env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def paused_featcache(point, marker, *args, timeout=180):
    """Start the entry point with the fault-injection pause at ``point``; return it once it waits there."""
    proc = start_featcache(*args, env={"FEATCACHE_PAUSE_AT": point, "FEATCACHE_PAUSE_FILE": str(marker)})
    deadline = time.monotonic() + timeout
    while not Path(marker).exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "never reached the pause point"
        time.sleep(0.05)
    return proc


def kill_when(proc, ready, timeout=240, poll=0.05):
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail if it ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            break
        if proc.poll() is not None:
            pytest.fail(f"extract ended before it could be killed: {proc.stderr.read()}")
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def kill_at(point, marker, *args):
    """SIGKILL a run exactly at the pause point ``point`` (a temporary written, a rename not yet made)."""
    proc = paused_featcache(point, marker, *args)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def reference_cache(tmp_path_factory, args):
    """An uninterrupted extraction with ``args``: what every interrupted run must end up equal to."""
    out = tmp_path_factory.mktemp("ref") / "cache"
    run_here("extract", *args, "--out", out)
    return out


@pytest.fixture(scope="session")
def fashion_mnist_available():
    if not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's dataset-fashion-mnist (.ci/run does)")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return DEBIAN_FASHION_MNIST


@pytest.fixture(scope="session")
def photos():
    """The two real photos scikit-learn ships (427 x 640 RGB)."""
    from sklearn.datasets import load_sample_images

    return [np.asarray(img, dtype=np.uint8) for img in load_sample_images().images]


def _crops(photo, n, size, seed):
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    out = []
    for _ in range(n):
        y, x = rng.integers(0, h - size), rng.integers(0, w - size)
        out.append(photo[y:y + size, x:x + size])
    return out


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory, photos):
    """train/ and test/ split folders of two classes of real JPEG and PNG crops."""
    root = tmp_path_factory.mktemp("photos")
    for split, n in (("train", 8), ("test", 4)):
        for k, (cls, photo) in enumerate(zip(("china", "flower"), photos)):
            d = root / split / cls
            d.mkdir(parents=True)
            for i, crop in enumerate(_crops(photo, n, 96, seed=10 * len(split) + k)):
                ext = ".jpg" if i % 2 == 0 else ".png"
                Image.fromarray(crop).save(d / f"{cls}_{i:02d}{ext}")
    return root


@pytest.fixture
def copy_folder(tmp_path):
    def _copy(src):
        dst = tmp_path / "images"
        shutil.copytree(src, dst)
        return dst
    return _copy


@pytest.fixture(scope="session")
def fm_lite(tmp_path_factory, fashion_mnist_available):
    """2,000 Fashion-MNIST images through the offline ImageNet EfficientNet-Lite0 (96 px), shards of 512.

    Stores the mid-level block10 features first and the final ones second:
    for grey clothing thumbnails, far from ImageNet, the mid-level features
    transfer better (measured: +2-4 points over the final layer's).
    """
    import featcache

    out = tmp_path_factory.mktemp("fmlite") / "cache"
    run_here("extract", "fashion_mnist:test", "--limit", "2000", "--image-size", "96", "--shard-size", "512",
                  "--outputs", "block10_add,head_relu", "--out", out, "--quiet")
    return featcache.open_cache(out)


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory):
    """Three learnable classes of random 16 px images (brightness per class), 150 rows, as arrays."""
    import featcache

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (150, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(150) % 3
    images[labels == 1] //= 2
    images[labels == 2] //= 4
    return featcache.extract(images, labels=labels, out=tmp_path_factory.mktemp("small") / "cache", **TINY)


@pytest.fixture(scope="session")
def fm_cache(tmp_path_factory, fashion_mnist_available):
    """The first 600 Fashion-MNIST test images through the CLI, in shards of 256: (cache directory, process)."""
    out = tmp_path_factory.mktemp("fm") / "cache"
    proc = run_featcache("extract", "fashion_mnist:test", *TINY_ARGS, "--first", "600", "--shard-size", "256",
                         "--out", out)
    return out, proc


SORTED_NAMES = ["cat", "dog", "fox"]


def class_sorted_images(n_per_class=40, size=32, seed=0):
    """Class-sorted (like a class-folder source) uint8 images whose class is visible: one bright channel each."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, (3 * n_per_class, size, size, 3), dtype=np.uint8)
    labels = np.repeat(SORTED_NAMES, n_per_class)
    for k in range(3):
        images[labels == SORTED_NAMES[k], :, :, k] += 120
    return images, labels


@pytest.fixture(scope="session")
def sorted_cache(tmp_path_factory):
    """120 class-sorted images of three named classes (cat, dog, fox), as arrays, in shards of 32."""
    import featcache

    images, labels = class_sorted_images()
    return featcache.extract(images, labels=labels, out=tmp_path_factory.mktemp("sorted") / "cache", shard_size=32,
                             **TINY)


#: an MLP whose peak memory is far above a small head's
BIG_MLP = {"hidden_layer_sizes": (2048, 2048), "max_iter": 2, "early_stopping": False}


@pytest.fixture(scope="session")
def bench_rows(small_cache, tmp_path_factory):
    """bench of four heads on small_cache (no baseline, no best model): (report directory, {head: row})."""
    import featcache

    out = tmp_path_factory.mktemp("honest-report")
    rows = featcache.bench(small_cache, ["gaussian_nb", "knn_cosine", "logreg", "mlp"], params={"mlp": BIG_MLP},
                           out=out, baseline_heads=(), save_best=False)
    return out, {r["head"]: r for r in rows}


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MB tmpfs of this test's own (root only): for full and read-only disks."""
    if not can_mount():
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def assert_same_cache(a, b):
    """Two cache directories hold the same features, labels, ids and parameters."""
    import featcache

    ca, cb = featcache.open_cache(a), featcache.open_cache(b)
    assert ca.key == cb.key and ca.ids() == cb.ids()
    np.testing.assert_array_equal(ca.features(), cb.features())
    np.testing.assert_array_equal(ca.labels(), cb.labels())
    assert ca.manifest["params"] == cb.manifest["params"]
    assert [s["n_rows"] for s in ca.manifest["shards"]] == [s["n_rows"] for s in cb.manifest["shards"]]
    assert ca.views == cb.views and ca.augment == cb.augment
    for v in range(1, ca.views + 1):  # augmented views, row for row
        assert ca.view_ids(v) == cb.view_ids(v)
    if ca.views:
        np.testing.assert_array_equal(ca.views_of(np.arange(len(ca))), cb.views_of(np.arange(len(cb))))


# The files that take longest under `-n 2 --dist loadfile` (--durations=0 summed per file), longest first: xdist hands
# files to workers in collection order, so these start first and the short ones fill in behind them.
LONGEST_FIRST = ["test_ray.py", "test_pipelines.py", "test_bench.py", "test_views.py", "test_reliability.py",
                 "test_runtimes.py", "test_heads.py", "test_grow.py", "test_benchmarks.py", "test_derived_caches.py",
                 "test_backends.py", "test_bench_protocol.py", "test_target_classes.py", "test_linear_export.py",
                 "test_rows_key.py", "test_ownership.py", "test_cli_fuzz.py", "test_train.py",
                 "test_export_targets.py", "test_precision.py", "test_output_trust.py", "keras_apps_test.py",
                 "test_export_and_arrays.py", "test_bench_honesty.py", "test_readme.py", "test_data_api.py",
                 "test_pretrain.py", "test_pipeline_noop.py", "test_extract.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file is kept
