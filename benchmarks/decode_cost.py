"""CPU time per photo of the two input sides of figure 2 (for benchmarks/NOTES.md).

    python benchmarks/decode_cost.py [--photos 200] [--size 224]

Both extractions in figure 2 are bound by the same model on two cores, so
what separates them is the CPU their input side takes from it. This measures
that cost one thread at a time, as process CPU time (best of three passes over
the same JPEG photos as figure 1): featcache's decode (Pillow, antialiased
bilinear resize), its two parts, and TensorFlow's ``decode_image`` +
``resize`` as ``image_dataset_from_directory`` runs them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run import make_photo_folder  # noqa: E402

from featcache.decode import decode_image  # noqa: E402


def cpu_ms_per_photo(fn, files, repeat: int = 3) -> float:
    for path in files[:10]:  # warm the page cache and any lazy imports
        fn(path)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for path in files:
            fn(path)
        best = min(best, (time.process_time() - t0) / len(files))
    return 1e3 * best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args(argv)
    from PIL import Image

    size = (args.size, args.size)

    def pillow_decode(path):
        with Image.open(path) as im:
            im.load()
            return im

    def pillow_resize_only(im):
        return im.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)

    with tempfile.TemporaryDirectory(prefix="featcache-decode-") as tmp:
        files = sorted(str(f) for f in make_photo_folder(Path(tmp), args.photos).rglob("*.jpg"))
        decoded = [pillow_decode(f) for f in files]
        rows = [("featcache decode_image", cpu_ms_per_photo(lambda f: decode_image(f, size), files)),
                ("  Pillow JPEG decode alone", cpu_ms_per_photo(pillow_decode, files))]
        it = iter(range(10 ** 9))
        rows.append(("  antialiased bilinear resize alone",
                     cpu_ms_per_photo(lambda _f: pillow_resize_only(decoded[next(it) % len(decoded)]), files)))
        try:
            import tensorflow as tf
        except ImportError:
            tf = None
        if tf is not None:
            def tf_side(path):
                img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
                return tf.image.resize(img, size).numpy()

            rows.append(("tf decode_image + resize", cpu_ms_per_photo(tf_side, files)))
    for name, ms in rows:
        print(f"{name:38s} {ms:5.2f} ms CPU/photo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
