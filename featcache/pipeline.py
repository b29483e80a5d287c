"""Pipelines: a TOML file names the data, the backbones, the caches and the heads; run what is stale.

``featcache run pipelines/NAME.toml`` validates the whole file first (an
unknown key, a wrong type or a missing file is an error naming the key and
the file, before any work), then runs, in order: source-domain pre-training
(skipped when its settings and data are unchanged), extraction for each
``[[extract]]`` entry (a no-op when the cache key matches; a cache the
pipeline owns, under its ``out``, is rebuilt when the file or the pre-trained
model changed, while one elsewhere is refused as ``extract`` refuses it),
training of the ``[train]`` heads (skipped when a model directory already
holds the same head on the same cache), the ``[finetune]`` of the
backbone's top block on a cached mid-level map (skipped when its settings and
cache are unchanged), the ``[bench]`` report (resumable by row, keyed by
cache) and the export of one Keras model: a named head, ``"finetune"``, or
``"best"``, whichever trained model scored highest on the validation split.
A thin layer over the Python API.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from pathlib import Path

from . import __version__, pipeline_targets as targets
from .backbones import get_spec
from .params import check as check_params, defaults as param_defaults, schema as param_schema
from .bench import BENCH, bench, check_options, check_report_target
from .console import console
from .datasets import is_dataset_name
from .errors import FeatcacheError, KeyMismatchError
from .files import atomic_write_bytes, remove_stale_temporaries
from .finetune import FINETUNE, check_settings, finetune
from .heads import HEADS, validate_head
from .model_dir import check_model_dir_target, current_card, read_card, stale_rows
from .model_export import export, is_our_model_export
from .plan import DEFAULT_BACKBONE, SETTINGS, ExtractOptions
from .pretrain import PRETRAIN, _is_ours, pretrain
from .report import best_row
from .runner import extract
from .store import MANIFEST, foreign_entries, is_our_manifest, open_cache
from .train import TRAIN, train

_STR, _INT, _FLOAT, _BOOL = (str,), (int,), (int, float), (bool,)
_LIST_STR, _LIST_INT = ("list", str), ("list", int)
_TABLE = ("table",)

SCHEMA = {
    "pipeline": {"name": _STR, "description": _STR, "out": _STR},
    "data": {"source": _STR, "classes": _LIST_INT, "limit": _INT, "first": _INT, "limit_seed": _INT,
             "data_dir": _STR, "allow_outside": _BOOL},
    # the [pretrain], [train], [finetune] and [bench] keys that are keywords of their function come from its one
    # declaration (featcache/params.py); the others name pipeline things: data, [[extract]] names, files under out
    "pretrain": {"source": _STR, **param_schema(PRETRAIN), "out": _STR},
    # the extraction settings come from their one declaration (featcache/plan.py); these four name the rest
    "extract": {"name": _STR, "backbone": _STR, "weights": _STR, "layer": _STR, "cache": _STR,
                **{s.name: _LIST_STR if s.many else (s.type,) + ((bool,) if s.bools else ()) for s in SETTINGS}},
    "train": {"heads": _LIST_STR, "cache": _STR, "params": _TABLE, "export": _STR, **param_schema(TRAIN)},
    "finetune": {"cache": _STR, **param_schema(FINETUNE)},
    "bench": {"caches": _LIST_STR, **param_schema(BENCH)},
    **targets.SCHEMA,  # [[targets]] tables to attach, [[heads]] trained for a target
}
REQUIRED = {"pipeline": ["name"], "data": ["source"], "extract": ["name"], "finetune": ["cache"], **targets.REQUIRED}
LISTS = ("extract", *targets.SCHEMA)  # the sections written [[NAME]]
#: the [[extract]] keys that are ExtractOptions
EXTRACT_OPTIONS = tuple(s.name for s in SETTINGS)


def _type_name(spec) -> str:
    if spec == _TABLE:
        return "a table"
    if isinstance(spec[0], str):
        return f"a list of {spec[1].__name__}"
    return " or ".join(t.__name__ for t in spec)


def _check_type(value, spec) -> bool:
    if spec == _TABLE:
        return isinstance(value, dict)
    if isinstance(spec[0], str):
        return isinstance(value, list) and all(isinstance(v, spec[1]) and not isinstance(v, bool) for v in value)
    if bool not in spec and isinstance(value, bool):
        return False
    return isinstance(value, spec)


def _unknown(path: Path, where: str, key: str, known) -> FeatcacheError:
    near = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(known)})"
    return FeatcacheError(f"{path}: unknown key {where + key!r}{hint}")


def load(path) -> dict:
    """Read and validate a pipeline file; returns the config with paths resolved."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise FeatcacheError(f"pipeline file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FeatcacheError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables by recursion
        raise FeatcacheError(f"{path}: its arrays or tables are nested too deeply to read") from None
    except IsADirectoryError:
        raise FeatcacheError(f"pipeline file {path} is a directory") from None
    for section, value in raw.items():
        if section not in SCHEMA:
            raise _unknown(path, "", section, SCHEMA)
        entries = value if section in LISTS else [value]
        if section in LISTS and not isinstance(value, list):
            raise FeatcacheError(f"{path}: '{section}' must be a list of tables: write [[{section}]]")
        for i, entry in enumerate(entries):
            where = f"{section}[{i}]." if section in LISTS else f"{section}."
            if not isinstance(entry, dict):
                raise FeatcacheError(f"{path}: '{section}' must be a table")
            for key, val in entry.items():
                if key not in SCHEMA[section]:
                    raise _unknown(path, where, key, SCHEMA[section])
                if not _check_type(val, SCHEMA[section][key]):
                    raise FeatcacheError(f"{path}: {where + key!r} must be {_type_name(SCHEMA[section][key])}, "
                                         f"got {type(val).__name__} {val!r}")
            for key in REQUIRED.get(section, []):
                if key not in entry:
                    raise FeatcacheError(f"{path}: {where + key!r} is required")
            if "limit" in entry and "first" in entry:
                raise FeatcacheError(f"{path}: {where + 'limit'!r} (a stratified sample) and {where + 'first'!r} "
                                     "(the first N) cannot both be set")
    for section in ("pipeline", "data"):
        if section not in raw:
            raise FeatcacheError(f"{path}: the [{section}] table is required")
    if not raw.get("extract"):
        raise FeatcacheError(f"{path}: at least one [[extract]] table is required")
    return _resolve(path, raw)


