"""The README and docs/ say only what the code does: generated tables, flags that exist, links that resolve.

The README's heads and backbones tables are generated from the registries;
after changing a registry, rewrite them with ``python tests/test_docs.py --update``.
"""

import argparse
import ast
import importlib
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script: import this checkout's featcache
    sys.path.insert(0, str(REPO))

import featcache  # noqa: E402
from featcache.backbones import list_specs  # noqa: E402
from featcache.heads import list_heads  # noqa: E402
from featcache.plan import DEFAULT_BACKBONE  # noqa: E402

README = REPO / "README.md"
#: the pages written for the README's detail; other docs/ pages are checked for flags and links only
OWN_PAGES = ["GUIDE.md", "BACKBONES.md", "PYTHON_API.md", "VIEWS_AND_FINETUNING.md", "BENCHMARK.md"]


def heads_table() -> str:
    rows = ["| head | kind | preprocess | streams | views | what |", "| --- | --- | --- | --- | --- | --- |"]
    rows += [f"| `{h.name}` | {h.kind} | {h.preprocess} | {'yes' if h.streams else 'no'} | {h.views} | "
             f"{h.description} |" for h in list_heads()]
    return "\n".join(rows)


def backbones_table() -> str:
    rows = ["| backbone | px | dims | ImageNet weights |", "| --- | --- | --- | --- |"]
    for s in list_specs():
        name = f"`{s.name}` (default)" if s.name == DEFAULT_BACKBONE else f"`{s.name}`"
        rows.append(f"| {name} | {s.default_size} | {s.feature_dim} | {'offline' if s.offline else 'download'} |")
    return "\n".join(rows)


TABLES = {"heads": heads_table, "backbones": backbones_table}


def _table_span(text: str, name: str) -> tuple[int, int]:
    """Where the generated table ``name`` sits in the README: between its two marker comments."""
    start = re.search(rf"<!-- {name}: generated [^\n]*-->\n", text)
    end = text.find(f"<!-- end {name} -->", start.end() if start else 0)
    assert start and end >= 0, f"README.md lost the markers of its {name} table"
    return start.end(), end


def update_readme() -> None:
    text = README.read_text()
    for name, make in TABLES.items():
        a, b = _table_span(text, name)
        text = text[:a] + make() + "\n" + text[b:]
    README.write_text(text)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from featcache.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _pages(own_only=False) -> list[Path]:
    if own_only:
        return [README] + [REPO / "docs" / name for name in OWN_PAGES]
    return [README] + sorted((REPO / "docs").glob("*.md"))


def _code(text: str) -> list[str]:
    """Every code block and inline code span of a markdown text."""
    blocks = re.findall(r"```\w*\n(.*?)```", text, flags=re.S)
    prose = re.sub(r"```\w*\n.*?```", "", text, flags=re.S)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, its --flags) for each ``featcache SUB ...`` and each ``SUB --flag`` in code."""
    subs = _subparsers()
    found = []
    for span in _code(text):
        for line in span.splitlines():
            words = line.split(" #", 1)[0].split()
            starts = [i + 1 for i, w in enumerate(words[:-1]) if w == "featcache"]
            if words and words[0] in subs and any(w.startswith("--") for w in words):
                starts.append(0)
            for i in [i for i in starts if not words[i].isupper()]:  # COMMAND: a placeholder
                rest = words[i + 1:]
                rest = rest[:rest.index("featcache")] if "featcache" in rest else rest
                found.append((words[i], [w.split("=")[0] for w in rest if re.fullmatch(r"--[a-z][\w-]*(=.*)?", w)]))
    return found


def test_readme_tables_are_the_registries():
    text = README.read_text()
    for name, make in TABLES.items():
        a, b = _table_span(text, name)
        assert text[a:b].strip() == make(), f"the README's {name} table drifted: python tests/test_docs.py --update"


def test_every_command_and_flag_in_the_docs_exists():
    subs = _subparsers()
    bad = []
    for page in _pages():
        for sub, flags in _commands(page.read_text()):
            if sub not in subs:
                bad.append(f"{page.name}: featcache {sub}")
                continue
            options = {o for a in subs[sub]._actions for o in a.option_strings}
            bad += [f"{page.name}: featcache {sub} {f}" for f in flags if f not in options]
    assert not bad, "commands or flags the parser does not have:\n" + "\n".join(bad)


def test_the_readme_commands_table_lists_every_subcommand():
    section = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`featcache ([a-z-]+)", section))
    assert listed == set(_subparsers())


def test_python_in_the_docs_compiles_and_names_what_exists():
    missing = []
    for page in _pages(own_only=True):
        text = page.read_text()
        for body in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            ast.parse(body, filename=str(page))
        for dotted in set(re.findall(r"\bfeatcache((?:\.[A-Za-z_]\w*)+)", "\n".join(_code(text)))):
            if dotted in (".json", ".NAME"):  # the export's zip entry; a placeholder
                continue
            if not _resolves("featcache" + dotted):
                missing.append(f"{page.name}: featcache{dotted}")
    assert not missing, "names the package does not have:\n" + "\n".join(missing)


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    obj = featcache
    for i, part in enumerate(parts[1:], start=2):
        if not hasattr(obj, part):
            try:
                importlib.import_module(".".join(parts[:i]))
            except ImportError:
                return False
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_links_in_the_docs_resolve():
    bad = []
    for page in _pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
                bad.append(f"{page.name}: {target} (no such heading)")
    assert not bad, "links to nothing:\n" + "\n".join(bad)


def _anchors(text: str) -> set[str]:
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_the_install_line_and_extras_table_are_pyprojects():
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    text = README.read_text()
    table = set(re.findall(r"^\| `([a-z0-9]+)` \|", text.split("| extra | adds |", 1)[1].split("\n\n", 1)[0], re.M))
    assert table == extras
    install = re.search(r"pip install -e '\.\[([a-z0-9,]+)\]'", text).group(1)
    assert set(install.split(",")) <= extras


def test_make_head_is_public():
    assert "make_head" in featcache.__all__ and featcache.make_head is featcache.heads.make_head


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_docs.py --update   (rewrites the README's generated tables)")
    update_readme()
    print(f"rewrote the heads and backbones tables of {README}")
