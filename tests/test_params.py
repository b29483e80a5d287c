"""Every entry point's settings are declared once (featcache/params.py): its flags, its pipeline keys and its
Python signature agree with the declaration, and every value the declaration refuses is refused by all three,
in one line naming it, before any work."""

import argparse
import inspect
import json
import math
import os

import pytest

from featcache import params as P
from featcache import pipeline
from featcache.bench import BENCH, bench
from featcache.compare import COMPARE, compare
from featcache.cli import build_parser, main
from featcache.errors import FeatcacheError
from featcache.finetune import FINETUNE, finetune
from featcache.plan import SETTINGS, ExtractOptions
from featcache.predict import PREDICT, predict
from featcache.pretrain import PRETRAIN, pretrain
from featcache.train import TRAIN, train

#: command: (its declaration, its function, its pipeline table or None)
ENTRY = {"bench": (BENCH, bench, "bench"), "train": (TRAIN, train, "train"),
         "finetune": (FINETUNE, finetune, "finetune"), "predict": (PREDICT, predict, None),
         "pretrain": (PRETRAIN, pretrain, "pretrain"), "compare": (COMPARE, compare, None)}
#: keywords of the function that are not settings (where the output goes, given by hand)
UNDECLARED = {"pretrain": {"out"}}
#: flags written by hand in cli/arguments.py: positional-like things, --param, --quiet, and the source's flags
HAND_FLAGS = {"bench": {"--heads", "--all", "--param", "--quiet"}, "train": {"--param", "--quiet"},
              "finetune": {"--quiet"}, "predict": {"--quiet"}, "compare": {"--quiet"},
              "pretrain": {"--out", "--classes", "--limit", "--first", "--limit-seed", "--data-dir", "--allow-outside"}}
#: keys of a pipeline table that name pipeline things ([[extract]] names, files under its out)
PIPELINE_ONLY = {"bench": {"caches"}, "train": {"heads", "cache", "params", "export"}, "finetune": {"cache"},
                 "pretrain": {"source", "out"}}
#: every flag and pipeline key there was before the declarations: users type them
OLD_FLAGS = {
    "bench": {"--heads", "--all", "--param", "--cv", "--timeout", "--n-jobs", "--backend", "--ray-address",
              "--baseline-heads", "--pixel-size", "--out", "--use-views", "--quiet"},
    "train": {"--head", "--param", "--preprocess", "--output", "--stream", "--val-fraction", "--test-fraction",
              "--out", "--use-views", "--quiet"},
    "finetune": {"--from-layer", "--to-layer", "--output", "--epochs", "--head-epochs", "--batch-size",
                 "--random-state", "--learning-rate", "--use-views", "--out", "--quiet"},
    "predict": {"--out", "--cache-dir", "--quiet"},
    "pretrain": {"--arch", "--epochs", "--out", "--classes", "--limit", "--first", "--limit-seed", "--data-dir"},
    "compare": {"--backbones"},
}
OLD_KEYS = {
    "pretrain": {"source", "classes", "limit", "first", "limit_seed", "arch", "epochs", "batch_size", "learning_rate",
                 "out"},
    "train": {"heads", "cache", "params", "export"},
    "finetune": {"cache", "from_layer", "to_layer", "output", "epochs", "head_epochs", "learning_rate",
                 "head_learning_rate", "batch_size", "dropout", "patience", "random_state", "views"},
    "bench": {"heads", "caches", "n_jobs", "timeout", "cv", "baseline_heads", "out", "views"},
}


def _subparser(command) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _flags(command) -> dict:
    """``{--flag: action}`` of ``featcache COMMAND``."""
    return {s: a for a in _subparser(command)._actions for s in a.option_strings if s.startswith("--")}


# --------------------------------------------------------------------------- (a) one declaration, three faces


@pytest.mark.parametrize("command", ENTRY)
def test_the_signature_is_the_declaration(command):
    declared, func, _ = ENTRY[command]
    params = list(inspect.signature(func).parameters.values())[1:]  # the cache, caches, source or model
    keywords = {p.name: p.default for p in params
                if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not inspect.Parameter.empty}
    assert set(keywords) == {p.name for p in declared} | UNDECLARED.get(command, set())
    for p in declared:
        assert keywords[p.name] == p.default, (command, p.name)


@pytest.mark.parametrize("command", ENTRY)
def test_the_flags_are_the_declaration(command):
    declared = ENTRY[command][0]
    flags = _flags(command)
    for p in declared:
        if p.cli:
            action = flags.pop(p.flag)
            if p.type is bool:  # --stream and --no-stream
                assert flags.pop("--no-" + p.flag[2:]) is action
            assert action.dest == p.name and action.default == p.default, (command, p.name)
            assert action.help == p.help
    flags.pop("--help")
    flags.pop("--verbose")  # every command's, made in build_parser: TensorFlow's start-up messages (featcache/quiet.py)
    assert set(flags) == HAND_FLAGS[command], "a flag written by hand that the declaration should hold"
    assert OLD_FLAGS[command] <= set(_flags(command)), "a flag users type went away"


@pytest.mark.parametrize("command", [c for c in ENTRY if ENTRY[c][2]])
def test_the_pipeline_table_is_the_declaration(command):
    declared, _, section = ENTRY[command]
    table = pipeline.SCHEMA[section]
    mine = {p.name for p in declared if p.pipeline}
    assert set(table) == mine | PIPELINE_ONLY[section]
    assert {k: table[k] for k in mine} == P.schema(declared)
    assert OLD_KEYS[section] <= set(table), "a pipeline key users type went away"


def test_bench_table_takes_every_keyword_that_makes_sense_in_a_file():
    keywords = set(inspect.signature(bench).parameters) - {"caches", "progress"}  # progress: run --quiet
    assert keywords <= set(pipeline.SCHEMA["bench"])


