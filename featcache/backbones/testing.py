"""The shared backbone test harness: every backbone is checked the same way on tiny configs.

Used by each backbone module's ``*_test.py``; it builds the real Keras model
(random weights unless told otherwise) and checks what the registry promises.
"""

from __future__ import annotations

import numpy as np

from .graph import build_extractor
from .registry import get_spec
from .resolve import resolve


def check_backbone(name: str, size: int | None = None, weights: str = "none", batch: int = 2,
                   deterministic: bool = True) -> dict:
    """Build ``name`` at ``size`` and check dims, dtypes, pooling and determinism; return the features."""
    spec = get_spec(name)
    size = size or spec.min_size
    bb = resolve(name, weights=weights)
    model, names = build_extractor(bb, input_size=(size, size), image_size=(size, size), pooling="avg")
    assert names == ["avg"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    out = model.predict_on_batch(images)
    feats = np.asarray(out["avg"])
    assert feats.shape == (batch, spec.feature_dim), f"{name}: {feats.shape} != (batch, {spec.feature_dim})"
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all(), f"{name}: non-finite features"
    if not deterministic:
        return {"avg": feats}
    # the same random weights again (seeded init) give the same features
    again, _ = build_extractor(resolve(name, weights=weights), input_size=(size, size), image_size=(size, size))
    np.testing.assert_allclose(np.asarray(again.predict_on_batch(images)["avg"]), feats, rtol=1e-5, atol=1e-6)
    return {"avg": feats}


def check_preprocess_matches(mode: str, keras_preprocess) -> None:
    """The in-graph layers and the reference normalisation equal Keras' own ``preprocess_input``."""
    import keras
    from keras import ops

    from .layers import normalize, preprocess

    pixels = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = pixels.astype(np.float32)
    theirs = np.asarray(keras_preprocess(x.copy()))
    ours = np.asarray(ops.convert_to_numpy(normalize(ops.convert_to_tensor(x), mode)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    images = keras.Input((8, 8, 3), dtype="uint8")
    graph = keras.Model(images, preprocess(images, mode, (8, 8)))
    np.testing.assert_allclose(np.asarray(graph.predict_on_batch(pixels)), theirs, rtol=1e-5, atol=1e-4)


def check_matches_reference(name: str, images: np.ndarray, pooled: np.ndarray, min_cosine: float = 0.999) -> np.ndarray:
    """Pooled ImageNet features equal a reference implementation's (cosine per image)."""
    model, _ = build_extractor(resolve(name, weights="imagenet"), input_size=images.shape[1:3],
                               image_size=images.shape[1:3])
    feats = np.asarray(model.predict_on_batch(images)["avg"])
    cos = (feats * pooled).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(pooled, axis=1))
    assert cos.min() >= min_cosine, f"{name}: cosine similarity {cos.round(5).tolist()}"
    return feats


def imagenet_top1(name: str, images: np.ndarray) -> list[str]:
    """Top-1 ImageNet class names of the backbone's own classifier."""
    from .graph import build_classifier
    from .torch_port import imagenet_classes

    model = build_classifier(resolve(name, weights="imagenet"), image_size=images.shape[1:3])
    probs = np.asarray(model.predict_on_batch(images))
    assert probs.shape == (len(images), 1000)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-4)
    classes = imagenet_classes()
    return [classes[i] for i in probs.argmax(1)]
