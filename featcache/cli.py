"""The ``featcache`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import os
import re
import sys
from pathlib import Path

from rich.text import Text

from . import __version__, quiet
from .augment import parse_recipe
from .backbones import list_specs
from .bench import BENCH, bench
from .console import console, human_bytes, key_value_table, stdout, table
from .engines import ENGINES
from .errors import FeatcacheError, FeatcacheWarning
from .feature_export import export_features
from .finetune import FINETUNE, finetune
from .heads import HEADS, list_heads, parse_value
from .model_export import EXPORT_FORMATS, export
from .plan import DEFAULT_BACKBONE, SETTINGS, ExtractOptions
from .params import add_flags
from .predict import PREDICT, describe_score, predict, score_predictions
from .pretrain import PRETRAIN, pretrain
from .runner import extract
from .sources import LIMIT_SEED
from .store import KINDS as TARGET_KINDS, attach_targets, bytes_per_image, open_cache, read_targets, remove_targets
from .train import TRAIN, train
from .train_targets import target_table


#: said next to every command that loads a model directory
TRUST = ("a model directory is code (a scikit-learn head is a pickle): use only model directories from someone "
         "you trust")


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
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


def _default_out(source: str, backbone: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(source).name or source}-{Path(backbone).stem}").strip("-")
    return os.path.join("caches", slug)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", type=_int_list, help="keep only these labels, e.g. 0,1,2")
    p.add_argument("--limit", type=int, metavar="N",
                   help="use a sample of N images, stratified by class (and split), in source order")
    p.add_argument("--first", type=int, metavar="N",
                   help="use the first N images in source order instead (can drop whole classes)")
    p.add_argument("--limit-seed", type=int, default=LIMIT_SEED, metavar="SEED", help="seed of --limit's sample")
    p.add_argument("--data-dir", help="folder to look in first for named datasets (e.g. Fashion-MNIST)")
    p.add_argument("--allow-outside", action="store_true", help="let a CSV manifest name files outside its folder")


def cmd_extract(args) -> int:
    from .runner import prepare, run

    def cache_recipe(text):
        return parse_recipe(text).text

    opts = ExtractOptions(**{s.name: getattr(args, s.name) for s in SETTINGS})
    out = args.out or _default_out(args.source, args.backbone)
    plan, engine = prepare(args.source, args.backbone, out, weights=args.weights, layer=args.layer,
                           classes=args.classes, limit=args.limit, first=args.first, limit_seed=args.limit_seed,
                           allow_outside=args.allow_outside,
                           data_dir=args.data_dir, engine=args.engine, ray_address=args.ray_address,
                           workers=args.workers, gpus_per_worker=args.gpus_per_worker, options=opts)
    src = plan.source
    console.print(f"[bold]featcache extract[/] {src.describe()} ({len(src):,} images) -> {out}\n"
                  f"  backbone {plan.backbone.name} · weights {plan.params['weights'].get('kind')} · "
                  f"{plan.image_size[0]}x{plan.image_size[1]} · pooling {opts.pooling} · key {plan.key[:12]}"
                  + (f"\n  {plan.views} augmented views of each train image ({cache_recipe(opts.augment)})"
                     if plan.views else ""))
    cache, s = run(plan, overwrite=args.overwrite, repair=args.repair, progress=not args.quiet, wait=args.wait,
                   engine=engine, frozen=args.frozen, reuse=args.reuse or ())
    for note in s.notes:
        console.print(Text(note, style="yellow"))
    if s.grow is not None:
        stdout.print(f"grew {s.out}: {s.grow_line()}", highlight=False)
    rows = [("cache", str(s.out)), ("key", s.key[:16]), ("rows", f"{s.rows:,}"), ("skipped", f"{s.skipped:,}"),
            ("shards", f"{s.computed_shards} computed, {s.reused_shards} reused"),
            *([("views", f"{cache.views} per train image ({cache.augment})")] if cache.views else []),
            ("seconds", f"{s.seconds:.2f}"),
            ("images/s", f"{s.images_per_s:,.1f}" if s.images_per_s else "-"),
            ("bytes written", human_bytes(s.bytes_written))]
    title = "nothing to do: cache is complete and up to date" if s.noop else "extraction summary"
    stdout.print(key_value_table(title, rows))
    if cache.skipped:
        shown = cache.skipped[:10]
        stdout.print(table(f"skipped items ({len(cache.skipped)})", ["id", "reason"],
                           [[x["id"], x["reason"]] for x in shown]))
    return 0


def cmd_export_features(args) -> int:
    path = export_features(args.cache, args.out, output=args.output)
    stdout.print(f"{path}: features, ids, labels, class names and splits of {args.cache}")
    return 0


def cmd_info(args) -> int:
    cache = open_cache(args.dir, allow_partial=True)
    p = cache.params
    w = p["weights"]
    weights = w.get("kind", "?") + (f" sha256 {w['sha256'][:12]}" if w.get("sha256") else "")
    outputs = {name: cache.output_info(name) for name in cache.outputs}
    rows = [
        ("directory", str(cache.path)),
        ("complete", "yes" if cache.complete else f"no ({cache.n_shards_done}/{cache.n_shards} shards)"),
        ("key", cache.key), ("backbone", f"{p['backbone']} ({p['origin']})"), ("weights", weights),
        ("layer", p.get("layer") or "-"), ("image size", "x".join(map(str, p["image_size"]))),
        ("preprocess", p["preprocess"]), ("pooling", p["pooling"]),
        ("outputs", ", ".join(f"{k} {v['shape']} {v['dtype']}" for k, v in outputs.items()) or "-"),
        ("compute dtype", p["compute_dtype"]), ("shard size", p["shard_size"]),
        ("source", cache.source), ("items", f"{cache.n_items:,}"), ("rows", f"{len(cache):,}"),
        ("skipped", f"{len(cache.skipped):,}"), ("size on disk", human_bytes(cache.disk_bytes())),
    ]
    alpha = cache.alpha_count
    rows.append(("with alpha", "not counted" if alpha is None else f"{alpha:,} (on {p.get('background', 'white')})"))
    if cache.views:
        view_rows = sum(s.n_rows for v in range(1, cache.views + 1) for s in cache.view_shards(v))
        rows.append(("views", f"{cache.views} per train image ({cache.augment}), {view_rows:,} rows"))
    per_image = bytes_per_image(outputs)
    if per_image:  # what the features cost, before HDF5's overhead: the figure to size a bigger run by
        rows.append(("bytes per image", f"{per_image:,} ({human_bytes(per_image * cache.n_items)} for all "
                                        f"{cache.n_items:,} items)"))
    if cache.versions:
        v = cache.versions
        rows.append(("made with", f"featcache {v.get('featcache')}, keras {v.get('keras')} ({v.get('backend')})"))
    rows.append(("targets", cache.targets_summary()))
    stdout.print(key_value_table("featcache cache", rows))
    labels = cache.labels()
    splits = cache.splits() or ["-"] * len(labels)
    counts = collections.Counter(zip(splits, labels.tolist()))
    split_names = sorted({s for s, _ in counts})
    body = []
    for lab in sorted({lab for _, lab in counts}):
        name = "unlabeled" if lab < 0 else cache.class_name(lab)
        body.append([lab, name] + [counts.get((s, lab), 0) for s in split_names])
    stdout.print(table("rows per class and split", ["label", "class"] + split_names, body))
    if cache.skipped:
        stdout.print(table(f"skipped items ({len(cache.skipped)})", ["id", "reason"],
                           [[x["id"], x["reason"]] for x in cache.skipped[:50]]))
    return 0


def cmd_compact(args) -> int:
    from .store import compact

    files, freed = compact(args.dir, wait=args.wait)
    stdout.print(f"{args.dir}: removed {files} file(s) no row uses, {human_bytes(freed)} freed" if files
                 else f"{args.dir}: nothing to remove; every stored feature belongs to a row")
    return 0


def _compact_arguments(p: argparse.ArgumentParser) -> None:
    _cache_dir_arguments(p)
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for another writer's lock")


def cmd_verify(args) -> int:
    cache = open_cache(args.dir, allow_partial=True)
    problems = cache.verify(deep=True)
    if problems:
        stdout.print(f"[red]{len(problems)} problem(s)[/] in {cache.path}:")
        for p in problems:
            stdout.print(f"  - {p}")
        stdout.print("Re-run the same `featcache extract` command with --repair to recompute the damaged shards.")
        return 1
    state = "complete" if cache.complete else "incomplete"
    stdout.print(f"[green]ok[/]: {cache.n_shards_done} shards, {len(cache):,} rows, {state}")
    return 0


def cmd_targets(args) -> int:
    cache = open_cache(args.cache)
    if args.remove:
        remove_targets(cache, args.remove)
        stdout.print(f"removed target {args.remove!r} from {cache.path}")
    if args.file:
        made = attach_targets(cache, args.file, name=args.name, kind=args.kind, id_column=args.id_column)
        stdout.print(f"attached {', '.join(f'{n} ({t.describe()})' for n, t in made.items())} to {cache.path}")
    body = []
    for t in read_targets(cache).values():
        shown = ", ".join(map(str, t.names[:8])) + (f" (+{len(t.names) - 8})" if len(t.names) > 8 else "")
        if t.kind == "regression" and t.n:
            values = t.values[t.mask]
            shown += f": {float(values.min()):.4g} .. {float(values.max()):.4g}"
        body.append([t.name, t.kind, f"{t.n:,} of {len(t.mask):,} ({t.coverage:.0%})", shown])
    stdout.print(table(f"targets of {cache.path}", ["target", "kind", "rows with a value", "values"], body))
    return 0


def _parse_params(pairs) -> dict:
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FeatcacheError(f"--param takes key=value, got {pair!r}")
        params[key.strip()] = parse_value(value.strip())
    return params


def _your_estimator(text: str, params: dict):
    """A head given as ``module:Class`` (``sklearn.svm:SVC``): your own scikit-learn classifier, built with
    ``params``; a head name (no colon) comes back as it is."""
    import importlib

    if ":" not in text:
        return text
    module, _, name = text.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise FeatcacheError(f"cannot import the head {text!r} (module:Class, e.g. sklearn.svm:SVC): {exc}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise FeatcacheError(f"cannot build the head {text!r} with {params}: {exc}") from None


def _fmt(v, pct=True):
    return "-" if v is None else (f"{100 * v:.2f}%" if pct else f"{v:.4f}")


def cmd_train(args) -> int:
    params = _parse_params(args.param)
    head = _your_estimator(args.head, params)
    if not isinstance(head, str):
        params = {}  # they built it
    name = args.head if isinstance(head, str) else f"custom-{args.head.partition(':')[2]}"
    out = os.path.join("models", f"{Path(args.cache).name}-{name}") if args.out is None else args.out
    with contextlib.redirect_stdout(sys.stderr):  # Keras' per-epoch lines are progress, not the result
        res = train(args.cache, head, params=params, **_flags(args, TRAIN, "head", "out"), out=out,
                    verbose=0 if args.quiet else 2)
    if "target" in res.card:  # a regression or multi-label target: its kind's metrics
        stdout.print(target_table(res, args.cache))
        stdout.print(f"model saved to {res.model_dir}")
        return 0
    rows = [[split, m["n"], _fmt(m.get("accuracy")), _fmt(m.get("balanced_accuracy")), _fmt(m.get("macro_f1")),
             _fmt(m.get("log_loss"), pct=False)] for split, m in res.metrics.items()]
    used = res.card.get("views")
    seen = f", {used['count']} views as {used['mode']}" if used else ""
    stdout.print(table(f"{res.head} on {args.cache} (fit {res.fit_seconds:.2f} s{seen})",
                       ["split", "rows", "accuracy", "balanced acc.", "macro-F1", "log-loss"], rows))
    stdout.print(f"model saved to {res.model_dir}")
    return 0


def cmd_finetune(args) -> int:
    out = os.path.join("models", f"{Path(args.cache).name}-finetune") if args.out is None else args.out
    with contextlib.redirect_stdout(sys.stderr):  # Keras' per-epoch lines are progress, not the result
        res = finetune(args.cache, **_flags(args, FINETUNE, "out"), verbose=0 if args.quiet else 2, out=out)
    rows = [[split, m["n"], _fmt(m.get("accuracy")), _fmt(m.get("macro_f1")), _fmt(m.get("log_loss"), pct=False)]
            for split, m in res.metrics.items()]
    ft = res.card["finetune"]
    stdout.print(table(f"top block above {ft['from_layer']} + head on {args.cache} (fit {res.fit_seconds:.1f} s, "
                       f"{ft['trainable_weights']:,} trainable weights)",
                       ["split", "rows", "accuracy", "macro-F1", "log-loss"], rows))
    stdout.print(f"model saved to {res.model_dir} (featcache export {res.model_dir} model.keras: one end-to-end model)")
    return 0


def cmd_predict(args) -> int:
    rows = predict(args.model, args.images, **_flags(args, PREDICT), progress=not args.quiet)
    if args.out:
        stdout.print(f"{len(rows)} predictions written to {args.out}")
    else:
        stdout.print(table("predictions", ["id", "class", "probability"],
                           [[r["id"], r["class"] if r["class"] is not None else f"skipped: {r['error']}",
                             "-" if r["probability"] is None else f"{r['probability']:.4f}"] for r in rows]))
    score = score_predictions(rows)
    if score is not None:  # labelled images (class folders, a CSV's labels): accuracy, its interval, each class
        line, columns, per_class = describe_score(score)
        stdout.print(line)
        stdout.print(table("per class (true class)", columns, per_class))
    return 0


def cmd_export(args) -> int:
    path = export(args.model, args.out, input_size=args.input_size, format=args.format)
    size = f"{args.input_size[0]}x{args.input_size[1]}" if args.input_size else "any-size"
    stdout.print(f"exported {path}: {size} RGB or grey images (uint8 0-255, or float 0-1) in, class probabilities "
                 "out (load with keras.models.load_model; nothing else needed; class names: featcache.export_info)")
    if args.format == "openvino":
        stdout.print(f"exported {path.with_suffix('.xml')} (+ .bin): the same model as an OpenVINO IR, taking images "
                     "of the size the backbone saw (or --input-size)")
    return 0


def cmd_bench(args) -> int:
    heads = list(HEADS) if args.all or not args.heads else _csv_list(args.heads)
    params: dict = {}
    for pair in args.param or []:
        left, sep2, value = pair.partition("=")
        head, sep, key = left.rpartition(":")  # the head may be module:Class itself
        if not sep or not sep2 or not key or not head:
            raise FeatcacheError(f"bench --param takes HEAD:key=value, got {pair!r}")
        params.setdefault(head, {})[key] = parse_value(value)
    built = {h: _your_estimator(h, params.pop(h, {})) for h in heads if ":" in h}
    heads = [built.get(h, h) for h in heads]
    rows = bench(args.caches, heads, params=params, **_flags(args, BENCH), progress=not args.quiet)
    from .report import with_interval

    body = [[r["features"], r["head"], r.get("status"), with_interval(r, "accuracy"), with_interval(r, "macro_f1"),
             r.get("versus_best") or "", "-" if r.get("fit_seconds") is None else f"{r['fit_seconds']:.2f}",
             (r.get("note") or r.get("error") or "")[:70]] for r in rows]
    stdout.print(table("benchmark", ["features", "head", "status", "test acc. [95% CI]", "macro-F1 [95% CI]",
                                     "vs. best", "fit s", "note"], body))
    stdout.print(f"report: {os.path.join(args.out, 'report.html')}")
    return 0


def cmd_run(args) -> int:
    from .pipeline import run

    result = run(args.pipeline, progress=not args.quiet)
    rows = [("pipeline", result["pipeline"]), ("output folder", result["out"])]
    rows += [(f"cache {k}", v) for k, v in result["caches"].items()]
    rows += [(f"model {k}", v) for k, v in result["models"].items()]
    for key in ("pretrained", "exported", "report"):
        if key in result:
            rows.append((key, result[key]))
    stdout.print(key_value_table("where everything went", rows))
    return 0


def cmd_pretrain(args) -> int:
    s = pretrain(args.source, **_flags(args, PRETRAIN), out=args.out, classes=args.classes, limit=args.limit,
                 first=args.first, limit_seed=args.limit_seed, data_dir=args.data_dir)
    state = "unchanged, kept" if s.get("skipped") else f"trained in {s['seconds']} s"
    stdout.print(f"{s['model']}: {state}; val accuracy {100 * s['val_accuracy']:.1f}%. Use it as a backbone: "
                 f"--backbone {s['model']} --layer {s['feature_layer']} --pooling none")
    return 0


def cmd_heads(args) -> int:
    stdout.print(table("heads", ["name", "kind", "default preprocess", "streams", "views", "what"],
                       [[h.name, h.kind, h.preprocess, "yes" if h.streams else "no", h.views, h.description]
                        for h in list_heads()]))
    return 0


def cmd_backbones(args) -> int:
    rows = []
    for s in list_specs():
        status = s.download_status()
        rows.append([s.name, s.default_size, s.feature_dim, s.preprocess,
                     {"offline": "no (offline)", "cached": "no (cached)", "download": "yes"}[status], s.description])
    stdout.print(table("backbones (ImageNet weights)", ["name", "size", "dims", "preprocess", "needs download", "from"],
                       rows))
    stdout.print("Any .keras model file is a backbone too: --backbone model.keras --layer NAME")
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
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
    "run": ["featcache run pipelines/quickstart.toml"],
    "pretrain": ["featcache pretrain fashion_mnist:train --classes 0,1,2,3,4 --epochs 3 --out source.keras"],
    "heads": ["featcache heads"],
    "backbones": ["featcache backbones"],
}


def _flags(args, params, *leave_out) -> dict:
    """The values of the flags :func:`featcache.params.add_flags` made for ``params``, as keyword arguments."""
    return {p.name: getattr(args, p.name) for p in params if p.cli and p.name not in leave_out}


def _api_default(func, name: str):
    """The default of a Python API parameter: the one declaration a command-line default repeats."""
    return inspect.signature(func).parameters[name].default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featcache", formatter_class=_HelpFormatter,
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
        p.formatter_class = _HelpFormatter  # defaults shown, and one or two examples to copy
        p.epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name])
    return parser


def _extract_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a folder, a CSV manifest, or a dataset name such as fashion_mnist:test")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"registry name or .keras file (default {DEFAULT_BACKBONE})")
    p.add_argument("--weights", default=_api_default(extract, "weights"),
                   help="imagenet, none (random, for tests) or a weights file")
    p.add_argument("--layer", help="cut the backbone at this layer")
    for setting in SETTINGS:  # declared once, in featcache/plan.py
        p.add_argument(setting.flag, default=setting.default, help=setting.help, choices=setting.choices,
                       type=_csv_list if setting.many else setting.type)
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


def _cache_dir_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a cache directory (what featcache extract wrote)")


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="cache directory")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="head parameter, repeatable (e.g. C=0.5)")
    add_flags(p, TRAIN)  # declared once, in featcache/train.py
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress from Keras heads (on stderr)")


def _finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="cache directory made with --outputs LAYER --pooling none")
    add_flags(p, FINETUNE)  # declared once, in featcache/finetune.py
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory written by featcache train, and by someone you trust: it is code")
    p.add_argument("images", nargs="+", help="image files, folders, a CSV manifest, or a cache directory")
    add_flags(p, PREDICT)  # declared once, in featcache/predict.py
    p.add_argument("--quiet", action="store_true")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory written by featcache train, and by someone you trust: it is code")
    p.add_argument("out", help="output .keras file")
    p.add_argument("--input-size", type=_size, metavar="HxW", default=None,
                   help="fix the model's input size (default: any size, resized in the model)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="keras",
                   help="openvino: also write an OpenVINO IR (.xml + .bin) beside the .keras file, at a fixed size")


def _export_features_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="cache directory written by featcache extract")
    p.add_argument("out", help="the file to write: .npz, .parquet (needs pyarrow) or .h5")
    p.add_argument("--output", help="which stored output (default: the first)")


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("caches", nargs="+", help="cache directories (several: compare backbones)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--heads", help="comma-separated head names, or your own classifier as module:Class "
                       "(e.g. logreg,sklearn.svm:SVC; --param sklearn.svm:SVC:C=2) (default: all)")
    which.add_argument("--all", action="store_true", help="every head (the default)")
    p.add_argument("--param", action="append", metavar="HEAD:KEY=VALUE", help="fix a head parameter, repeatable")
    add_flags(p, BENCH)  # declared once, in featcache/bench/options.py
    p.add_argument("--quiet", action="store_true")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="a TOML file, e.g. pipelines/quickstart.toml")
    p.add_argument("--quiet", action="store_true")


def _pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a folder, a CSV manifest or a dataset name")
    add_flags(p, PRETRAIN)  # declared once, in featcache/pretrain.py
    p.add_argument("--out", required=True, help="the .keras file to write")
    _add_source_args(p)


def _targets_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", help="cache directory")
    p.add_argument("file", nargs="?", help="a CSV (or .parquet) table keyed by item id, one column per target; "
                   "without it, list the targets")
    p.add_argument("--name", help="make every column of FILE one target of this name (several numeric columns: "
                   "multi-output regression; several 0/1 columns: multi-label)")
    p.add_argument("--kind", choices=TARGET_KINDS, help="instead of the inferred kind (numbers: regression; a|b|c "
                   "lists or 0/1 columns: multilabel; anything else: classification)")
    p.add_argument("--id-column", default="id", help="the column of item ids (what featcache info shows)")
    p.add_argument("--remove", metavar="NAME", help="detach the target NAME")


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


def _trusting(summary: str) -> dict:
    """The texts of a command that loads a model directory: its help and description say it is code."""
    return {"help": f"{summary}; {TRUST}", "description": f"{summary[0].upper()}{summary[1:]}. "
            f"{TRUST[0].upper()}{TRUST[1:]}."}


#: every subcommand, in ``--help`` order: (name, its add_parser texts, what adds its arguments, what runs it)
COMMANDS = [
    ("extract", {"help": "extract features of SOURCE into a cache directory"}, _extract_arguments, cmd_extract),
    ("info", {"help": "describe a cache directory"}, _cache_dir_arguments, cmd_info),
    ("verify", {"help": "check every shard against the manifest"}, _cache_dir_arguments, cmd_verify),
    ("compact", {"help": "remove stored features no row uses any more (what a grow or a kill left behind)"},
     _compact_arguments, cmd_compact),
    ("targets", {"help": "attach a table of targets (regression, multi-label, classes) keyed by item id, or list "
                 "them; no CNN runs"}, _targets_arguments, cmd_targets),
    ("train", {"help": "train a head on a cache and save it"}, _train_arguments, cmd_train),
    ("finetune", {"help": "fine-tune the backbone's top block and a head on a cache of a mid-level map",
                  "description": "Fine-tune the backbone's layers above a cached map (BatchNorm frozen, in "
                  "inference mode) with a softmax head: the head alone first, then the block at a small learning "
                  "rate, each early-stopped on the validation split. The CNN below the cut never runs again."},
     _finetune_arguments, cmd_finetune),
    ("predict", _trusting("classify raw images (files, folders, a CSV, or a cache) with a saved head"),
     _predict_arguments, cmd_predict),
    ("export", {"help": "write one end-to-end .keras model (Keras and linear heads)",
                "description": "Write one end-to-end .keras model (Keras and linear heads). " + TRUST[0].upper() + TRUST[1:]
                + "."}, _export_arguments, cmd_export),
    ("export-features", {"help": "write a cache's features, ids, labels, class names and splits to one "
                         "self-contained .npz, .parquet or .h5 file",
                         "description": "Write one stored output of a cache, with ids, labels, class names and the "
                         "split of every row, to one file that reads the same wherever it is copied (unlike "
                         "features.h5). The format follows OUT's suffix; features keep their dtype bit for bit; "
                         "rows are in source order. An existing OUT is replaced only when featcache exported it."},
     _export_features_arguments, cmd_export_features),
    ("bench", {"help": "benchmark heads on one or more caches, with a report"}, _bench_arguments, cmd_bench),
    ("run", {"help": "run a pipeline file: whatever is stale, and nothing else"}, _run_arguments, cmd_run),
    ("pretrain", {"help": "train a small CNN on a source domain, for use as a backbone"}, _pretrain_arguments,
     cmd_pretrain),
    ("heads", {"help": "list the classifier heads"}, _no_arguments, cmd_heads),
    ("backbones", {"help": "list the backbone registry"}, _no_arguments, cmd_backbones),
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
