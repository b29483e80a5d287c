"""A pipeline's targets (docs/TARGETS.md): ``[[targets]]`` tables attached to a cache, ``[[heads]]`` trained
for a target, and a ``[bench]`` of several targets that re-runs only the targets whose values changed.

Each target is known by its checksum in the store (:func:`featcache.train_targets.target_sha256`): a
``[[heads]]`` model is current while its card names the same head, params, cache and target sha256;
the bench stamp records every target's sha256, so a re-run after one table changed benches that
target alone and keeps the others' rows and figures.
"""

from __future__ import annotations

from pathlib import Path

from .console import console
from .errors import FeatcacheError

_STR = (str,)
#: the keys of each [[targets]] and [[heads]] table (pipeline.SCHEMA takes them from here)
SCHEMA = {"targets": {"file": _STR, "cache": _STR, "name": _STR, "kind": _STR, "id_column": _STR},
          "heads": {"head": _STR, "target": _STR, "cache": _STR, "params": ("table",)}}
REQUIRED = {"targets": ["file"], "heads": ["head", "target"]}


def _say(msg: str) -> None:
    console.print(msg, highlight=False)


def resolve(path: Path, cfg: dict, names: list[str], base: Path) -> None:
    """Each [[targets]] file found and each [[heads]] cache, target and head checked, before any work."""
    from .heads import HEADS, validate_head
    from .store import KINDS

    for section in ("targets", "heads"):
        for i, entry in enumerate(cfg.get(section, [])):
            entry.setdefault("cache", names[0])
            if entry["cache"] not in names:
                raise FeatcacheError(f"{path}: {section}[{i}].cache = {entry['cache']!r} names no [[extract]] "
                                     f"(have {names})")
    for i, t in enumerate(cfg.get("targets", [])):
        f = Path(t["file"]) if Path(t["file"]).is_absolute() else base / t["file"]
        if not f.is_file():
            raise FeatcacheError(f"{path}: targets[{i}].file = {t['file']!r}: no such file ({f})")
        t["file"] = str(f)
        if "kind" in t and t["kind"] not in KINDS:
            raise FeatcacheError(f"{path}: targets[{i}].kind = {t['kind']!r}: one of {', '.join(KINDS)}")
    for i, h in enumerate(cfg.get("heads", [])):
        if h["head"] not in HEADS:
            raise FeatcacheError(f"{path}: heads[{i}].head: unknown head {h['head']!r}; known: {', '.join(HEADS)}")
        try:
            validate_head(h["head"], None, h.get("params", {}))
        except FeatcacheError as exc:
            raise FeatcacheError(f"{path}: heads[{i}].params: {exc}") from None


def model_dirs(cfg: dict) -> list[Path]:
    """Where each [[heads]] entry's model goes: out/models/CACHE-TARGET-HEAD."""
    out: Path = cfg["pipeline"]["out"]
    return [out / "models" / f"{h['cache']}-{h['target']}-{h['head']}" for h in cfg.get("heads", [])]


def targets_stage(cfg: dict, result: dict) -> None:
    """Attach each [[targets]] table (no CNN runs); say which targets it changed."""
    from .store import attach_targets, open_cache
    from .train_targets import target_sha256

    for t in cfg.get("targets", []):
        cache = open_cache(result["caches"][t["cache"]])
        before = {n: target_sha256(cache, n) for n in cache.targets()}
        kw = {k: t[k] for k in ("name", "kind", "id_column") if k in t}
        attached = attach_targets(cache, t["file"], **kw)
        changed = [n for n in attached if before.get(n) != target_sha256(cache, n)]
        state = f"changed: {', '.join(changed)}" if changed else "unchanged"
        _say(f"[bold]targets[/] {Path(t['file']).name} -> {t['cache']}: {', '.join(attached)} ({state})")


def heads_stage(cfg: dict, result: dict) -> None:
    """Each [[heads]] entry trained for its target, skipped while its card names the same inputs."""
    from .model_dir import current_card
    from .store import open_cache
    from .train import train
    from .train_targets import target_sha256

    for h, mdir in zip(cfg.get("heads", []), model_dirs(cfg)):
        cache = open_cache(result["caches"][h["cache"]])
        params, sha = h.get("params", {}), target_sha256(cache, h["target"])
        if cache.target(h["target"]).kind == "classification":  # its card's rows are the target's labels
            cache = cache.with_target(h["target"])
        card = current_card(mdir, h["head"], cache.key, params, cache.views, rows_key=cache.rows_key)
        name = f"{h['target']}-{h['head']}"
        if card is not None and (card.get("target") or {"sha256": cache.rows_key}).get("sha256") == sha:
            _say(f"[bold]train[/] {name}: up to date ({mdir})")
        else:
            card = train(cache, h["head"], params=params, out=mdir, target=h["target"]).card
            _say(f"[bold]train[/] {name}: trained (target {h['target']} is new or changed), test "
                 f"{_headline(card)} -> {mdir}")
        result["models"][name] = str(mdir)


def _headline(card: dict) -> str:
    test = card["metrics"].get("test", {})
    key = next((k for k in ("r2", "map", "accuracy") if k in test), None)
    return f"{key} {test[key]:.3f}" if key else "-"


def bench_inputs(bench_cfg: dict, cache) -> dict:
    """What a [bench] with ``target`` depends on beside its settings: each target's sha256."""
    from .bench.targets import parse_targets
    from .train_targets import target_sha256

    return {n: target_sha256(cache, n) for n in parse_targets(bench_cfg["target"])}


def changed_targets(recorded: dict | None, inputs: dict, files: dict | None) -> list[str] | None:
    """The targets a re-run must bench again when only target values changed since ``recorded``; None:
    everything (no stamp, other inputs changed, or the report is not as bench left it)."""
    if recorded is None or recorded["files"] != files:
        return None
    old, new = dict(recorded["inputs"]), dict(inputs)
    old_t, new_t = old.pop("targets", None), new.pop("targets", None)
    if old != new or not isinstance(old_t, dict) or not isinstance(new_t, dict):
        return None
    return [n for n in new_t if old_t.get(n) != new_t[n]]


def rebench(cfg: dict, cache, report: Path, changed: list[str]) -> list[dict]:
    """Bench only the ``changed`` targets into ``report``, keeping the others' rows and figures."""
    from .bench import bench
    from .bench.targets import bench_targets

    b = cfg["bench"]
    kept = [n for n in bench_inputs(b, cache) if n not in changed]
    _say(f"[bold]bench[/] targets changed: {', '.join(changed)}; re-benching only "
         f"{'those' if len(changed) > 1 else 'that one'} (kept: {', '.join(kept) or 'none'})")
    return bench_targets(cache, b["target"], heads=b.get("heads"), out=report, only=changed,
                         baseline_heads=b.get("baseline_heads", ("logreg",)), pixel_size=b.get("pixel_size", 16),
                         classify=bench)