def _resolve(path: Path, cfg: dict) -> dict:
    path = path.resolve()
    base = path.parent.parent if path.parent.name == "pipelines" else path.parent  # paths are relative to the repo
    out = Path(cfg["pipeline"].get("out", f"out/{cfg['pipeline']['name']}"))
    out = out if out.is_absolute() else base / out
    cfg["pipeline"]["out"] = out

    def source_path(text, key):
        if is_dataset_name(text):
            return text
        p = Path(text)
        p = p if p.is_absolute() else base / p
        if not p.exists():
            raise FeatcacheError(f"{path}: {key} = {text!r}: no such folder or file ({p})")
        return str(p)

    cfg["data"]["source"] = source_path(cfg["data"]["source"], "data.source")
    if "pretrain" in cfg:
        pre = cfg["pretrain"]
        pre["source"] = source_path(pre.get("source", cfg["data"]["source"]), "pretrain.source")
        pre["out"] = str(out / pre.get("out", "pretrained.keras"))
    names = _resolve_extracts(path, cfg, out, source_path)
    targets.resolve(path, cfg, names, base)
    for section in ("train", "bench"):
        for h in cfg.get(section, {}).get("heads", []) + cfg.get(section, {}).get("baseline_heads", []):
            if h not in HEADS:
                raise FeatcacheError(f"{path}: {section}.heads: unknown head {h!r}; known: {', '.join(HEADS)}")
    train = cfg.get("train", {})
    if "cache" in train and train["cache"] not in names:
        raise FeatcacheError(f"{path}: train.cache = {train['cache']!r} names no [[extract]] (have {names})")
    for c in cfg.get("bench", {}).get("caches", []):
        if c not in names:
            raise FeatcacheError(f"{path}: bench.caches: {c!r} names no [[extract]] (have {names})")
    ft = cfg.get("finetune")
    if ft is not None:
        if ft["cache"] not in names:
            raise FeatcacheError(f"{path}: finetune.cache = {ft['cache']!r} names no [[extract]] (have {names})")
        ex = cfg["extract"][names.index(ft["cache"])]
        if ex.get("pooling") != "none" or not (ex.get("outputs") or ex.get("layer")):
            raise FeatcacheError(f"{path}: finetune.cache = {ft['cache']!r} must store a mid-level map whole: give "
                                 "that [[extract]] outputs = [\"LAYER\"] and pooling = \"none\"")
    # only Keras heads export to one end-to-end Keras model
    exportable = [h for h in train.get("heads", []) if HEADS[h].kind == "keras"] + (["finetune"] if ft else [])
    if "export" in train and train["export"] not in exportable + ["best"] * bool(exportable):
        raise FeatcacheError(f"{path}: train.export = {train['export']!r} is not one of the Keras heads in "
                             f"train.heads, 'finetune' (with a [finetune] table) or 'best' (of those): have "
                             f"{exportable or 'none'}")
    cfg["exportable"] = exportable
    for head, params in train.get("params", {}).items():
        if head not in train.get("heads", []) or not isinstance(params, dict):
            raise FeatcacheError(f"{path}: train.params.{head}: must be a table for one of train.heads")
    _check_values(path, cfg)
    return cfg


