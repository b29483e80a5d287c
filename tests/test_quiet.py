"""Quiet by default: no TensorFlow, absl or CUDA start-up chatter on a plain command's stderr; --verbose shows it."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featcache.quiet import is_chatter

from conftest import REPO, TINY_ARGS

CHATTER = ("absl", "cuInit", "oneDNN", "cudart_stub", "cpu_feature_guard", "I0000", "E0000", "W0000")


def _tiny_folder(root):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def _featcache(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it: nothing set
    return subprocess.run([sys.executable, "-m", "featcache", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=REPO)


@pytest.mark.slow
def test_a_plain_extract_writes_no_tensorflow_chatter_and_verbose_shows_it(tmp_path):
    images = _tiny_folder(tmp_path / "images")
    proc = _featcache("extract", images, *TINY_ARGS, "--out", tmp_path / "cache", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not [ln for ln in proc.stderr.splitlines() if any(c in ln for c in CHATTER)], proc.stderr
    loud = _featcache("extract", images, *TINY_ARGS, "--out", tmp_path / "cache2", "--quiet", "--verbose")
    assert loud.returncode == 0, loud.stderr
    assert any(is_chatter(ln) for ln in loud.stderr.splitlines()), loud.stderr  # TensorFlow did speak: it was hidden


def test_real_errors_are_not_chatter():
    assert is_chatter("I0000 00:00:1796471911.893222    4667 port.cc:153] oneDNN custom operations are on.")
    assert is_chatter("E0000 00:00:1796474873.483621    6570 cuda_platform.cc:52] failed call to cuInit: INTERNAL")
    assert is_chatter("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert not is_chatter("E0000 00:00:1796474873.483621    6570 op_kernel.cc:1857] OP_REQUIRES failed: OOM")
    assert not is_chatter("Traceback (most recent call last):")
    assert not is_chatter("error: no images found in images/")
