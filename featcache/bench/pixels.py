"""The raw-pixel baseline's features: the cached images read again from their source, downsampled."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..decode import parse_background
from ..errors import FeatcacheError
from ..sources import reopen


def pixel_features(cache, size: int = 16) -> np.ndarray:
    """Raw pixels of the cached images, downsampled to ``size`` x ``size`` RGB, in row order."""
    src = reopen(cache.source_address)
    by_id = {it.id: it for it in src.items}
    ids = cache.ids()
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise FeatcacheError(f"the source has changed since the cache was made (e.g. {missing[0]!r} is gone)")
    background = parse_background(cache.params.get("background", "white"))  # the pixels the CNN saw
    out = np.empty((len(ids), size * size * 3), np.float32)
    for a in range(0, len(ids), 512):
        items = [by_id[i] for i in ids[a:a + 512]]
        batch = src.read(items, (size, size), background=background)
        if len(batch.items) != len(items):
            raise FeatcacheError("an image that was cached can no longer be decoded")
        imgs = batch.images
        if imgs.shape[1:3] != (size, size):
            imgs = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX)) for im in imgs])
        out[a:a + len(items)] = imgs.reshape(len(items), -1) / 255.0
    return out
