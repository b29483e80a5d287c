"""Every entry point's settings, declared once: a :class:`Param` per keyword.

A tuple of Params beside a function (``featcache.bench.options.BENCH``,
``featcache.train.TRAIN`` ...) is the one place its defaults, bounds, choices
and help live: the function takes its keyword defaults from it and checks its
values with :func:`check` before any work, ``featcache SUB`` builds its flags
with :func:`add_flags`, and pipeline files type-check their table with
:func:`schema`. A leaf module (it imports nothing of featcache's but
``errors``), so every layer may use it.
"""

from __future__ import annotations

import argparse
import math
import os
import textwrap
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from .errors import FeatcacheError, is_integer

__all__ = ["Param", "add_flags", "schema", "check", "defaults", "invalid_values", "describe", "docs"]


@dataclass(frozen=True)
class Param:
    """One keyword of an entry point: its default, what values it takes, and where it is exposed.

    ``type`` is ``int``, ``float`` (finite), ``str``, ``Path`` (a str or
    os.PathLike, not empty), ``bool``, ``dict`` (a table) or ``object`` (not
    judged here). ``bounds`` says whether ``minimum`` and ``maximum`` are
    included: ``"[]"`` both, ``"(]"``, ``"[)"``, ``"()"``.
    """

    name: str
    default: object
    help: str = ""
    type: type = str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    bounds: str = "[]"
    #: a list of values (comma-separated on the command line)
    many: bool = False
    #: a list's fewest items
    min_items: int = 0
    #: True and False stand for "true" and "false" (Python, TOML)
    bools: bool = False
    #: None is a value too (always so when the default is None)
    nullable: bool = False
    #: a ``featcache SUB`` flag built by :func:`add_flags`
    cli: bool = True
    #: a key of the entry point's pipeline table
    pipeline: bool = True
    #: the flag when it is not ``--`` + the name with dashes (``--use-views`` for ``views``)
    spelling: str | None = None
    #: the value of the flag given alone (argparse's ``nargs="?"``): ``--mlflow`` as well as ``--mlflow URI``
    const: object = None

    @property
    def flag(self) -> str:
        return self.spelling or "--" + self.name.replace("_", "-")

    @property
    def accepts_none(self) -> bool:
        return self.nullable or self.default is None


def defaults(params) -> dict:
    """``{name: default}`` of every Param."""
    return {p.name: p.default for p in params}


def _csv(item_type):
    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return [item_type(t) for t in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item_type.__name__} values, "
                                             f"got {text!r}") from None
    parse.__name__ = f"list of {item_type.__name__}"
    return parse