def _resolve_extracts(path: Path, cfg: dict, out: Path, source_path) -> list[str]:
    """Each [[extract]]'s backbone checked (a .keras file found) and its cache placed under ``out``; their names."""
    names = []
    for i, ex in enumerate(cfg["extract"]):
        if ex["name"] in names:
            raise FeatcacheError(f"{path}: two [[extract]] tables are named {ex['name']!r}")
        names.append(ex["name"])
        backbone = ex.get("backbone", DEFAULT_BACKBONE)
        if backbone == "pretrained":
            if "pretrain" not in cfg:
                raise FeatcacheError(f"{path}: extract[{i}].backbone = 'pretrained' needs a [pretrain] table")
        elif backbone.endswith(".keras"):
            ex["backbone"] = source_path(backbone, f"extract[{i}].backbone")
        else:
            try:
                get_spec(backbone)
            except FeatcacheError as exc:
                raise FeatcacheError(f"{path}: extract[{i}].backbone: {exc}") from None
        ex["cache"] = str(out / ex.get("cache", f"cache-{ex['name']}"))
    return names


def _check_values(path: Path, cfg: dict) -> None:
    """The values the schema's types cannot judge, with the validators the stages use, so a bad one
    fails here and not after an extraction: head parameters, bench settings, extraction options."""
    train = cfg.get("train", {})
    for head, params in train.get("params", {}).items():  # a head's defaults are valid: no scikit-learn import
        try:
            validate_head(head, None, params)
        except FeatcacheError as exc:
            raise FeatcacheError(f"{path}: 'train.params.{head}': {exc}") from None
    if "finetune" in cfg:
        try:
            check_settings(**cfg["finetune"])  # it judges the numbers; the names were judged above
        except FeatcacheError as exc:
            raise FeatcacheError(f"{path}: finetune: {exc}") from None
    if "pretrain" in cfg:
        check_params(PRETRAIN, cfg["pretrain"], label=lambda key: f"{path}: 'pretrain.{key}'")
    if "bench" in cfg:
        b = cfg["bench"]
        check_options(**{k: v for k, v in b.items() if k not in ("caches", "heads")},
                      name=lambda key: f"{path}: 'bench.{key}'")
        for head, head_params in b.get("params", {}).items():
            if head not in (b.get("heads") or HEADS) or not isinstance(head_params, dict):
                raise FeatcacheError(f"{path}: 'bench.params.{head}': must be a table for one of the benchmarked "
                                     "heads")
            try:
                validate_head(head, None, head_params)
            except FeatcacheError as exc:
                raise FeatcacheError(f"{path}: 'bench.params.{head}': {exc}") from None
    for i, ex in enumerate(cfg["extract"]):
        opts = {k: ex[k] for k in EXTRACT_OPTIONS if k in ex}
        try:
            ExtractOptions(**opts).check()
        except FeatcacheError as exc:
            raise FeatcacheError(f"{path}: extract[{i}]: {exc}") from None


