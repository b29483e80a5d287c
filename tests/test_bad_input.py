"""Bad input is a one-line error or a recorded skip, never an out-of-memory kill, a traceback or a silent wrong cache.

Each test builds the hostile input for real: a CSV whose labels look like huge
numbers, a file name that is not UTF-8 on disk, an absurd image size, a folder
where every image is broken, a CSV whose classes were renamed, class names
that a spreadsheet would run as formulas.
"""

import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featcache
from featcache.errors import CacheError, FeatcacheError, SourceError

from conftest import REPO, TINY, run_here


def _png(path: Path, value: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path, format="PNG")


# --------------------------------------------------------------------------- 6. labels are names unless small dense integers

_HUGE_LABEL = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # 2 GB: a billion class names would not fit
from featcache.sources import open_source
src = open_source(sys.argv[1])
print(src.class_names, [it.label for it in src.items])
"""


def test_a_csv_label_that_looks_like_a_huge_number_is_a_name(tmp_path):
    rows = ["path,label"]
    for i, label in enumerate(["1000000000", "5", "1000000000", "5", "7"]):
        _png(tmp_path / f"{i}.png", 40 * i)
        rows.append(f"{i}.png,{label}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    proc = subprocess.run([sys.executable, "-c", _HUGE_LABEL, str(tmp_path / "m.csv")], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['5', '7', '1000000000'] [2, 0, 2, 0, 1]"
    # small dense integers stay class indices, as before
    (tmp_path / "d.csv").write_text("path,label\n0.png,2\n1.png,0\n2.png,1\n")
    src = featcache.open_source(tmp_path / "d.csv")
    assert src.class_names == ["0", "1", "2"] and [it.label for it in src.items] == [2, 0, 1]


def test_array_labels_must_be_class_indices():
    with pytest.raises(SourceError, match="class indices"):
        featcache.ArraySource(np.zeros((2, 8, 8, 3), np.uint8), [0, 10**9])
    named = featcache.ArraySource(np.zeros((2, 8, 8, 3), np.uint8), [0, 10**9], class_names=["a", "b"])
    assert named.class_names == ["a", "b"]


# --------------------------------------------------------------------------- 7. file names that are not UTF-8


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that stores raw bytes in names")
def test_a_file_name_that_is_not_utf8_is_kept_losslessly(tmp_path):
    root = tmp_path / "imgs"
    for c in "ab":
        for i in range(3):
            _png(root / c / f"{i}.png", 30 * i + (c == "b") * 100)
    raw = os.fsencode(root / "a") + b"/caf\xe9 latin-1.png"
    _png(Path(os.fsdecode(raw)), 200)
    out = tmp_path / "c"
    cache = featcache.extract(root, out=out, **TINY)
    assert len(cache) == 7
    odd = [i for i in cache.ids() if "caf" in i]
    assert len(odd) == 1 and os.fsencode(root / odd[0]) == raw  # the exact bytes on disk
    again, summary = featcache.extract(root, out=out, return_summary=True, **TINY)
    assert summary.noop and again.ids() == cache.ids()
    proc = run_here("info", out)
    assert "Traceback" not in proc.stderr
    model = tmp_path / "m"
    featcache.train(cache, "lda", out=model)
    featcache.predict(model, root, out=tmp_path / "p.csv", cache_dir=tmp_path / "pc")
    assert b"caf\xe9 latin-1.png" in (tmp_path / "p.csv").read_bytes()


# --------------------------------------------------------------------------- 8. sizes are bounded; all-skipped is not complete


def test_an_absurd_image_size_is_refused_before_any_work(tmp_path):
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    for size, message in ((100_000, "limit of 4096 pixels a side"), (2048, "Mpx a batch may hold")):
        with pytest.raises(FeatcacheError, match=message):
            featcache.extract(imgs, labels=[0, 1, 0, 1], out=tmp_path / "c", **{**TINY, "image_size": size,
                                                                                 "batch_size": 64})
    assert not (tmp_path / "c").exists()
    _png(tmp_path / "imgs" / "a" / "0.png", 0)
    proc = run_here("extract", tmp_path / "imgs", "--image-size", "100000", "--out", tmp_path / "c", check=False)
    assert proc.returncode == 2 and "4096" in proc.stderr and "Traceback" not in proc.stderr


def test_out_of_memory_while_decoding_stops_the_run_instead_of_skipping_every_image(tmp_path):
    from featcache.decode import decode_image

    _png(tmp_path / "x.png", 10)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + (1 << 30),
                                            hard))
    try:
        with pytest.raises(MemoryError):
            decode_image(tmp_path / "x.png", (60_000, 60_000))  # 10 GB of pixels under a tighter limit
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_folder_where_every_image_is_broken_is_never_marked_complete(tmp_path):
    root = tmp_path / "broken"
    for c in "ab":
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"{i}.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "c"
    proc = run_here("extract", root, "--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32",
                         "--out", out, "--quiet", check=False)
    assert proc.returncode == 2 and "every one of the 6 images was skipped" in proc.stderr
    assert "not an image" in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False
    with pytest.raises(CacheError, match="incomplete"):
        featcache.open_cache(out)


# --------------------------------------------------------------------------- 9. renamed classes


def test_renamed_csv_classes_reach_the_cache(tmp_path):
    for i in range(4):
        _png(tmp_path / f"{i}.png", 50 * i)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n0.png,cat\n1.png,dog\n2.png,cat\n3.png,dog\n")
    out = tmp_path / "c"
    featcache.extract(manifest, out=out, **TINY)
    manifest.write_text("path,label\n0.png,kitten\n1.png,puppy\n2.png,kitten\n3.png,puppy\n")  # same order
    cache, summary = featcache.extract(manifest, out=out, return_summary=True, **TINY)
    assert summary.noop and summary.computed_shards == 0  # the features did not change
    assert cache.class_names == ["kitten", "puppy"]
    assert any("class names updated" in n for n in summary.notes)
    assert featcache.open_cache(out).class_names == ["kitten", "puppy"]


# --------------------------------------------------------------------------- 13. spreadsheet formula injection


def test_class_names_that_look_like_formulas_are_neutralised_in_prediction_csvs(tmp_path):
    root = tmp_path / "imgs"
    names = ["=HYPERLINK(\"x\")", "+1+1", "-2", "@SUM(A1)"]
    for k, name in enumerate(names):
        for i in range(3):
            _png(root / name / f"{i}.png", 60 * k + 10 * i)
    cache = featcache.extract(root, out=tmp_path / "c", **TINY)
    featcache.train(cache, "lda", out=tmp_path / "m")
    featcache.predict(tmp_path / "m", root, out=tmp_path / "p.csv", cache_dir=tmp_path / "pc")
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    cells = [c for row in rows for c in row]
    assert all(not c.startswith(("=", "+", "-", "@")) for c in cells), cells
    assert {r[2] for r in rows[1:]} <= {"'" + n for n in names}
    # the JSON output keeps the names exactly
    featcache.predict(tmp_path / "m", root, out=tmp_path / "p.json", cache_dir=tmp_path / "pc")
    assert {r["class"] for r in json.loads((tmp_path / "p.json").read_text())} <= set(names)