def add_flags(parser, params) -> None:
    """Add the flag of every ``cli`` Param to ``parser`` (an argparse parser or group); ``dest`` is its name."""
    for p in params:
        if not p.cli:
            continue
        kw = {"dest": p.name, "default": p.default, "help": p.help}
        if p.type is bool:
            parser.add_argument(p.flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        item = str if p.type in (Path, object) else p.type
        if p.many:
            kw["type"] = _csv(item)
        else:
            kw.update(type=item, choices=p.choices)
        if p.const is not None:
            kw.update(nargs="?", const=p.const)
        parser.add_argument(p.flag, **kw)


_SPEC = {int: (int,), float: (int, float), str: (str,), Path: (str,), bool: (bool,), dict: ("table",)}


def schema(params) -> dict:
    """``{name: type spec}`` of every ``pipeline`` Param, as :mod:`featcache.pipeline` checks a TOML value."""
    out = {}
    for p in params:
        if not p.pipeline:
            continue
        if p.many:
            out[p.name] = ("list", str if p.type in (Path, object) else p.type)
        else:
            out[p.name] = _SPEC.get(p.type, (str,)) + ((bool,) if p.bools else ())
    return out


def _in_bounds(p: Param, value) -> bool:
    low_open, high_open = p.bounds[0] == "(", p.bounds[1] == ")"
    if p.minimum is not None and (value < p.minimum or low_open and value == p.minimum):
        return False
    return p.maximum is None or not (value > p.maximum or high_open and value == p.maximum)


def _valid_one(p: Param, value) -> bool:
    if p.bools and isinstance(value, bool):
        return True
    if p.type is int:
        ok = is_integer(value)
    elif p.type is float:
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    elif p.type is Path:
        ok = isinstance(value, (str, os.PathLike)) and os.fspath(value) != ""
    elif p.type is object:
        return True
    else:
        ok = isinstance(value, p.type) and not (p.type is not bool and isinstance(value, bool))
    if not ok or (p.choices is not None and value not in p.choices):
        return False
    return not (p.type in (int, float) and not _in_bounds(p, value))


def _valid(p: Param, value) -> bool:
    if value is None:
        return p.accepts_none
    if p.many:
        return (isinstance(value, (list, tuple)) and len(value) >= p.min_items
                and all(_valid_one(p, v) and not (isinstance(v, str) and not v) for v in value))
    return _valid_one(p, value)


def _range(p: Param) -> str:
    low, high = p.minimum, p.maximum
    if p.type is int:
        if low is not None and p.bounds[0] == "(":
            low += 1
        if high is not None and p.bounds[1] == ")":
            high -= 1
        if low is not None and high is not None:
            return f" from {low} to {high}"
        return f" of at least {low}" if low is not None else (f" of at most {high}" if high is not None else "")
    if low is not None and high is not None:
        return f" in {p.bounds[0]}{low}, {high}{p.bounds[1]}"
    if low is not None:
        return f" {'>' if p.bounds[0] == '(' else '>='} {low}"
    return f" {'<' if p.bounds[1] == ')' else '<='} {high}" if high is not None else ""


def describe(p: Param) -> str:
    """What ``p`` takes, as the error says it: ``one of a, b``, ``an integer of at least 1``, ``a number > 0``."""
    if p.choices is not None:
        one = "one of " + ", ".join(map(str, p.choices))
    else:
        one = {int: "an integer", float: "a number", str: "a string", Path: "a path", bool: "true or false",
               dict: "a table"}.get(p.type, "a value") + _range(p)
    if p.many:
        one = f"a {'non-empty ' if p.min_items else ''}list of values, each {one}"
    return one + (" (or None)" if p.accepts_none and p.default is not None else "")


def check(params, values: dict, *, label=lambda name: name) -> None:
    """Refuse the first value of ``values`` its Param does not take: a one-line FeatcacheError naming it (as
    ``label(name)``) and what it takes. Names not declared in ``params`` are left to the caller."""
    declared = {p.name: p for p in params}
    for name, value in values.items():
        p = declared.get(name)
        if p is not None and not _valid(p, value):
            raise FeatcacheError(f"{label(name)} must be {describe(p)}, got {value!r}")


def invalid_values(p: Param):
    """Values ``p`` refuses, for fuzz tests: the wrong type, below its minimum, above its maximum, not a choice."""
    def wrap(v):
        return [v] if p.many else v

    if p.type is object:
        return
    if p.many:
        yield "not-a-list"
    wrong = {int: ["x", 2.5, True], float: ["x", True, float("nan"), float("inf")], str: [7], Path: [7, ""],
             bool: ["yes", 1], dict: ["x", [1]]}[p.type]
    for v in wrong:
        if not (p.bools and isinstance(v, bool)):
            yield wrap(v)
    if p.type in (int, float):
        step = 1 if p.type is int else 0.5
        if p.minimum is not None:
            yield wrap(p.minimum if p.bounds[0] == "(" else p.minimum - step)
        if p.maximum is not None:
            yield wrap(p.maximum if p.bounds[1] == ")" else p.maximum + step)
    if p.choices is not None and p.type is str:
        yield wrap("not-a-choice")


def docs(params, indent: int = 8) -> str:
    """The ``Args:`` lines of a docstring for ``params``: each one's help and default."""
    pad = " " * indent
    return "\n".join(textwrap.fill(f"{p.name}: {p.help} (default {p.default!r})", 110, initial_indent=pad,
                                   subsequent_indent=pad + "    ") for p in params)
