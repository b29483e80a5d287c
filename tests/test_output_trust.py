"""Files featcache writes are provably its own, checked before any work, and committed whole.

Issue #27, section 3 and part of 6: a pipeline's whole output plan checked
up front, an OpenVINO IR pair that a kill never leaves mismatched, killed
runs' temporaries cleaned (dead writers only), full disks and odd pipeline
files as one-line errors.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_ARGS, kill_at, run_featcache


def _pipeline(tmp_path, source, out, extra=""):
    d = tmp_path / "pipelines"
    d.mkdir(exist_ok=True)
    path = d / "p.toml"
    path.write_text(f"""
[pipeline]
name = "t"
out = "{out}"
[data]
source = "{source}"
[[extract]]
name = "a"
backbone = "mobilenet_v2"
weights = "none"
image_size = 32
[train]
heads = ["keras_linear"]
export = "keras_linear"
[bench]
heads = ["logreg"]
{extra}""")
    return path


def _one_line_error(proc, *needles):
    text = proc.stderr.replace("\n", "")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert str(needle) in text, proc.stderr


# --------------------------------------------------------------------------- pipelines: the whole output plan


@pytest.mark.parametrize("foreign", ["keras_linear.keras.json", "keras_linear.keras", "report/notes.txt",
                                     "models/a-keras_linear/notes.txt", "cache-a/notes.txt", "models"])
def test_a_pipeline_into_a_user_folder_refuses_a_foreign_file_before_any_extraction(tmp_path, photo_folder, foreign):
    out = tmp_path / "user"
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    user_bytes = b'{"head_sha256": "mine", "note": "the user\'s own file"}\n'
    (out / foreign).write_bytes(user_bytes)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    proc = run_featcache("run", _pipeline(tmp_path, photo_folder / "train", out), check=False)
    _one_line_error(proc, out / foreign.rpartition("/")[0] if "/" in foreign else out / foreign)  # what it writes
    assert (out / foreign).read_bytes() == user_bytes
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # no cache, model or report begun


def test_a_pipeline_out_that_is_a_file_is_a_one_line_error(tmp_path, photo_folder):
    (tmp_path / "afile").write_text("mine\n")
    proc = run_featcache("run", _pipeline(tmp_path, photo_folder / "train", tmp_path / "afile"), check=False)
    _one_line_error(proc, tmp_path / "afile", "is not a folder")
    assert (tmp_path / "afile").read_text() == "mine\n"


@pytest.mark.parametrize("nest", ["[" * 5000 + "]" * 5000, "{a = " * 5000 + "1" + "}" * 5000])
def test_a_deeply_nested_pipeline_file_is_a_one_line_error(tmp_path, nest):
    path = tmp_path / "deep.toml"
    path.write_text(f"[pipeline]\nname = \"t\"\ndeep = {nest}\n")
    proc = run_featcache("run", path, check=False)
    _one_line_error(proc, path, "nested too deeply")
