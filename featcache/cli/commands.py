"""What each ``featcache`` command does: a thin layer over the Python API."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
from pathlib import Path

from rich.text import Text

from ..augment import parse_recipe
from ..backbones import list_specs
from ..bench import BENCH, bench
from ..compare import COMPARE, compare, recommendation, table_body
from ..console import console, human_bytes, key_value_table, stdout, table
from ..errors import FeatcacheError
from ..feature_export import export_features
from ..finetune import FINETUNE, finetune
from ..inspect import INSPECT, inspect
from ..heads import HEADS, list_heads, parse_value
from ..model_export import export
from ..plan import SETTINGS, ExtractOptions
from .. import precision
from ..predict import PREDICT, describe_score, predict, score_predictions
from ..pretrain import PRETRAIN, pretrain
from ..similar import SIMILAR, render, similar
from ..store import attach_targets, bytes_per_image, open_cache, read_targets, remove_targets
from ..train import TRAIN, train
from ..train_targets import target_table
from .arguments import csv_list

#: said next to every command that loads a model directory
TRUST = ("a model directory is code (a scikit-learn head is a pickle): use only model directories from someone "
         "you trust")


def _default_out(source: str, backbone: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(source).name or source}-{Path(backbone).stem}").strip("-")
    return os.path.join("caches", slug)


def cmd_extract(args) -> int:
    from ..runner import prepare, run

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
                  f"{plan.image_size[0]}x{plan.image_size[1]} · pooling {opts.pooling} · precision {opts.precision} · "
                  f"key {plan.key[:12]}"
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
            ("runtime", f"{(cache.timings or {}).get('runtime') or '-'} · precision "
                        f"{plan.params.get('precision', 'f32')}"),
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


def _precision_text(params: dict) -> str:
    cal = params.get("calibration")
    text = str(params.get("precision", "f32"))
    if isinstance(cal, dict):  # a forged manifest's record is shown as text, never formatted as numbers
        text += f" (calibrated on {cal.get('images')} images, seed {cal.get('seed')}, sha256 {str(cal.get('digest'))[:12]})"
    return text


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
        ("compute dtype", p["compute_dtype"]), ("precision", _precision_text(p)), ("shard size", p["shard_size"]),
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
    from ..store import compact

    files, freed = compact(args.dir, wait=args.wait)
    stdout.print(f"{args.dir}: removed {files} file(s) no row uses, {human_bytes(freed)} freed" if files
                 else f"{args.dir}: nothing to remove; every stored feature belongs to a row")
    return 0


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
    if res.card.get("target", {}).get("kind", "classification") != "classification":  # its kind's metrics
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
    elif rows and "class" not in rows[0]:  # several heads (a,b): each output's prediction as text
        outputs = [k for k in rows[0] if k != "id"]
        stdout.print(table("predictions", ["id", *outputs], [[r["id"], *[r[o].get("class") or r[o].get("error", "-")
                                                                          for o in outputs]] for r in rows]))
        return 0
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


def cmd_similar(args) -> int:
    results = similar(args.cache, args.queries, **_flags(args, SIMILAR, "format"))
    if args.format != "table":
        sys.stdout.write(render(results, args.format))  # plain text, no console wrapping: for pipes and files
        return 0
    for r in results:
        stdout.print(table(f"nearest to {r['query']}", ["rank", "id", "class", "cosine"],
                           [[n["rank"], n["id"], n["class"] or "-", f"{n['cosine']:.4f}"] for n in r["neighbours"]]))
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
    heads = list(HEADS) if args.all or not args.heads else csv_list(args.heads)
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
    from ..report import with_interval

    if any("target" in r for r in rows):  # regression / multi-label rows: their own file and sections
        stdout.print(f"targets: {os.path.join(args.out, 'targets.md')} (and target_results.csv)")
        rows = [r for r in rows if "target" not in r]
        if not rows:
            return 0

    if rows and "shots" in rows[0]:  # few-shot rows: their own table and files
        stdout.print(table("few-shot", ["head", "k a class", "test acc. (mean ± sd)", "draws"],
                           [[r["head"], str(r["shots"]), f"{100 * r['accuracy']:.2f}% ± {100 * r['accuracy_sd']:.2f}",
                             str(r["draws"])] for r in rows]))
        stdout.print(f"few-shot: {os.path.join(args.out, 'shots.md')} (and shots.csv, shots.json)")
        return 0
    body = [[r["features"], r["head"], r.get("status"), with_interval(r, "accuracy"), with_interval(r, "macro_f1"),
             r.get("versus_best") or "", "-" if r.get("fit_seconds") is None else f"{r['fit_seconds']:.2f}",
             (r.get("note") or r.get("error") or "")[:70]] for r in rows]
    stdout.print(table("benchmark", ["features", "head", "status", "test acc. [95% CI]", "macro-F1 [95% CI]",
                                     "vs. best", "fit s", "note"], body))
    stdout.print(f"report: {os.path.join(args.out, 'report.html')}")
    return 0


def cmd_compare(args) -> int:
    result = compare(args.source, **_flags(args, COMPARE), progress=not args.quiet)
    cols, body = table_body(result)
    stdout.print(table("which backbone", cols, body))
    stdout.print(Text(f"recommendation: {recommendation(result)}"), soft_wrap=True)
    stdout.print(f"report: {os.path.join(str(result.out), 'compare.md')} (the bench's: "
                 f"{os.path.join(str(result.out), 'bench', 'report.html')})")
    return 0


def cmd_inspect(args) -> int:
    s = inspect(args.cache, **_flags(args, INSPECT))
    c = s["counts"]
    if not s["label_checks"]:
        stdout.print("label checks skipped: the cache has no labels")
    stdout.print(f"{c['rows']:,} rows: {c['label']:,} likely label errors, {c['duplicate_groups']:,} duplicate groups, "
                 f"{c['outliers']:,} outliers, {c['overlapping_pairs']:,} overlapping class pairs ({s['seconds']} s)")
    stdout.print(f"report: {os.path.join(s['out'], 'report.html')}")
    return 0


def cmd_run(args) -> int:
    from ..pipeline import run

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
    caps = precision.cpu_capabilities()  # one OpenVINO query for the three answers
    why = {p: precision.unsupported(p, caps) for p in precision.PRECISIONS}
    stdout.print("--precision on this CPU: " + ", ".join(p for p, r in why.items() if r is None), highlight=False)
    for reason in filter(None, why.values()):
        stdout.print(f"  {reason}", highlight=False)
    return 0


def _flags(args, params, *leave_out) -> dict:
    """The values of the flags :func:`featcache.params.add_flags` made for ``params``, as keyword arguments."""
    return {p.name: getattr(args, p.name) for p in params if p.cli and p.name not in leave_out}
