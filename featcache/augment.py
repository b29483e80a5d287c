"""Augmented views: a recipe string, the seeded parameters of view v of each image, and their application.

A *view* is one augmented copy of a training image. View ``v`` of image ``i``
is a function of the recipe's seed, ``i``'s item id and ``v`` alone: its
parameters are drawn on the host by a NumPy generator seeded with those
three, so they never depend on the batch an image falls in, the order shards
are computed in, the engine (local or Ray) or how many views were asked for
(raising K from 4 to 8 leaves views 1-4 as they were).

The transform itself is one affine map per image (random resized crop,
horizontal flip and rotation composed) and a contrast and brightness change,
run with ``keras.ops`` (``keras.ops.image.affine_transform``): the same code
on TensorFlow and JAX, on a CPU or a GPU.

A recipe is a comma-separated list of the usual Keras image augmentations:

============== ======================================================================
``flip``       horizontal flip, with probability 1/2 (``RandomFlip("horizontal")``)
``crop=S``     random resized crop keeping between S and all of the area, aspect
               3/4 to 4/3, resized back (``RandomCrop`` / torchvision's
               ``RandomResizedCrop(scale=(S, 1))``)
``rotate=D``   rotation by up to D degrees either way (``RandomRotation``)
``contrast=C`` contrast scaled by a factor in [1 - C, 1 + C] (``RandomContrast``)
``brightness=B`` brightness shifted by up to B of the full range (``RandomBrightness``)
``seed=N``     the recipe's seed (default 0)
============== ======================================================================

Examples:
    >>> parse_recipe("flip, crop=0.6").text
    'flip,crop=0.6,seed=0'
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .errors import FeatcacheError

#: what ``--views K`` uses when ``--augment`` is not given (the cache key of a cache made with it is unchanged);
#: mild on purpose: on 1,000 Fashion-MNIST images at 96 px (4 views) it lifted the Keras heads by 2.5-2.7
#: points where crop=0.6 with rotate=10 cost them up to 6.6 (benchmarks/NOTES.md)
DEFAULT_RECIPE = "flip,crop=0.85,seed=0"
#: the most views a cache may hold
MAX_VIEWS = 64
#: parameters a view's transform takes per image: 8 of the projective transform, contrast factor, brightness shift
N_PARAMS = 10
_BOUNDS = {"crop": (0.05, 1.0), "rotate": (0.0, 180.0), "contrast": (0.0, 1.0), "brightness": (0.0, 1.0)}
_ORDER = ("flip", "crop", "rotate", "contrast", "brightness", "seed")


@dataclass(frozen=True)
class Recipe:
    """A parsed augmentation recipe (see the module's table)."""

    flip: bool = False
    crop: float | None = None
    rotate: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0
    seed: int = 0

    @property
    def text(self) -> str:
        """The canonical spelling: what the cache key and the manifest record."""
        parts = ["flip"] if self.flip else []
        parts += [f"crop={self.crop:g}"] if self.crop is not None else []
        parts += [f"{k}={getattr(self, k):g}" for k in ("rotate", "contrast", "brightness") if getattr(self, k)]
        return ",".join(parts + [f"seed={self.seed}"])

    def params(self, item_ids, view: int, size: tuple[int, int]) -> np.ndarray:
        """The transform parameters of view ``view`` (1, 2, ...) of each item, ``(len(item_ids), N_PARAMS)``.

        Row ``j`` depends on (seed, ``item_ids[j]``, ``view``) and the image
        size alone, never on the other ids.
        """
        h, w = size
        out = np.zeros((len(item_ids), N_PARAMS), np.float32)
        for j, item_id in enumerate(item_ids):
            rng = np.random.default_rng(_entropy(self.seed, item_id, view))
            draws = rng.random(8)  # always eight draws, so adding a step to a recipe moves no other step's value
            cw, ch = float(w), float(h)
            if self.crop is not None:
                area = (self.crop + (1.0 - self.crop) * draws[0]) * h * w
                ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * draws[1])
                cw, ch = min(w, math.sqrt(area * ratio)), min(h, math.sqrt(area / ratio))
            cx = cw / 2 + (w - cw) * draws[2]
            cy = ch / 2 + (h - ch) * draws[3]
            flip = -1.0 if self.flip and draws[4] < 0.5 else 1.0
            theta = math.radians(self.rotate * (2 * draws[5] - 1))
            cos, sin = math.cos(theta), math.sin(theta)
            # output pixel (x, y) -> input pixel: centre, scale to the crop (flipped), rotate, move to the crop centre
            sx, sy = flip * cw / w, ch / h
            a0, a1 = cos * sx, -sin * sy
            b0, b1 = sin * sx, cos * sy
            ox, oy = (w - 1) / 2, (h - 1) / 2
            a2 = (cx - 0.5) - a0 * ox - a1 * oy
            b2 = (cy - 0.5) - b0 * ox - b1 * oy
            contrast = 1.0 + self.contrast * (2 * draws[6] - 1)
            brightness = self.brightness * 255.0 * (2 * draws[7] - 1)
            out[j] = (a0, a1, a2, b0, b1, b2, 0.0, 0.0, contrast, brightness)
        return out


