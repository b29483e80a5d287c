"""Backbones: frozen CNNs by name, each family in its own small module.

Importing this package registers every built-in backbone but imports no
Keras: specs are metadata, and Keras is imported only when a model is built.
"""

from .registry import Backbone, BackboneSpec, get_spec, list_specs, register  # noqa: F401
from .resolve import resolve  # noqa: F401
from . import keras_apps, efficientnet_lite, mobilenet_v2_torchvision  # noqa: F401,E402  (register entries)
