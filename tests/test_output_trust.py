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

import featcache
from featcache.runtimes import openvino_installed

from conftest import TINY, TINY_PIPE, kill_at, run_here


def _images(n=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A complete cache of 24 array images (train/val/test splits), 32 px, random MobileNetV2."""
    src = featcache.ArraySource(_images(), np.arange(24) % 2, splits=["train"] * 16 + ["val", "test"] * 4, name="t")
    return featcache.extract(src, out=tmp_path_factory.mktemp("trust") / "cache", progress=False, **TINY).path


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temporaries(root):
    return sorted(p.name for p in Path(root).rglob("*") if ".tmp-" in p.name)


def _pipeline(tmp_path, source, out, extra=""):
    d = tmp_path / "pipelines"
    d.mkdir(exist_ok=True)
    path = d / "p.toml"
    # out belongs to the [pipeline] table, so it goes in right under its name
    head = TINY_PIPE.format(source=source).replace('name = "t"\n', f'name = "t"\nout = "{out}"\n', 1)
    path.write_text(head + f"""[train]
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
    proc = run_here("run", _pipeline(tmp_path, photo_folder / "train", out), check=False)
    _one_line_error(proc, out / foreign.rpartition("/")[0] if "/" in foreign else out / foreign)  # what it writes
    assert (out / foreign).read_bytes() == user_bytes
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # no cache, model or report begun


def test_a_pipeline_out_that_is_a_file_is_a_one_line_error(tmp_path, photo_folder):
    (tmp_path / "afile").write_text("mine\n")
    proc = run_here("run", _pipeline(tmp_path, photo_folder / "train", tmp_path / "afile"), check=False)
    _one_line_error(proc, tmp_path / "afile", "is not a folder")
    assert (tmp_path / "afile").read_text() == "mine\n"


@pytest.mark.parametrize("nest", ["[" * 5000 + "]" * 5000, "{a = " * 5000 + "1" + "}" * 5000])
def test_a_deeply_nested_pipeline_file_is_a_one_line_error(tmp_path, nest):
    path = tmp_path / "deep.toml"
    path.write_text(f"[pipeline]\nname = \"t\"\ndeep = {nest}\n")
    proc = run_here("run", path, check=False)
    _one_line_error(proc, path, "nested too deeply")


# --------------------------------------------------------------------------- temporaries of killed runs


def test_killed_feature_exports_temporaries_are_cleaned_but_a_live_writers_and_the_users_are_not(tmp_path, tiny_cache):
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        left = {f".out.tmp-{dead}.h5": b"\x89HDF half", f".out.h5.tmp-{dead}": b"half"}  # as a killed run leaves them
        kept = {f".out.tmp-{live.pid}.h5": b"a writer at work", ".out.tmp-notes.h5": b"the user's",
                f".out.tmp-{dead}.npz": b"another target's", f".other.tmp-{dead}.h5": b"another target's"}
        for name, data in {**left, **kept}.items():
            (tmp_path / name).write_bytes(data)
        # a link: never ours; another dead pid, since dead + 1 may be the live writer's
        link = tmp_path / f".out.tmp-{_dead_pid()}.h5"
        os.symlink(tmp_path / ".out.tmp-notes.h5", link)
        run_here("export-features", tiny_cache, tmp_path / "out.h5")
        assert featcache.load_features(tmp_path / "out.h5")["features"].shape[0] == 24
        for name in left:
            assert not os.path.lexists(tmp_path / name), name
        for name, data in kept.items():
            assert (tmp_path / name).read_bytes() == data, name
        assert link.is_symlink()
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------------- full disks


@pytest.fixture
def full_disk(tmp_path):
    if not (os.geteuid() == 0 and shutil.which("mount")):
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        with open(mnt / "filler", "wb", buffering=0) as f:  # to the last block
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("suffix", [".npz", ".h5", ".parquet"])
def test_export_features_to_a_full_disk_is_one_line_naming_the_file_and_bytes_and_leaves_no_temporary(
        tiny_cache, full_disk, suffix):
    out = full_disk / f"out{suffix}"
    proc = run_here("export-features", tiny_cache, out, check=False)
    _one_line_error(proc, f"disk full while writing {out}", "bytes are needed")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # no temporary, no half file


# --------------------------------------------------------------------------- predict's home


def test_predict_with_an_unwritable_home_names_the_predictions_directory_and_featcache_home(tmp_path, tiny_cache):
    featcache.train(tiny_cache, "logreg", out=tmp_path / "m")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray(_images(1)[0]).save(images / "a.png")
    (tmp_path / "afile").write_text("not a folder\n")
    proc = run_here("predict", tmp_path / "m", images, env={"FEATCACHE_HOME": str(tmp_path / "afile" / "home")},
                    check=False)
    _one_line_error(proc, f"cannot create the predictions directory {tmp_path / 'afile' / 'home' / 'predictions'}",
                    "set FEATCACHE_HOME")
    assert "--out" not in proc.stderr.replace("--cache-dir", "")


# --------------------------------------------------------------------------- the OpenVINO IR pair


def _keras_model(tmp_path, name, labels):
    cache = featcache.extract(_images(), labels=labels, out=tmp_path / f"c-{name}", progress=False, **TINY)
    featcache.train(cache, "keras_linear", out=tmp_path / name)
    return tmp_path / name


@pytest.mark.slow
@pytest.mark.skipif(not openvino_installed(), reason="needs the openvino extra")
def test_an_export_killed_between_the_ir_renames_never_leaves_a_pair_that_predicts_otherwise(tmp_path):
    import keras
    import openvino as ov

    from featcache.ir_export import ir_matches

    x = _images()
    a = _keras_model(tmp_path, "a", np.arange(24) % 2)
    b = _keras_model(tmp_path, "b", 1 - np.arange(24) % 2)  # the opposite labels: the opposite predictions
    out = tmp_path / "out" / "m.keras"
    out.parent.mkdir()
    featcache.export(a, out, format="openvino")
    assert ir_matches(out)
    dead = _dead_pid()
    (out.parent / f".m.tmp-{dead}.keras").write_bytes(b"PK half a zip")  # a killed export's temporary

    def ir_predictions():
        compiled = ov.Core().compile_model(str(out.with_suffix(".xml")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return compiled(x)[compiled.output(0)].argmax(1)

    before = keras.models.load_model(out).predict(x, verbose=0).argmax(1)
    kill_at(f"before-rename:{out.with_suffix('.xml').name}", tmp_path / "marker", "export", b, out,
            "--format", "openvino")
    expected = keras.models.load_model(out).predict(x, verbose=0).argmax(1)
    assert (expected != before).any()  # the .keras is b's now: a's IR beside it would predict otherwise
    if out.with_suffix(".xml").exists():  # what OpenVINO loads beside the .keras predicts as the .keras does
        assert (ir_predictions() == expected).all()
    assert not ir_matches(out)  # the sidecar does not vouch for a set the kill left half made
    assert _temporaries(out.parent)  # the killed run's staged IR, cleaned by the next
    run_here("export", b, out, "--format", "openvino")
    assert _temporaries(out.parent) == [] and ir_matches(out)
    assert (ir_predictions() == expected).all()
