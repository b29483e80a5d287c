"""Model directories that disagree with their card, and legitimate data that used to break default heads.

Issue #27, sections 4 and 5 and the minor items: every forgery is made the
way an attacker would (editing card.json, swapping the head file and
updating the card's sha256), and every data problem is a real folder or
CSV run through the real CLI.
"""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_ARGS, run_featcache
from featcache.splits import assign_splits

COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), "cat": (30, 30, 200)}


def _image(path, colour, seed):
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _folder(root, per_split=(("train", 6), ("val", 5), ("test", 3)), rare=None):
    """train/ val/ test/ folders of three coloured classes; ``rare``: (class, split) holding a single image."""
    seed = 0
    for split, n in per_split:
        for cls, colour in COLOURS.items():
            for i in range(n):
                seed += 1
                _image(root / split / cls / f"{cls}_{i}.png", colour, seed)
    if rare:
        _image(root / rare[1] / rare[0] / "only.png", (220, 220, 30), 999)
    return root


def _one_line_exit_2(proc):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cache3(tmp_path_factory):
    """A tiny cache of the three-class folder."""
    root = _folder(tmp_path_factory.mktemp("three") / "images")
    out = root.parent / "cache"
    run_featcache("extract", root, *TINY_ARGS, "--out", out, "--quiet")
    return out


@pytest.mark.slow
def test_bench_with_a_class_only_in_val_finishes_every_default_head(tmp_path):
    # "zebra" has one image, and the source's own split puts it in val: train never sees it
    root = _folder(tmp_path / "images", rare=("zebra", "val"))
    cache = tmp_path / "cache"
    run_featcache("extract", root, *TINY_ARGS, "--out", cache, "--quiet")
    out = tmp_path / "report"
    run_featcache("bench", cache, "--heads", "logreg,ridge", "--baseline-heads", "logreg", "--out", out,
                  "--quiet", "--n-jobs", "1", "--timeout", "120")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert {(r["head"], bool(r.get("baseline"))) for r in rows} >= {("logreg", False), ("ridge", False),
                                                                     ("logreg", True)}, rows
    for r in rows:
        assert r.get("status", "ok") == "ok" and r.get("accuracy") is not None, r
        assert "classes absent from train: zebra" in r["note"], r
