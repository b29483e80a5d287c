"""What a cheaper resize would save in decode CPU, and what it would cost in feature agreement.

    python benchmarks/resize_cost.py [--photos 200] [--size 224] [--backbone efficientnet_lite0]

Issue 20 asks to measure this before choosing: with the CNN on OpenVINO,
decoding takes a larger share of the two cores. Each variant decodes the same
JPEG photos (figure 1's crops of scikit-learn's sample photos); its process
CPU time per photo is the best of three passes, one thread; its features are
compared, row by row (cosine), with featcache's own decode (draft JPEG, then
antialiased bilinear resize with ``reducing_gap=3``), through the same
backbone and runtime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from decode_cost import cpu_ms_per_photo  # noqa: E402
from run import make_photo_folder  # noqa: E402

from featcache.decode import decode_image  # noqa: E402


def _variant(resample, reducing_gap):
    def decode(path, size):
        height, width = size
        with Image.open(path) as im:
            im.draft("RGB", (width, height))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            im = im.convert("RGB")
            return np.asarray(im.resize((width, height), resample, reducing_gap=reducing_gap), dtype=np.uint8)
    return decode


VARIANTS = {
    "featcache (bilinear, reducing_gap 3)": lambda p, s: decode_image(p, s),
    "bilinear, reducing_gap 1.5": _variant(Image.Resampling.BILINEAR, 1.5),
    "box filter": _variant(Image.Resampling.BOX, None),
    "nearest": _variant(Image.Resampling.NEAREST, None),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--backbone", default="efficientnet_lite0")
    args = p.parse_args(argv)
    from featcache import extractor, plan as planning
    from featcache.sources import open_source

    size = (args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_photo_folder(Path(tmp) / "photos", args.photos)
        files = sorted(folder.rglob("*.jpg"))
        src = open_source(folder)
        model = extractor.Extractor(planning.make_plan(src, args.backbone, None, planning.ExtractOptions(
            image_size=args.size)))
        reference = None
        print(f"{len(files)} photos, {args.size} px, {args.backbone} on {model.runtime}")
        for name, fn in VARIANTS.items():
            ms = cpu_ms_per_photo(lambda path: fn(path, size), files)
            feats = model(np.stack([fn(f, size) for f in files]))[model.names[0]].astype(np.float64)
            if reference is None:
                reference = feats
            cos = (feats * reference).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(reference, axis=1))
            print(f"{name}: {ms:.2f} ms CPU a photo; cosine with featcache's decode: min {cos.min():.6f}, "
                  f"mean {cos.mean():.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