def _entropy(seed: int, item_id: str, view: int) -> int:
    digest = hashlib.sha256(f"featcache-view-v1:{seed}:{view}:{item_id}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:16], "big")


def parse_recipe(text: str | None) -> Recipe:
    """A :class:`Recipe` from its string; a one-line error naming the bad part.

    Args:
        text: e.g. ``"flip,crop=0.6,rotate=10,seed=0"``; None is :data:`DEFAULT_RECIPE`.

    Examples:
        >>> parse_recipe("rotate=15,flip").text
        'flip,rotate=15,seed=0'
    """
    if text is None:
        text = DEFAULT_RECIPE
    if not isinstance(text, str):
        raise FeatcacheError(f"augment must be a recipe string such as {DEFAULT_RECIPE!r}, got {text!r}")
    values: dict = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, value = (s.strip() for s in part.partition("="))
        if name not in _ORDER:
            raise FeatcacheError(f"augment: unknown step {name!r}; the steps are {', '.join(_ORDER)}")
        if name in values:
            raise FeatcacheError(f"augment: {name!r} is given twice")
        if name == "flip":
            if eq:
                raise FeatcacheError("augment: flip takes no value (it flips half the views)")
            values["flip"] = True
            continue
        if not eq or not value:
            raise FeatcacheError(f"augment: {name} needs a value, as in {name}="
                                 f"{ {'crop': '0.6', 'rotate': '10', 'seed': '0'}.get(name, '0.2') }")
        try:
            number = int(value) if name == "seed" else float(value)
        except ValueError:
            raise FeatcacheError(f"augment: {name}={value!r} is not a{'n integer' if name == 'seed' else ' number'}") \
                from None
        if name == "seed":
            if number < 0:
                raise FeatcacheError(f"augment: seed must be a non-negative integer, got {value}")
        else:
            low, high = _BOUNDS[name]
            if not (low <= number <= high):
                raise FeatcacheError(f"augment: {name} must be between {low:g} and {high:g}, got {value}")
        values[name] = number
    recipe = Recipe(**values)
    if recipe.text == f"seed={recipe.seed}":
        raise FeatcacheError(f"augment: the recipe {text!r} changes nothing; name at least one of flip, crop, "
                             "rotate, contrast, brightness")
    return recipe


def augment_images(images: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Apply each row of ``params`` (from :meth:`Recipe.params` at the images' size) to its image.

    uint8 ``(B, h, w, C)`` in, uint8 of the same shape out; edges are filled
    by reflection. Runs with ``keras.ops`` on the current backend. The
    identity transform returns the images unchanged.
    """
    from keras import ops

    if len(images) == 0:
        return np.asarray(images, np.uint8).copy()
    x = ops.convert_to_tensor(np.asarray(images), dtype="float32")
    p = ops.convert_to_tensor(params, dtype="float32")
    x = ops.image.affine_transform(x, p[:, :8], interpolation="bilinear", fill_mode="reflect",
                                   data_format="channels_last")
    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * ops.reshape(p[:, 8], (-1, 1, 1, 1)) + mean + ops.reshape(p[:, 9], (-1, 1, 1, 1))
    x = ops.clip(ops.round(x), 0, 255)
    return np.asarray(ops.convert_to_numpy(x)).astype(np.uint8)
