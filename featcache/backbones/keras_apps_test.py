"""keras.applications backbones, through the shared harness on tiny inputs."""

import importlib

import pytest

from .keras_apps import _TABLE, PREPROCESS_MODULES
from .registry import get_spec
from .testing import check_backbone, check_preprocess_matches

FAST = ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"]


@pytest.mark.parametrize("name", sorted(_TABLE))
def test_preprocess_mode_matches_keras_preprocess_input(name):
    module = importlib.import_module(f"keras.applications.{PREPROCESS_MODULES[name]}")
    check_preprocess_matches(get_spec(name).preprocess, module.preprocess_input)


@pytest.mark.parametrize("name", FAST)
def test_fast_backbones_build_with_registry_dims(name):
    check_backbone(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(_TABLE) - set(FAST)))
def test_every_backbone_builds_with_registry_dims(name):
    check_backbone(name, deterministic=False)
