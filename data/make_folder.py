"""Turn a named dataset into a folder of class sub-folders of PNGs (the folder workflow on real data).

    python data/make_folder.py fashion_mnist:test --limit 600 --out data/fashion_folder

Class folders are named after the dataset's classes; a dataset with both
splits gets train/ and test/ folders on top.
"""

import argparse
import re
import sys
from pathlib import Path

from PIL import Image

from featcache.sources import load_dataset


def make_folder(spec: str, out: Path, limit: int | None = None) -> int:
    src = load_dataset(spec)
    items = src.items[:limit] if limit else src.items
    for it in items:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", src.class_names[it.label])
        folder = out / (it.split if it.split and ":" not in spec else "") / name
        folder.mkdir(parents=True, exist_ok=True)
        img = src.images[it.index]
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{it.index:05d}.png")
    return len(items)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="fashion_mnist, cifar10 or cifar100, optionally with :train or :test")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args(argv)
    n = make_folder(args.dataset, args.out, args.limit)
    print(f"{n} images written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
