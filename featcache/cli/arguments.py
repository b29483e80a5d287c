"""The ``featcache`` command line's arguments: each command's flags, value parsers and help examples."""

from __future__ import annotations

import argparse
import inspect

from ..bench import BENCH
from ..compare import COMPARE
from ..engines import ENGINES
from ..finetune import FINETUNE
from ..inspect import INSPECT
from ..model_export import EXPORT_FORMATS
from ..params import add_flags
from ..plan import DEFAULT_BACKBONE, SETTINGS
from ..predict import PREDICT
from ..pretrain import PRETRAIN
from ..runner import extract
from ..similar import SIMILAR
from ..sources import LIMIT_SEED
from ..store import KINDS as TARGET_KINDS
from ..train import TRAIN


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    """``96`` or ``96x128``: an image size, height by width."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) > 2 or h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW of positive integers, got {text!r}")
    return h, w



def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", type=_int_list, help="keep only these labels, e.g. 0,1,2")
    p.add_argument("--limit", type=int, metavar="N",
                   help="use a sample of N images, stratified by class (and split), in source order")
    p.add_argument("--first", type=int, metavar="N",
                   help="use the first N images in source order instead (can drop whole classes)")
    p.add_argument("--limit-seed", type=int, default=LIMIT_SEED, metavar="SEED", help="seed of --limit's sample")
    p.add_argument("--data-dir", help="folder to look in first for named datasets (e.g. Fashion-MNIST)")
    p.add_argument("--allow-outside", action="store_true", help="let a CSV manifest name files outside its folder")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default (where it has one the help does not already give) and keeps the
    examples' line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS, "") and "default" not in text \
                and action.option_strings:
            text += " (default: %(default)s)"
        return text


EXAMPLES = {
    "extract": ["featcache extract images/ --image-size 96 --out caches/mine",
                "featcache extract fashion_mnist:test --limit 300 --out caches/fm   # a stratified sample"],
    "info": ["featcache info caches/mine"],
    "verify": ["featcache verify caches/mine"],
    "compact": ["featcache compact caches/mine"],
    "targets": ["featcache targets caches/zoom data/zoom/targets.csv", "featcache targets caches/zoom"],
    "train": ["featcache train caches/mine --head logreg --param C=0.5 --out models/mine",
              "featcache train caches/mine --head keras_mlp --stream --out models/mine-mlp",
              "featcache train caches/mine --head sklearn.svm:SVC --param C=2   # your own classifier"],
    "predict": ["featcache predict models/mine new_images/ --out predictions.csv"],
    "finetune": ["featcache extract images/ --image-size 96 --outputs block14_add --pooling none --out caches/map",
                 "featcache finetune caches/map --out models/ft && featcache export models/ft ft.keras"],
    "export": ["featcache export models/mine-mlp mine.keras",
               "featcache export models/mine-mlp mine-224.keras --input-size 224"],
    "export-features": ["featcache export-features caches/mine mine.parquet",
                        "featcache export-features caches/mine mine.npz --output block10_add"],
    "bench": ["featcache bench caches/mine --heads logreg,lda,keras_linear --out report",
              "featcache bench caches/a caches/b --out report   # compare backbones",
              "featcache bench caches/mine --heads logreg,sklearn.svm:SVC --param sklearn.svm:SVC:C=2"],
    "compare": ["featcache compare images/ --backbones efficientnet_lite0,mobilenet_v2_torchvision,my.keras",
                "featcache compare fashion_mnist:train --backbones efficientnet_lite0,efficientnet_lite0:block10_add "
                "--image-size 96"],
    "inspect": ["featcache inspect caches/mine --out inspect   # label errors, duplicates, outliers, a map"],
    "run": ["featcache run pipelines/quickstart.toml"],
    "pretrain": ["featcache pretrain fashion_mnist:train --classes 0,1,2,3,4 --epochs 3 --out source.keras"],
    "similar": ["featcache similar caches/mine new.jpg -k 5",
                "featcache similar caches/mine train/cat/001.jpg vectors.npy --format csv   # an id, then vectors"],
    "heads": ["featcache heads"],
    "backbones": ["featcache backbones"],
}

def _api_default(func, name: str):
    """The default of a Python API parameter: the one declaration a command-line default repeats."""
    return inspect.signature(func).parameters[name].default


def extract_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a folder, a CSV manifest, or a dataset name such as fashion_mnist:test")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"registry name or .keras file (default {DEFAULT_BACKBONE})")
    p.add_argument("--weights", default=_api_default(extract, "weights"),
                   help="imagenet, none (random, for tests) or a weights file")
    p.add_argument("--layer", help="cut the backbone at this layer")
    for setting in SETTINGS:  # declared once, in featcache/plan.py
        p.add_argument(setting.flag, default=setting.default, help=setting.help, choices=setting.choices,
                       type=csv_list if setting.many else setting.type)
    p.add_argument("--out", help="cache directory (default caches/<source>-<backbone>)")
    p.add_argument("--overwrite", action="store_true", help="replace a cache made with other settings")
    p.add_argument("--frozen", action="store_true",
                   help="refuse a source whose images changed instead of growing the cache (a snapshot)")
    p.add_argument("--reuse", action="append", metavar="CACHE",
                   help="another cache made with the same settings: images with the same content take its "
                        "features (repeatable)")
    p.add_argument("--repair", action="store_true", help="check every shard's sha256 and recompute damaged ones")
    p.add_argument("--wait", type=float, default=_api_default(extract, "wait"),
                   help="seconds to wait for another writer's lock")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("engine", "where shards are computed (the cache is the same either way)")
    g.add_argument("--engine", default=_api_default(extract, "engine"), choices=ENGINES,
                   help="local (this process) or ray (actors on a Ray cluster; pip install 'featcache[ray]')")
    g.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a local instance)")
    g.add_argument("--workers", type=int, help="Ray workers (default: the cluster's CPUs, or GPUs / --gpus-per-worker)")
    g.add_argument("--gpus-per-worker", type=float, help="GPUs each Ray worker reserves (default 0)")
    _add_source_args(p)


def cache_dir_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a cache directory (what featcache extract wrote)")


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="cache directory")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="head parameter, repeatable (e.g. C=0.5)")
    add_flags(p, TRAIN)  # declared once, in featcache/train.py
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress from Keras heads (on stderr)")


def finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="cache directory made with --outputs LAYER --pooling none")
    add_flags(p, FINETUNE)  # declared once, in featcache/finetune.py
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory written by featcache train, and by someone you trust: it is code")
    p.add_argument("images", nargs="+", help="image files, folders, a CSV manifest, or a cache directory")
    add_flags(p, PREDICT)  # declared once, in featcache/predict.py
    p.add_argument("--quiet", action="store_true")


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory written by featcache train, and by someone you trust: it is code")
    p.add_argument("out", help="output .keras file")
    p.add_argument("--input-size", type=_size, metavar="HxW", default=None,
                   help="fix the model's input size (default: any size, resized in the model)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="keras",
                   help="openvino: also write an OpenVINO IR (.xml + .bin) beside the .keras file, at a fixed size")


def export_features_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="cache directory written by featcache extract")
    p.add_argument("out", help="the file to write: .npz, .parquet (needs pyarrow) or .h5")
    p.add_argument("--output", help="which stored output (default: the first)")


def bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("caches", nargs="+", help="cache directories (several: compare backbones)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--heads", help="comma-separated head names, or your own classifier as module:Class "
                       "(e.g. logreg,sklearn.svm:SVC; --param sklearn.svm:SVC:C=2) (default: all)")
    which.add_argument("--all", action="store_true", help="every head (the default)")
    p.add_argument("--param", action="append", metavar="HEAD:KEY=VALUE", help="fix a head parameter, repeatable")
    add_flags(p, BENCH)  # declared once, in featcache/bench/options.py
    p.add_argument("--quiet", action="store_true")


def compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a folder, a CSV manifest, or a dataset name such as fashion_mnist:train")
    add_flags(p, COMPARE)  # declared once, in featcache/compare.py
    p.add_argument("--quiet", action="store_true", help="no progress bars or live table")


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="cache directory")
    add_flags(p, INSPECT)  # declared once, in featcache/inspect/__init__.py


def run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="a TOML file, e.g. pipelines/quickstart.toml")
    p.add_argument("--quiet", action="store_true")


def pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a folder, a CSV manifest or a dataset name")
    add_flags(p, PRETRAIN)  # declared once, in featcache/pretrain.py
    p.add_argument("--out", required=True, help="the .keras file to write")
    _add_source_args(p)


def targets_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="cache directory")
    p.add_argument("file", nargs="?", help="a CSV (or .parquet) table keyed by item id, one column per target; "
                   "without it, list the targets")
    p.add_argument("--name", help="make every column of FILE one target of this name (several numeric columns: "
                   "multi-output regression; several 0/1 columns: multi-label)")
    p.add_argument("--kind", choices=TARGET_KINDS, help="instead of the inferred kind (numbers: regression; a|b|c "
                   "lists or 0/1 columns: multilabel; anything else: classification)")
    p.add_argument("--id-column", default="id", help="the column of item ids (what featcache info shows)")
    p.add_argument("--remove", metavar="NAME", help="detach the target NAME")


def similar_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="cache directory")
    p.add_argument("queries", nargs="+", metavar="QUERY",
                   help="an image file (extracted with the cache's backbone), a row id (featcache info shows them) "
                        "or a .npy file of vectors of the cache's width")
    add_flags(p, SIMILAR)  # declared once, in featcache/similar.py


def compact_arguments(p: argparse.ArgumentParser) -> None:
    cache_dir_arguments(p)
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for another writer's lock")


def no_arguments(p: argparse.ArgumentParser) -> None:
    pass
