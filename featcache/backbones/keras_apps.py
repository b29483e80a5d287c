"""keras.applications backbones, each with its own preprocess_input mode.

ImageNet weights come from Keras' own cache and download, so a pre-seeded
``~/.keras/models`` works offline. The preprocessing mode of each entry is
the one its ``keras.applications.<family>.preprocess_input`` applies (a
test checks each against Keras' function); ``"none"`` marks models that
normalise inside themselves.
"""

from __future__ import annotations

from .registry import BackboneSpec, register

# name: (constructor, default size, feature dim, preprocess mode, min size, cached weight files)
_TABLE = {
    "mobilenet_v2": ("MobileNetV2", 224, 1280, "tf", 32,
                     ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",)),
    "mobilenet_v3_small": ("MobileNetV3Small", 224, 576, "none", 32,
                           ("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",)),
    "mobilenet_v3_large": ("MobileNetV3Large", 224, 960, "none", 32,
                           ("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",)),
    "resnet50": ("ResNet50", 224, 2048, "caffe", 32, ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",)),
    "resnet50v2": ("ResNet50V2", 224, 2048, "tf", 32, ("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",)),
    "efficientnet_b0": ("EfficientNetB0", 224, 1280, "none", 32, ("efficientnetb0_notop.h5",)),
    "efficientnet_b1": ("EfficientNetB1", 240, 1280, "none", 32, ("efficientnetb1_notop.h5",)),
    "efficientnet_b2": ("EfficientNetB2", 260, 1408, "none", 32, ("efficientnetb2_notop.h5",)),
    "efficientnet_b3": ("EfficientNetB3", 300, 1536, "none", 32, ("efficientnetb3_notop.h5",)),
    "efficientnetv2_b0": ("EfficientNetV2B0", 224, 1280, "none", 32, ("efficientnetv2-b0_notop.h5",)),
    "convnext_tiny": ("ConvNeXtTiny", 224, 768, "none", 32, ("convnext_tiny_notop.h5",)),
    "vgg16": ("VGG16", 224, 512, "caffe", 32, ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",)),
    "inception_v3": ("InceptionV3", 299, 2048, "tf", 75,
                     ("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",)),
    "densenet121": ("DenseNet121", 224, 1024, "torch", 32,
                    ("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",)),
    "xception": ("Xception", 299, 2048, "tf", 71, ("xception_weights_tf_dim_ordering_tf_kernels_notop.h5",)),
}

#: the keras.applications module whose preprocess_input each entry mirrors (used by tests)
PREPROCESS_MODULES = {
    "mobilenet_v2": "mobilenet_v2", "mobilenet_v3_small": "mobilenet_v3", "mobilenet_v3_large": "mobilenet_v3",
    "resnet50": "resnet50", "resnet50v2": "resnet_v2", "efficientnet_b0": "efficientnet",
    "efficientnet_b1": "efficientnet", "efficientnet_b2": "efficientnet", "efficientnet_b3": "efficientnet",
    "efficientnetv2_b0": "efficientnet_v2", "convnext_tiny": "convnext", "vgg16": "vgg16",
    "inception_v3": "inception_v3", "densenet121": "densenet", "xception": "xception",
}


def _builder(constructor: str):
    def build(input_shape, weights):
        import keras

        fn = getattr(keras.applications, constructor)
        return fn(include_top=False, weights=weights, input_shape=input_shape, pooling=None)

    return build


def _top_builder(constructor: str):
    def build(weights):
        import keras

        return getattr(keras.applications, constructor)(include_top=True, weights=weights)

    return build


for _name, (_ctor, _size, _dim, _mode, _min, _files) in _TABLE.items():
    register(BackboneSpec(
        name=_name, default_size=_size, feature_dim=_dim, preprocess=_mode, builder=_builder(_ctor),
        min_size=_min, cache_files=_files, top_builder=_top_builder(_ctor),
        imagenet_identity=(lambda c=_ctor: {"kind": "imagenet", "source": "keras.applications", "model": c}),
        description=f"keras.applications.{_ctor}",
    ))
