"""EfficientNet-Lite0 port: shared harness, then equality with the original PyTorch model."""

from pathlib import Path

import numpy as np
import pytest

from .resolve import resolve
from .testing import check_backbone, check_matches_reference, imagenet_top1

REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "torch_reference.npz"
BUILDINGS = {"palace", "monastery", "bell cote", "boathouse", "castle", "church", "stupa", "dome", "lakeside"}


@pytest.fixture(scope="module")
def ref():
    return np.load(REFERENCE)


def test_harness_on_tiny_input():
    check_backbone("efficientnet_lite0", 32)


def test_pooled_features_equal_pytorch_on_real_photos(ref):
    check_matches_reference("efficientnet_lite0", ref["images"], ref["lite0_pooled"])


def test_imagenet_top1_matches_pytorch_and_is_sensible(ref):
    from .torch_port import imagenet_classes

    top1 = imagenet_top1("efficientnet_lite0", ref["images"])
    classes = imagenet_classes()
    assert top1 == [classes[i] for i in ref["lite0_logits"].argmax(1)]
    assert top1[0] in BUILDINGS  # scikit-learn's china.jpg: a temple by a lake
    assert top1[3] == "daisy"  # scikit-learn's flower.jpg


def test_conversion_is_cached_by_sha(tmp_path, monkeypatch, ref):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path))
    first = check_matches_reference("efficientnet_lite0", ref["images"][:2], ref["lite0_pooled"][:2])
    cached = list((tmp_path / "weights").glob("efficientnet_lite0-57934424*.weights.h5"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = check_matches_reference("efficientnet_lite0", ref["images"][:2], ref["lite0_pooled"][:2])
    assert cached[0].stat().st_mtime_ns == stamp  # loaded, not rewritten
    np.testing.assert_allclose(first, again, rtol=1e-6, atol=1e-6)


def test_identity_names_the_weights_file_hash():
    ident = resolve("efficientnet_lite0").identity()
    assert ident["kind"] == "pth" and ident["sha256"].startswith("57934424")
