"""The layout docs/ARCHITECTURE.md promises, checked by reading the source: the stage rules, no cycle, one manifest reader."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "featcache"
LEAVES = {"featcache.errors", "featcache.params", "featcache.files", "featcache.homes", "featcache.versions",
          "featcache.splits", "featcache.console", "featcache.ray_cluster", "featcache.derived", "featcache.quiet"}
# Stage one, by module name prefix: sources to runner.
STAGE_ONE = ("featcache.decode", "featcache.datasets", "featcache.sources", "featcache.backbones", "featcache.augment",
             "featcache.plan", "featcache.precision", "featcache.runtimes", "featcache.extractor", "featcache.engines", "featcache.runner")
# The stage-two modules that also drive stage one (docs/ARCHITECTURE.md names each and why).
ABOVE_BOTH = {"featcache.predict", "featcache.model_export", "featcache.ir_export", "featcache.bench", "featcache.compare", "featcache.bench.pixels", "featcache.finetune",
              "featcache.leakage", "featcache.pretrain", "featcache.inspect.thumbs"}
TOP = {"featcache", "featcache.__main__", "featcache.cli", "featcache.cli.arguments", "featcache.cli.commands",
       "featcache.pipeline"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name.endswith("_test.py"):
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """featcache modules that ``name`` imports anywhere in its file (lazy imports inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = submodules or [base]  # `from . import batches` needs batches, not the package's __init__
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph():
    modules = _modules()
    return modules, {n: _imports(n, p, set(modules)) for n, p in modules.items()}


def test_no_import_cycle_between_featcache_modules():
    _, graph = _graph()
    # a package's __init__ re-exports its modules (featcache -> featcache.runner); those edges are the
    # package's public face, not a dependency of the modules below it
    edges = {n: {d for d in deps if not (n == "featcache" or d == "featcache")} for n, deps in graph.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert cycles == [], cycles


def test_the_store_and_the_leaf_utilities_import_nothing_above_them():
    _, graph = _graph()
    for leaf in LEAVES & set(graph):  # derived.py: the checked caches under $FEATCACHE_HOME
        assert graph[leaf] <= LEAVES, (leaf, graph[leaf])
    store = {n for n in graph if _in(n, ("featcache.store",))}
    assert len(store) > 1, store  # the store is a package of one role per module
    for name in store:
        assert all(d in LEAVES or d in store for d in graph[name]), (name, graph[name] - LEAVES - store)


def test_only_the_store_reads_the_manifest_or_calls_private_cache_methods():
    modules, _ = _graph()
    pattern = re.compile(r"\b(cache|self\.cache|target)\.(manifest\b|_open\(|_output\(|_columns\(|_shards\b)")
    offenders = [f"{n}:{i}" for n, p in modules.items() if not _in(n, ("featcache.store",))
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == [], offenders


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _stage(name: str) -> str:
    if name in TOP:
        return "top"
    if name in LEAVES:
        return "leaf"
    if _in(name, ("featcache.store",)):
        return "store"
    return "one" if _in(name, STAGE_ONE) else "two"


def test_stage_one_never_imports_stage_two_and_nothing_imports_the_top():
    _, graph = _graph()
    backwards = [(n, d) for n, deps in graph.items() for d in deps
                 if (_stage(n) == "one" and _stage(d) in ("two", "top"))
                 or (_stage(d) == "top" and n not in TOP)]
    assert backwards == [], backwards


def test_only_the_declared_modules_of_stage_two_reach_into_stage_one():
    _, graph = _graph()
    reaching = {n for n, deps in graph.items() if _stage(n) == "two" and any(_stage(d) == "one" for d in deps)}
    assert reaching <= ABOVE_BOTH, reaching - ABOVE_BOTH


def test_the_heads_import_only_heads_and_leaves():
    _, graph = _graph()
    for name, deps in graph.items():
        if _in(name, ("featcache.heads",)):
            assert all(_in(d, ("featcache.heads",)) or d in LEAVES for d in deps), (name, deps)