def test_extraction_settings_are_params_too():
    assert all(isinstance(s, P.Param) for s in SETTINGS)
    opts = ExtractOptions()
    assert all(getattr(opts, s.name) == s.default for s in SETTINGS if s.name != "jit")


def test_check_says_what_is_allowed_in_one_line():
    p = P.Param("cv", None, "folds", int, minimum=2)
    with pytest.raises(FeatcacheError, match=r"^bench\.cv must be an integer of at least 2, got 1$"):
        P.check([p], {"cv": 1}, label=lambda k: f"bench.{k}")
    q = P.Param("mode", "a", choices=("a", "b"))
    with pytest.raises(FeatcacheError, match="^mode must be one of a, b, got 'c'$"):
        P.check([q], {"mode": "c"})
    r = P.Param("share", 0.5, type=float, minimum=0, maximum=1, bounds="[)")
    assert P.describe(r) == "a number in [0, 1)"
    P.check([p, q, r], {"cv": None, "mode": "b", "share": 0, "unknown": object()})


# --------------------------------------------------------------------------- (b) every invalid value refused


def _cases(want=lambda p: True):
    return [pytest.param(command, p, bad, id=f"{command}-{p.name}-{bad!r}")
            for command, (declared, _, _) in ENTRY.items() for p in declared if want(p)
            for bad in P.invalid_values(p)]


def test_the_generator_covers_every_kind_of_refusal():
    kinds = {(p.name, type(b).__name__) for _c, (d, _f, _s) in ENTRY.items() for p in d for b in P.invalid_values(p)}
    assert len(_cases()) > 60 and ("cv", "int") in kinds and ("views", "str") in kinds
    for case in _cases():
        _command, p, bad = case.values
        with pytest.raises(FeatcacheError):
            P.check([p], {p.name: bad})


def _call(command, tmp_path, **kw):
    nowhere = tmp_path / "nowhere"  # the check comes first: no cache, model or source is ever opened
    if command == "predict":
        return predict(nowhere, [str(nowhere)], **kw)
    if command == "pretrain":
        return pretrain(str(nowhere), out=tmp_path / "m.keras", **kw)
    return ENTRY[command][1](nowhere, **kw)


@pytest.mark.parametrize("command, param, bad", _cases())
def test_the_python_function_refuses_it_naming_the_param(tmp_path, command, param, bad):
    with pytest.raises(FeatcacheError, match=f"^{param.name} must be ") as info:
        _call(command, tmp_path, **{param.name: bad})
    assert "\n" not in str(info.value)
    assert os.listdir(tmp_path) == []


def _cli_text(p, bad):
    """``bad`` as typed after the flag, or None when the command line cannot say it."""
    items = bad if p.many and isinstance(bad, list) else [bad]
    if p.many and not isinstance(bad, list):
        return None  # "not-a-list" is a list of one on the command line
    if p.type in (str, P.Path) and not all(isinstance(v, str) for v in items):
        return None  # every word is a string
    return ",".join(str(v) for v in items)


CLI_CASES = [c for c in _cases(lambda p: p.cli and p.type is not bool) if _cli_text(*c.values[1:]) is not None]
POSITIONAL = {"bench": ["nowhere"], "compare": ["nowhere"], "train": ["nowhere"], "finetune": ["nowhere"], "predict": ["nowhere", "img.png"],
              "pretrain": ["nowhere", "--out", "m.keras"]}


@pytest.mark.parametrize("command, param, bad", CLI_CASES)
def test_the_command_line_refuses_it_in_one_line(tmp_path, monkeypatch, capsys, command, param, bad):
    monkeypatch.chdir(tmp_path)
    try:
        code = main([command, *POSITIONAL[command], param.flag, _cli_text(param, bad)])
    except SystemExit as exc:  # argparse: a value its type or choices refuse
        code = exc.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error: " in line]
    assert code == 2 and len(errors) == 1, err
    assert param.flag in errors[0] or f"{param.name} must be" in errors[0], errors[0]
    assert "Traceback" not in err and os.listdir(tmp_path) == []


GOOD = """
[pipeline]
name = "t"
[data]
source = "fashion_mnist:test"
[[extract]]
name = "a"
weights = "none"
pooling = "none"
outputs = ["block_15_add"]
"""
#: what each table needs besides the key under test
TABLE = {"bench": "[bench]\n", "finetune": '[finetune]\ncache = "a"\n', "pretrain": "[pretrain]\n"}


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


PIPELINE_CASES = [c for c in _cases(lambda p: p.pipeline) if ENTRY[c.values[0]][2]]


@pytest.mark.parametrize("command, param, bad", PIPELINE_CASES)
def test_a_pipeline_file_refuses_it_naming_the_key(tmp_path, command, param, bad):
    path = tmp_path / "p.toml"
    path.write_text(GOOD + TABLE[command] + f"{param.name} = {_toml(bad)}\n")
    with pytest.raises(FeatcacheError) as info:
        pipeline.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert f"{command}.{param.name}'" in message or f"{command}: {param.name} must be" in message, message


@pytest.mark.parametrize("command", TABLE)
def test_a_pipeline_file_takes_every_declared_key_at_its_default(tmp_path, command):
    declared = ENTRY[command][0]
    keys = "".join(f"{p.name} = {_toml(p.default)}\n" for p in declared if p.pipeline and p.default is not None)
    path = tmp_path / "p.toml"
    path.write_text(GOOD + TABLE[command] + keys)
    cfg = pipeline.load(path)
    assert {p.name for p in declared if p.pipeline and p.default is not None} <= set(cfg[command])
