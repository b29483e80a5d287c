"""torchvision MobileNetV2 port: shared harness, then equality with torchvision's model."""

from pathlib import Path

import numpy as np
import pytest

from ..errors import BackboneError
from .resolve import resolve
from .testing import check_backbone, check_matches_reference, imagenet_top1

REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "torch_reference.npz"


@pytest.fixture(scope="module")
def ref():
    return np.load(REFERENCE)


def test_harness_on_tiny_input():
    check_backbone("mobilenet_v2_torchvision", 32)


def test_pooled_features_equal_torchvision_on_real_photos(ref):
    check_matches_reference("mobilenet_v2_torchvision", ref["images"], ref["mobilenet_v2_pooled"])


def test_imagenet_top1_matches_torchvision_and_is_sensible(ref):
    from .torch_port import imagenet_classes

    top1 = imagenet_top1("mobilenet_v2_torchvision", ref["images"])
    classes = imagenet_classes()
    assert top1 == [classes[i] for i in ref["mobilenet_v2_logits"].argmax(1)]
    assert top1[0] in {"palace", "monastery", "bell cote", "castle", "church", "stupa"}


def test_weights_with_the_wrong_hash_are_refused(tmp_path, monkeypatch):
    bogus = tmp_path / "mobilenet_v2-b0353104.pth"
    bogus.write_bytes(b"\x80\x02not the torchvision weights")
    monkeypatch.setenv("FEATCACHE_MOBILENET_V2_PTH", str(bogus))
    with pytest.raises(BackboneError, match="expected one starting with b0353104"):
        resolve("mobilenet_v2_torchvision")
