"""The ``featcache`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys

from rich.text import Text

from .. import __version__, quiet
from ..console import console
from ..errors import FeatcacheError, FeatcacheWarning
from .arguments import (EXAMPLES, HelpFormatter, bench_arguments, cache_dir_arguments, compact_arguments, compare_arguments,
                        export_arguments, export_features_arguments, extract_arguments, finetune_arguments,
                        inspect_arguments, no_arguments, predict_arguments, pretrain_arguments, run_arguments,
                        similar_arguments, targets_arguments, train_arguments)
from .commands import (TRUST, cmd_backbones, cmd_bench, cmd_compact, cmd_compare, cmd_export, cmd_export_features, cmd_extract,
                       cmd_finetune, cmd_heads, cmd_info, cmd_inspect, cmd_predict, cmd_pretrain, cmd_run, cmd_similar,
                       cmd_targets, cmd_train, cmd_verify)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featcache", formatter_class=HelpFormatter,
        description="Run a frozen, pretrained CNN over your images once, keep the features in HDF5 shards,\n"
                    "then train, compare and ship classifier heads on them in seconds.",
        epilog="examples:\n  featcache extract images/ --image-size 96 --out caches/mine\n"
               "  featcache bench caches/mine --out report\n  featcache run pipelines/quickstart.toml")
    parser.add_argument("--version", action="version", version=f"featcache {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, texts, add_arguments, func in COMMANDS:
        p = sub.add_parser(name, **texts)
        add_arguments(p)
        p.set_defaults(func=func)
        p.add_argument("--verbose", action="store_true", help="show TensorFlow's, absl's and CUDA's start-up messages")
        p.formatter_class = HelpFormatter  # defaults shown, and one or two examples to copy
        p.epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name])
    return parser

def _trusting(summary: str) -> dict:
    """The texts of a command that loads a model directory: its help and description say it is code."""
    return {"help": f"{summary}; {TRUST}", "description": f"{summary[0].upper()}{summary[1:]}. "
            f"{TRUST[0].upper()}{TRUST[1:]}."}


#: every subcommand, in ``--help`` order: (name, its add_parser texts, what adds its arguments, what runs it)
COMMANDS = [
    ("extract", {"help": "extract features of SOURCE into a cache directory"}, extract_arguments, cmd_extract),
    ("info", {"help": "describe a cache directory"}, cache_dir_arguments, cmd_info),
    ("verify", {"help": "check every shard against the manifest"}, cache_dir_arguments, cmd_verify),
    ("compact", {"help": "remove stored features no row uses any more (what a grow or a kill left behind)"},
     compact_arguments, cmd_compact),
    ("targets", {"help": "attach a table of targets (regression, multi-label, classes) keyed by item id, or list "
                 "them; no CNN runs"}, targets_arguments, cmd_targets),
    ("train", {"help": "train a head on a cache and save it"}, train_arguments, cmd_train),
    ("finetune", {"help": "fine-tune the backbone's top block and a head on a cache of a mid-level map",
                  "description": "Fine-tune the backbone's layers above a cached map (BatchNorm frozen, in "
                  "inference mode) with a softmax head: the head alone first, then the block at a small learning "
                  "rate, each early-stopped on the validation split. The CNN below the cut never runs again."},
     finetune_arguments, cmd_finetune),
    ("predict", _trusting("classify raw images (files, folders, a CSV, or a cache) with a saved head"),
     predict_arguments, cmd_predict),
    ("export", {"help": "write one end-to-end .keras model (Keras and linear heads)",
                "description": "Write one end-to-end .keras model (Keras and linear heads). " + TRUST[0].upper() + TRUST[1:]
                + "."}, export_arguments, cmd_export),
    ("export-features", {"help": "write a cache's features, ids, labels, class names and splits to one "
                         "self-contained .npz, .parquet or .h5 file",
                         "description": "Write one stored output of a cache, with ids, labels, class names and the "
                         "split of every row, to one file that reads the same wherever it is copied (unlike "
                         "features.h5). The format follows OUT's suffix; features keep their dtype bit for bit; "
                         "rows are in source order. An existing OUT is replaced only when featcache exported it."},
     export_features_arguments, cmd_export_features),
    ("similar", {"help": "find the rows nearest by cosine to images, row ids or vectors (exact, or an approximate "
                 "index built once beside the cache)"}, similar_arguments, cmd_similar),
    ("bench", {"help": "benchmark heads on one or more caches, with a report"}, bench_arguments, cmd_bench),
    ("compare", {"help": "which backbone: extract a sample with each candidate, bench fast heads with repeats, "
                 "recommend one with paired evidence, LogME and the cost of extracting everything"},
     compare_arguments, cmd_compare),
    ("inspect", {"help": "find likely label errors, duplicates, outliers and overlapping classes in a cache, with a "
                 "2-D map (pip install 'featcache[inspect]')"}, inspect_arguments, cmd_inspect),
    ("run", {"help": "run a pipeline file: whatever is stale, and nothing else"}, run_arguments, cmd_run),
    ("pretrain", {"help": "train a small CNN on a source domain, for use as a backbone"}, pretrain_arguments,
     cmd_pretrain),
    ("heads", {"help": "list the classifier heads"}, no_arguments, cmd_heads),
    ("backbones", {"help": "list the backbone registry"}, no_arguments, cmd_backbones),
]


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """featcache's own warnings (a subset that drops classes, no pixel baseline) as one yellow line; others as
    Python shows them."""
    if issubclass(category, FeatcacheWarning):
        console.print(Text("warning: ", style="bold yellow") + Text(str(message)), soft_wrap=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    import warnings

    global _python_show_warning
    if warnings.showwarning is not _show_warning:
        _python_show_warning = warnings.showwarning
        warnings.showwarning = _show_warning
    args = build_parser().parse_args(argv)
    quiet.install(verbose=args.verbose)  # before any model is built: TensorFlow's start-up chatter filtered
    try:
        return int(args.func(args) or 0)
    except FeatcacheError as exc:
        console.print(Text("error: ", style="bold red") + Text(str(exc)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; finished shards are kept, re-run the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
