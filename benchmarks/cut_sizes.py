"""Bytes per image of the offline backbones' usual cut points, as docs/PERFORMANCE.md tabulates them.

    python benchmarks/cut_sizes.py

Builds each graph (random weights: shapes only) at 96 and 224 px and prints
each cut's map shape, its float16 bytes kept whole and pooled.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from featcache.backbones import resolve  # noqa: E402

CUTS = {"efficientnet_lite0": ["block6_add", "block10_add", "block14_add"],
        "mobilenet_v2_torchvision": ["block13_add", "block15_add"]}

if __name__ == "__main__":
    for name, cuts in CUTS.items():
        backbone = resolve(name, "none")
        for size in (96, 224):
            model = backbone.build((size, size))
            for cut in cuts + [model.layers[-1].name]:  # and the last layer, the default output
                shape = tuple(int(d) for d in model.get_layer(cut).output.shape[1:])
                print(f"{name:26s} {size:4d} px {cut:16s} {'x'.join(map(str, shape)):12s} "
                      f"whole {int(np.prod(shape)) * 2:8,d} B   pooled {shape[-1] * 2:6,d} B")