def _current_finetune(mdir: Path, cache, settings: dict, views: int = 0) -> dict | None:
    """The fine-tuned model's card if ``mdir`` holds one trained on ``cache``'s rows with ``settings``, else None.

    The card records every setting ``finetune`` used (``card["finetune"]``);
    a key the file leaves out is compared at ``finetune``'s default.
    """

    card = current_card(mdir, "finetune", cache.key, {}, views if settings.get("views", "auto") == "auto" else 0,
                        rows_key=cache.rows_key)
    if card is None:
        return None
    recorded = dict(card.get("finetune", {}), output=card["features"].get("output"))
    defaults = {k: v for k, v in param_defaults(FINETUNE).items()
                if k in recorded and k not in ("from_layer", "output")}  # those two resolve to the cache's own
    for key, value in {**defaults, **settings}.items():
        if recorded.get(key) != value:
            return None
    return card


def _say(msg: str) -> None:
    console.print(msg, highlight=False)


def run(path, *, progress: bool = True) -> dict:
    """Run a pipeline file; returns where everything went."""
    cfg = load(path)
    out: Path = cfg["pipeline"]["out"]
    check_output_plan(path, cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatcacheError(f"cannot create the pipeline's out folder {out}: {exc.strerror or exc}") from None
    result = {"pipeline": cfg["pipeline"]["name"], "out": str(out), "caches": {}, "models": {}}
    transfer = _pretrain_stage(cfg, result) if "pretrain" in cfg else None
    for ex in cfg["extract"]:
        _extract_stage(cfg, ex, transfer, result, progress)
    targets.targets_stage(cfg, result)
    val_accuracy = {}  # model name: validation accuracy, for export = "best"
    if cfg.get("train", {}).get("heads"):
        _train_stage(cfg, result, val_accuracy)
    targets.heads_stage(cfg, result)
    finetune_test = _finetune_stage(cfg, result, val_accuracy) if "finetune" in cfg else None
    if cfg.get("train", {}).get("export"):
        _export_stage(cfg, result, val_accuracy)
    if "bench" in cfg:
        top = _bench_stage(cfg, result, progress)
        if finetune_test is not None and top is not None:
            _compare(result, finetune_test, top)
    return result


def _pretrain_stage(cfg: dict, result: dict) -> str:
    """Source-domain pre-training (kept when unchanged); returns the layer its features come from."""
    pre = dict(cfg["pretrain"])
    summary = pretrain(pre.pop("source"), out=pre.pop("out"), data_dir=cfg["data"].get("data_dir"), **pre)
    state = "unchanged, kept" if summary.get("skipped") else f"trained in {summary['seconds']} s"
    _say(f"[bold]pretrain[/] {summary['model']}: {state} (source-domain val accuracy "
         f"{100 * summary['val_accuracy']:.1f}%)")
    result["pretrained"] = summary["model"]
    return summary["feature_layer"]


def _extract_stage(cfg: dict, ex: dict, transfer: str | None, result: dict, progress: bool) -> None:
    """One [[extract]] cache: a no-op when its key matches; the pipeline's own is rebuilt when stale."""
    out, data = cfg["pipeline"]["out"], cfg["data"]
    opts = {k: ex[k] for k in EXTRACT_OPTIONS if k in ex}
    backbone, layer = ex.get("backbone", DEFAULT_BACKBONE), ex.get("layer")
    if backbone == "pretrained":  # default: the source CNN's last conv map, whole
        if layer is None:
            layer = transfer
            opts.setdefault("pooling", "none")
        backbone = result["pretrained"]
    opts.update(weights=ex.get("weights", "imagenet"), layer=layer, classes=data.get("classes"),
                limit=data.get("limit"), first=data.get("first"), data_dir=data.get("data_dir"),
                progress=progress, **({"limit_seed": data["limit_seed"]} if "limit_seed" in data else {}),
                allow_outside=data.get("allow_outside", False), return_summary=True)
    try:
        cache, summary = extract(data["source"], backbone, ex["cache"], **opts)
    except KeyMismatchError as exc:
        if not Path(ex["cache"]).resolve().is_relative_to(out.resolve()):
            raise  # not the pipeline's own cache: never replaced behind the user's back
        _say(f"[bold]extract[/] {ex['name']}: settings changed ({', '.join(exc.differences)}); "
             f"rebuilding {ex['cache']}")
        cache, summary = extract(data["source"], backbone, ex["cache"], overwrite=True, **opts)
    state = "up to date, nothing extracted" if summary.noop else f"grew: {summary.grow_line()}" if summary.grow \
        else f"{summary.computed_shards} shards computed at {summary.images_per_s:.0f} img/s"
    _say(f"[bold]extract[/] {ex['name']}: {cache.path} ({len(cache):,} rows; {state})")
    result["caches"][ex["name"]] = str(cache.path)


def _train_stage(cfg: dict, result: dict, val_accuracy: dict) -> None:
    """The [train] heads, each skipped when its model directory holds the same head on the same cache."""
    train_cfg, out = cfg["train"], cfg["pipeline"]["out"]
    cache_name = train_cfg.get("cache", cfg["extract"][0]["name"])
    cache = open_cache(result["caches"][cache_name])
    for head in train_cfg["heads"]:
        params = train_cfg.get("params", {}).get(head, {})
        mdir = out / "models" / f"{cache_name}-{head}"
        card = current_card(mdir, head, cache.key, params, cache.views, rows_key=cache.rows_key)
        if card is not None:
            _say(f"[bold]train[/] {head}: up to date ({mdir}, test accuracy "
                 f"{100 * card['metrics']['test']['accuracy']:.2f}%)")
        else:
            why = stale_rows(mdir, cache.rows_key, len(cache))
            card = train(cache, head, params=params, out=mdir).card
            _say(f"[bold]train[/] {head}: {f'retrained, {why}: ' if why else ''}test accuracy "
                 f"{100 * card['metrics']['test']['accuracy']:.2f}% (fit {card['fit_seconds']:.2f} s) -> {mdir}")
        result["models"][head] = str(mdir)
        val_accuracy[head] = card["metrics"].get("val", {}).get("accuracy", float("-inf"))


def _finetune_stage(cfg: dict, result: dict, val_accuracy: dict) -> float:
    """The [finetune] of the top block, skipped when its settings and cache are unchanged; its test accuracy."""
    out = cfg["pipeline"]["out"]
    settings = {k: v for k, v in cfg["finetune"].items() if k != "cache"}
    cache = open_cache(result["caches"][cfg["finetune"]["cache"]])
    mdir = out / "models" / f"{cfg['finetune']['cache']}-finetune"
    card = _current_finetune(mdir, cache, settings, cache.views)
    if card is not None:
        _say(f"[bold]finetune[/] up to date ({mdir}, test accuracy "
             f"{100 * card['metrics']['test']['accuracy']:.2f}%)")
    else:
        card = finetune(cache, out=mdir, **settings).card
        ft = card["finetune"]
        _say(f"[bold]finetune[/] {ft['from_layer']} and above: test accuracy "
             f"{100 * card['metrics']['test']['accuracy']:.2f}% ({card['fit_seconds']:.1f} s, "
             f"{ft['trainable_weights']:,} weights trained) -> {mdir}")
    result["models"]["finetune"] = str(mdir)
    val_accuracy["finetune"] = card["metrics"].get("val", {}).get("accuracy", float("-inf"))
    return card["metrics"]["test"]["accuracy"]


def _export_stage(cfg: dict, result: dict, val_accuracy: dict) -> None:
    """One end-to-end Keras model, skipped when its stamp names the same head file."""
    train_cfg, out = cfg["train"], cfg["pipeline"]["out"]
    name = train_cfg["export"]
    if name == "best":
        name = max(cfg["exportable"], key=val_accuracy.get)
        _say(f"[bold]export[/] best on validation: {name} ({100 * val_accuracy[name]:.2f}%)")
    target = out / f"{train_cfg['export']}.keras"
    source = read_card(result["models"][name])["sha256"]
    stamp = target.with_name(target.name + ".json")
    if target.is_file() and (_read_stamp(stamp) or {}).get("head_sha256") == source:
        _say(f"[bold]export[/] {target}: up to date")
    else:
        export(result["models"][name], target)
        _write_json(stamp, {"format": STAMP_FORMAT, "head_sha256": source, "model": name})
        _say(f"[bold]export[/] {target}: one Keras model, images of any size in, probabilities out")
    result["exported"] = str(target)


def _bench_stage(cfg: dict, result: dict, progress: bool) -> dict | None:
    """The [bench] report, skipped when its stamp shows the same inputs and the report as bench left it.

    Returns the best frozen head's row (head, features, accuracy), or None.
    """
    bench_cfg, out = cfg["bench"], cfg["pipeline"]["out"]
    names = bench_cfg.get("caches") or list(result["caches"])
    report = out / bench_cfg.get("out", "report")
    result["report"] = str(report)
    stamp = _bench_stamp_path(cfg)
    opened = {n: open_cache(result["caches"][n]) for n in names}
    inputs = _bench_inputs(bench_cfg, opened)
    if "target" in bench_cfg:  # each target's values by their checksum
        inputs["targets"] = targets.bench_inputs(bench_cfg, opened[names[0]])
    recorded = _read_bench_stamp(stamp)
    if recorded is not None and recorded["inputs"] == inputs and recorded["files"] == _report_files(report):
        _say(f"[bold]bench[/] report: {report / 'report.html'}: up to date")
        return recorded["best"]
    settings = {k: v for k, v in bench_cfg.items() if k not in ("caches", "heads", "out")}  # bench's own keywords
    changed = targets.changed_targets(recorded, inputs, _report_files(report))
    rows = targets.rebench(cfg, opened[names[0]], report, changed) if changed else bench(
        [result["caches"][n] for n in names], bench_cfg.get("heads") or None, out=report, progress=progress, **settings)
    _say(f"[bold]bench[/] report: {report / 'report.html'} (and report.md, results.csv)")
    top = best_row([r for r in rows if "target" not in r])  # label's rows: target rows are not classifiers
    best = recorded["best"] if changed else None if top is None else {k: top[k] for k in ("head", "features",
                                                                                          "accuracy")}
    if rows and all(r.get("status") == "ok" for r in rows):  # a failed row is for bench to judge again next run
        _write_json(stamp, {"format": BENCH_STAMP_FORMAT, "inputs": inputs, "files": _report_files(report),
                            "best": best})
    else:
        stamp.unlink(missing_ok=True)  # proven ours by the output plan; it no longer describes the report
    return best


def _compare(result: dict, finetune_test: float, top: dict) -> None:
    """The fine-tuned top block against the best frozen head, on the test split."""
    _say(f"[bold]compare[/] test accuracy: fine-tuned top block {100 * finetune_test:.2f}%, best frozen head "
         f"({top['head']} on {top['features']}) {100 * top['accuracy']:.2f}%")
    result["compare"] = {"finetune": finetune_test, "best_frozen": dict(top)}


def _write_json(path: Path, data: dict) -> None:
    remove_stale_temporaries(path)
    atomic_write_bytes(path, (json.dumps(data) + "\n").encode())


# --------------------------------------------------------------------------- the output plan

#: the ``format`` of the stamp beside a pipeline's exported model (older stamps have none)
STAMP_FORMAT = "featcache-pipeline-export/1"
_STAMP_KEYS = {"format", "head_sha256", "model"}


def _json_or_none(path: Path):
    """The JSON in ``path``, or None when it cannot be read or parsed: a stamp that is not ours proves nothing."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def _read_stamp(stamp: Path) -> dict | None:
    """The export stamp featcache wrote at ``stamp``, or None when there is none or it is not provably ours."""
    if stamp.is_symlink() or not stamp.is_file():
        return None
    data = _json_or_none(stamp)
    if not isinstance(data, dict) or not {"head_sha256", "model"} <= set(data) <= _STAMP_KEYS:
        return None
    sha = data["head_sha256"]
    ok = isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)
    return data if ok and data.get("format", STAMP_FORMAT) == STAMP_FORMAT else None


#: the ``format`` of the stamp beside a pipeline's bench report
BENCH_STAMP_FORMAT = "featcache-pipeline-bench/1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _bench_stamp_path(cfg: dict) -> Path:
    """Beside the report, not in it: the report directory holds only bench's own file names."""
    out: Path = cfg["pipeline"]["out"]
    return out / f"{cfg['bench'].get('out', 'report')}.bench.json"


def _bench_inputs(bench_cfg: dict, caches: dict) -> dict:
    """Everything a bench report depends on that a no-op run can see: settings, caches (key and views), version."""
    return {"featcache": __version__, "bench": {k: bench_cfg[k] for k in sorted(bench_cfg)},
            "caches": {n: [c.rows_key, c.views] for n, c in caches.items()}}


def _report_files(report: Path) -> dict | None:
    """``{relative path: sha256}`` of every file in the report, or None when it holds a link or is missing."""
    if report.is_symlink() or not report.is_dir():
        return None
    files = {}
    for p in sorted(report.rglob("*")):
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            return None
        if p.is_file():
            files[p.relative_to(report).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


def _read_bench_stamp(stamp: Path) -> dict | None:
    """The bench stamp featcache wrote at ``stamp``, or None when there is none or it is not provably ours."""
    if stamp.is_symlink() or not stamp.is_file():
        return None
    data = _json_or_none(stamp)
    if not isinstance(data, dict) or set(data) != {"format", "inputs", "files", "best"}:
        return None
    files, best = data["files"], data["best"]
    ok = (data["format"] == BENCH_STAMP_FORMAT and isinstance(data["inputs"], dict) and isinstance(files, dict)
          and all(isinstance(k, str) and isinstance(v, str) and _SHA256.match(v) for k, v in files.items())
          and (best is None or isinstance(best, dict) and set(best) == {"head", "features", "accuracy"}))
    return data if ok else None


def output_plan(cfg: dict) -> list[tuple[str, Path]]:
    """Every path a run of ``cfg`` may write, with what it is: ``(kind, path)``, in stage order."""
    out: Path = cfg["pipeline"]["out"]
    plan = [("folder", out)]
    if "pretrain" in cfg:
        model = Path(cfg["pretrain"]["out"])
        plan += [("pretrained", model), ("pretrained-sidecar", model.with_name(model.name + ".json"))]
    plan += [("cache", Path(ex["cache"])) for ex in cfg["extract"]]
    train = cfg.get("train", {})
    cache_name = train.get("cache", cfg["extract"][0]["name"])
    models = [out / "models" / f"{cache_name}-{h}" for h in train.get("heads", [])]
    if "finetune" in cfg:
        models.append(out / "models" / f"{cfg['finetune']['cache']}-finetune")
    models += targets.model_dirs(cfg)
    if models:
        plan.append(("folder", out / "models"))
    plan += [("model", m) for m in models]
    if train.get("export"):
        target = out / f"{train['export']}.keras"
        plan += [("export", target), ("stamp", target.with_name(target.name + ".json"))]
    if "bench" in cfg:
        plan += [("report", out / cfg["bench"].get("out", "report")), ("bench-stamp", _bench_stamp_path(cfg))]
    return plan


def _refusal(kind: str, target: Path) -> str | None:
    """Why featcache may not write ``target`` (a ``kind`` of :func:`output_plan`), or None when it may."""
    if kind == "folder":
        return "exists and is not a folder" if os.path.lexists(target) and not target.is_dir() else None
    if kind == "cache":
        if os.path.lexists(target) and not target.is_dir():
            return "exists and is not a folder"
        foreign = [] if is_our_manifest(target / MANIFEST) else foreign_entries(target)
        return f"is not a featcache cache and holds {', '.join(foreign[:3])}" if foreign else None
    if kind in ("model", "report"):
        try:
            (check_model_dir_target if kind == "model" else check_report_target)(target)
        except FeatcacheError as exc:
            reason = str(exc).split(";")[0]  # its advice names --out, which a pipeline has not
            return reason.removeprefix(f"--out {os.path.abspath(target)} ").removeprefix(f"--out {target} ")
        return None
    if not os.path.lexists(target):
        return None
    proven = {"export": is_our_model_export, "stamp": lambda p: _read_stamp(p) is not None,
              "bench-stamp": lambda p: _read_bench_stamp(p) is not None,
              "pretrained": lambda p: _is_ours(p, p.with_name(p.name + ".json")),
              "pretrained-sidecar": _is_pretrain_sidecar}[kind]
    return None if not target.is_symlink() and proven(target) else "exists and featcache did not write it"


def _is_pretrain_sidecar(path: Path) -> bool:
    """pretrain's summary beside its model: JSON with the settings and the model it names."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "settings" in data and "model" in data

def check_output_plan(path, cfg: dict) -> None:
    """Refuse, before any work, a pipeline whose output plan meets a path featcache cannot prove it wrote."""
    for kind, target in output_plan(cfg):
        reason = _refusal(kind, target)
        if reason:
            raise FeatcacheError(f"{path}: the pipeline would write {target}, which {reason}; move it away or "
                                 "set [pipeline] out to a new folder")
