"""Running an extraction: take the directory's lock, reuse what is valid, compute what is missing, commit.

The top of stage one. :func:`prepare` turns what a user asked for into a
:class:`~featcache.plan.Plan` and an engine (the CLI and :func:`extract` both
go through it); :func:`run` executes a plan. Whatever the engine, this
process holds the lock and owns the manifest (through the store's
:class:`~featcache.store.CacheSink`); engines only write shard files and hand
back their records.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np

from . import store
from .backbones import Backbone
from .engines import make_engine
from .errors import CacheError, FeatcacheError
from .files import pause_point
from .augment import parse_recipe
from .decode import parse_background
from .plan import DEFAULT_BACKBONE, ExtractOptions, Plan, make_plan
from .sources import LIMIT_SEED, PickedSource, open_source
from .versions import versions


@dataclass
class RunSummary:
    """What one ``extract`` call did (also printed by the CLI)."""

    out: Path
    key: str
    items: int
    rows: int
    skipped: int
    computed_shards: int
    reused_shards: int
    seconds: float
    images_per_s: float
    bytes_written: int
    noop: bool
    notes: list[str]
    #: a grown cache: ``{"new", "reused", "removed", "relabelled", "moved"}`` image counts; None otherwise
    grow: dict | None = None

    def grow_line(self) -> str | None:
        """"N new, M reused, K removed, L relabelled": what a grow did, in one line."""
        g = self.grow
        if g is None:
            return None
        moved = f" ({g['moved']:,} moved or renamed)" if g["moved"] else ""
        return (f"{g['new']:,} new, {g['reused']:,} reused, {g['removed']:,} removed, "
                f"{g['relabelled']:,} relabelled{moved}")


def run(plan: Plan, *, overwrite: bool = False, repair: bool = False, progress: bool = True,
        wait: float = 0.0, engine=None, frozen: bool = False, reuse=()) -> tuple[store.Cache, RunSummary]:
    """Execute ``plan``: reuse what is valid, compute what is missing with ``engine``, finalize.

    Args:
        plan: from :func:`~featcache.plan.make_plan` (or :func:`prepare`).
        overwrite: replace a cache made with other settings (only files
            featcache can prove it wrote are removed).
        repair: check every shard's sha256 and recompute the damaged ones.
        progress: show a progress bar. wait: seconds to wait for another writer's lock.
        engine: from :func:`~featcache.engines.make_engine`; local when None.
        frozen: refuse a source whose images changed (the cache is a snapshot) instead of growing it.
        reuse: other caches (paths) made with the same settings whose features images with the same
            content take, instead of the CNN.

    Returns:
        ``(cache, summary)``: the opened :class:`~featcache.store.Cache` and a :class:`RunSummary`.
    """
    if isinstance(wait, bool) or not isinstance(wait, Real) or not wait >= 0:  # NaN is not >= 0
        raise FeatcacheError(f"wait must be a number of seconds >= 0, got {wait!r}")
    t_start = time.perf_counter()
    out = plan.out
    created = _make_out(out)
    try:
        lock = store.DirectoryLock(out, wait=wait).acquire()
    except store.ReadOnlyError as exc:
        return _run_read_only(plan, t_start, exc)
    try:
        store.remove_temporaries(out)
        plan = plan if overwrite else _keep_calibration(plan, _manifest_or_none(out))  # int8 keeps its graph
        grown = None if overwrite or frozen else _grow(plan, reuse, progress, engine, t_start)
        if grown is not None:
            return grown
        plan, old, recipe, notes = _claim(plan, overwrite)
        shape = {"key": plan.key, "n_shards": plan.n_shards}
        done, problems = store.existing_shards(out, old, repair=repair, shard_size=plan.options.shard_size,
                                               n_items=len(plan.source), **shape)
        done = {i: r for i, r in done.items() if i < plan.n_shards}  # views an earlier run began and this one drops
        if not problems and len(done) == plan.n_shards and store.up_to_date(out, old, check_shards=False, **shape):
            notes += store.refresh_class_names(out, old, plan.source.class_names)
            return _noop_summary(plan, t_start, notes)
        notes += [f"repaired: {p}" for p in problems]
        sink = _begin(plan, done, old, recipe)
        todo = [i for i in range(plan.n_shards) if i not in done]
        n_todo = sum(len(plan.shard_items(i)[1]) for i in todo)
        stats, compute_s = _compute(plan, todo, n_todo, sink, engine, progress)
        notes += stats.get("notes", [])
        timings = _timings(t_start, compute_s, n_todo, stats)
        store.remove_temporaries(out)  # a worker killed mid-write (Ray) leaves one; no writer is left now
        sink.finish(timings=timings, versions=versions())
    finally:
        unclaimed = not store.is_our_manifest(out / store.MANIFEST)
        lock.release(remove=unclaimed)
        if created and unclaimed:
            _remove_unclaimed(out)
    cache = store.open_cache(out)
    summary = RunSummary(out, plan.key, len(plan.source), len(cache), len(cache.skipped), len(todo), len(done),
                         time.perf_counter() - t_start, timings["images_per_s"] or 0.0,
                         int(stats.get("bytes", 0)), False, notes)
    return cache, summary


def _grow(plan: Plan, reuse, progress: bool, engine, t_start: float):
    """Grow the cache at ``plan.out`` to ``plan``'s images, or None when this run is not a grow.

    A grow is a complete cache whose images changed (or a new one given ``reuse``): images whose content a
    donor holds keep those features, and their views when the id is the same too; the rest go through the
    CNN into a staging cache, and a new generation of shards in the source's order (views included) is
    committed with one manifest write (store/grow.py).
    """
    out = plan.out
    old = store.read_manifest(out)
    reuse = [Path(r) for r in ([reuse] if isinstance(reuse, (str, Path)) else list(reuse or ()))]
    if not (store.growable(old, plan.params, plan.fingerprint) or (old is None and reuse)):
        return None
    recipe = parse_recipe(plan.options.augment).text
    plan, notes = _keep_views(plan, old, recipe)
    own = [store.open_cache(out)] if old else []
    if own and not own[0].has_digests:
        raise CacheError(f"{out} was made before featcache recorded each image's digest, so it cannot grow: run "
                         "this command once with --overwrite to convert it (every image is extracted again)")
    donors = own + [_donor(path, plan) for path in reuse]
    if old is None:
        store.claim(out, None, key=plan.key, params=plan.params, fingerprint=plan.fingerprint, overwrite=False)
    else:
        store.remove_stale(out, old, keep_staging=store.staging_name(plan.key))
    src = plan.source
    with ThreadPoolExecutor(8, thread_name_prefix="featcache-digest") as pool:
        digests = src.digests(src.items, pool)
    if plan.calibration_ids and own:
        _check_calibration(plan, own[0], dict(zip((it.id for it in src.items), digests)))
    m = store.match(src.items, digests, donors, list(src.class_names), own=bool(own))
    by_id = {it.id: d for it, d in zip(src.items, digests)}
    viewed = [it for it, keep in zip(src.items, plan.view_mask) if keep] if plan.views else []
    views = store.view_rows(donors, viewed, by_id, plan.views, recipe)
    reused_views = len(views)
    sources, reasons, timings = list(donors), {}, _timings(t_start, 0.0, 0, {})
    new_ids = {it.id for it in m.unmatched}
    need_views = {it.id for it in viewed if any((it.id, v) not in views for v in range(1, plan.views + 1))}
    if new_ids or need_views:
        staged = _stage(plan, new_ids, need_views, progress, engine)
        sources.append(staged)
        _take_staged(staged, len(sources) - 1, new_ids, m.rows, by_id, views)
        reasons = {x["id"]: x["reason"] for x in staged.skipped}
        timings = {**staged.timings, "seconds": round(time.perf_counter() - t_start, 3)}
    _write_generation(plan, old, recipe, sources, m.rows, by_id, reasons, views, timings)
    cache = store.open_cache(out)
    if plan.views:
        view_rows = sum(len(cache.view_ids(v)) for v in range(1, cache.views + 1))
        notes.append(f"augmented views: {view_rows - reused_views:,} computed, {reused_views:,} reused")
    counts = {"new": len(m.unmatched), "reused": len(src) - len(m.unmatched), "removed": m.removed,
              "relabelled": m.relabelled, "moved": m.moved}
    summary = RunSummary(out, plan.key, len(src), len(cache), len(cache.skipped), plan.n_shards, 0,
                         time.perf_counter() - t_start, timings.get("images_per_s") or 0.0,
                         cache.disk_bytes(), False, notes, counts)
    return cache, summary


def _manifest_or_none(out: Path) -> dict | None:
    """The manifest at ``out``, or None where there is none or it cannot be read (the claim then says why)."""
    try:
        return store.read_manifest(out)
    except CacheError:
        return None


def _keep_calibration(plan: Plan, old: dict | None) -> Plan:
    """An int8 ``plan`` over the cache ``old`` keeps the graph ``old`` was made with, grown or not: the images
    it was calibrated on, not a new sample of the source (whose features would not match the old ones).
    ``--overwrite`` calibrates afresh."""
    if not plan.calibration_ids or not store.recalibrated(old, plan.params, plan.fingerprint):
        return plan
    ids = store.open_cache(plan.out).calibration_ids
    if ids is None:
        raise CacheError(f"{plan.out} is an int8 cache made before featcache recorded the images its graph was "
                         "calibrated on, so it cannot grow: run this command once with --overwrite (every image "
                         "is extracted again)")
    return plan.with_calibration(ids)


def _check_calibration(plan: Plan, cache: store.Cache, digests: dict) -> None:
    """Refuse to grow an int8 cache whose calibration images are gone or changed: its graph could not be rebuilt."""
    held = dict(zip(cache.ids(), cache.digests()))
    lost = [i for i in plan.calibration_ids if i in held and digests.get(i) != held[i]]
    if lost:
        raise CacheError(f"{plan.out}: its int8 graph was calibrated on {len(plan.calibration_ids):,} images, "
                         f"{len(lost):,} of which are gone or changed (such as {lost[0]!r}), so the cache cannot "
                         "grow with the same graph: pass --overwrite to calibrate on today's images and extract "
                         "every image again")


def _alpha(plan: Plan, sources: list, rows: dict) -> dict[str, bool]:
    """Whether each row's image had alpha: what its shard's count says, else the image decoded again."""
    states = [store.alpha_rows(cache) for cache in sources]
    alpha = {item_id: int(states[s][row]) for item_id, (s, row) in rows.items()}
    unknown = [it for it in plan.source.items if alpha.get(it.id, 0) < 0]
    if unknown:
        with ThreadPoolExecutor(8, thread_name_prefix="featcache-alpha") as pool:
            found = plan.source.had_alpha(unknown, pool, background=parse_background(plan.options.background))
        alpha.update({it.id: int(a) for it, a in zip(unknown, found)})
    return {item_id: bool(a) for item_id, a in alpha.items()}


def _take_staged(staged: store.Cache, s: int, new_ids: set, rows: dict, by_id: dict, views: dict) -> None:
    """Point the new images' rows, and every view no donor had, at the staging cache (source ``s``)."""
    for row, (item_id, digest) in enumerate(zip(staged.ids(), staged.digests())):
        if item_id in new_ids:  # an image staged for its views alone keeps its donor's plain row
            rows[item_id] = (s, row)
            by_id[item_id] = digest  # the bytes the CNN saw, should the file have changed since it was hashed
    for v in range(1, staged.views + 1):
        for pos, item_id in enumerate(staged.view_ids(v)):
            views.setdefault((item_id, v), (s, pos))


def _write_generation(plan: Plan, old: dict | None, recipe: str, sources: list, rows: dict, by_id: dict,
                      reasons: dict, views: dict, timings: dict) -> None:
    """Write and commit generation *g + 1* (or 0 for a new cache), then drop what the previous one left."""
    sink = _begin(plan, {}, None, recipe)
    sink.generation = int(old.get("generation", 0)) + 1 if old else 0
    sink.manifest.update({"generation": sink.generation} if sink.generation else {})
    sink.manifest["outputs"] = dict(sources[0].manifest["outputs"])
    shards = [(i, *plan.shard_items(i), plan.view_of(i)) for i in range(plan.n_shards)]
    alpha = _alpha(plan, sources, rows)
    store.write_generation(sink, shards, sources, rows, by_id, plan.source.has_splits, reasons, views, alpha)
    sink.finish(timings=timings, versions=versions())
    pause_point("grow:committed")
    store.remove_stale(plan.out, sink.manifest)


def _donor(path: Path, plan: Plan) -> store.Cache:
    """A ``--reuse`` cache, checked to hold features this plan can take."""
    cache = store.open_cache(path)
    problem = store.donor_problem(cache, plan.params)
    if problem:
        raise CacheError(f"--reuse {path}: {problem}")
    return cache


def _stage(plan: Plan, new_ids: set, need_views: set, progress: bool, engine) -> store.Cache:
    """The features of the images no donor holds (``new_ids``), and the views of ``need_views``, extracted
    into the grow's staging cache.

    The staging cache is an ordinary cache inside ``--out``, named after the new key, so a grow killed
    while the CNN runs resumes there; one left by another change is replaced. An image staged for its views
    alone (a renamed one: a view is seeded by its id) goes through the CNN for its plain row too.
    """
    staging = plan.out / store.staging_name(plan.key)
    items = [it for it in plan.source.items if it.id in new_ids or it.id in need_views]
    options = dataclasses.replace(plan.options, shard_size=None, views=plan.views if need_views else 0)
    calibration = (plan.calibration_ids, plan.calibration_source or plan.source) if plan.calibration_ids else None
    sub = make_plan(PickedSource(plan.source, items), plan.backbone, staging, options, calibration=calibration)
    sub = dataclasses.replace(sub, view_items=np.array([it.id in need_views for it in items], bool))
    try:
        held = store.read_manifest(staging) if staging.is_dir() else None
    except CacheError:
        held = None
    if staging.is_dir() and (held is None or held["key"] != sub.key):
        store.clear_cache_files(staging)
    cache, _ = run(sub, progress=progress, engine=engine, frozen=True)
    return cache


def _make_out(out: Path) -> bool:
    """Create the ``--out`` directory; returns whether this run created it."""
    if out.exists() and not out.is_dir():
        raise CacheError(f"--out {out} exists and is not a directory")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    return created


def _claim(plan: Plan, overwrite: bool) -> tuple[Plan, dict | None, str, list[str]]:
    """Claim ``plan.out`` under the lock: the plan (with the views kept), the old manifest, the recipe, notes."""
    out = plan.out
    try:
        old = store.read_manifest(out)
    except CacheError:
        if not overwrite:
            raise
        old = None  # clear_cache_files decides whether the file is ours to replace
    old, kept = store.claim(out, old, key=plan.key, params=plan.params, fingerprint=plan.fingerprint,
                            overwrite=overwrite)
    recipe = parse_recipe(plan.options.augment).text
    plan, notes = _keep_views(plan, old, recipe)
    return plan, old, recipe, [f"not featcache's, left alone: {k}" for k in kept] + notes


def _keep_views(plan: Plan, old: dict | None, recipe: str) -> tuple[Plan, list[str]]:
    """``plan`` with at least the views the complete cache ``old`` holds, made with the same ``recipe``."""
    stored_views = int((old or {}).get("views", 0)) if (old or {}).get("complete") else 0
    if stored_views and old.get("augment") != recipe:  # the default recipe is not in the key: never mix two
        raise CacheError(f"{plan.out} holds views made with the recipe {old.get('augment')!r}, not {recipe!r}; "
                         "pass that --augment, or --overwrite to start again")
    if stored_views > plan.views:  # finished views are never thrown away: asking for fewer keeps them all
        return plan.with_views(stored_views), [f"the cache keeps the {stored_views} views it holds (asked for "
                                               f"{plan.views})"]
    return plan, []


def _begin(plan: Plan, done: dict, old: dict | None, recipe: str):
    """The plan's sink, begun with the shards already done."""
    sink = plan.sink()
    src = plan.source
    sink.begin(params=plan.params, fingerprint=plan.fingerprint, backbone_ref=plan.backbone_ref,
               dataset={"source": src.describe(), "n_items": len(src), "class_names": list(src.class_names),
                        "has_splits": src.has_splits, "reopen": src.address},
               n_shards=plan.n_shards, shards=list(done.values()), old=old,
               save=bool(done) or old is not None, views=plan.views, augment=recipe,
               calibration=plan.calibration_ids)  # a run that has written no shard claims nothing
    return sink


def _compute(plan: Plan, todo: list[int], n_todo: int, sink, engine, progress: bool) -> tuple[dict, float]:
    """Compute the ``todo`` shards with ``engine`` into ``sink``; returns the engine's stats and the seconds."""
    from .console import ProgressBar, console, human_bytes

    stats: dict = {}
    t_compute = time.perf_counter()
    if todo:
        engine = engine or make_engine("local")
        src = plan.source

        def projected(outputs):  # before the first image runs (local), after the first shard (Ray)
            n_views = sum(len(plan.shard_items(i)[1]) for i in range(plan.n_base, plan.n_shards))
            per_image = store.bytes_per_image(outputs)
            rows = len(src) + n_views
            also = f" and {n_views:,} augmented views" if n_views else ""
            console.print(f"  {per_image:,} bytes per image: about {human_bytes(per_image * rows)} of "
                          f"features for {len(src):,} images{also}", highlight=False)

        if progress:
            sink.on_outputs = projected
        with ProgressBar(n_todo, f"extract {plan.backbone.name}", enabled=progress) as bar:
            stats = engine.compute(plan, todo, sink, on_items=bar.advance)
    return stats, time.perf_counter() - t_compute


def _timings(t_start: float, compute_s: float, n_todo: int, stats: dict) -> dict:
    """The manifest's timings of this run."""
    return {
        "seconds": round(time.perf_counter() - t_start, 3),
        "compute_seconds": round(compute_s, 3),
        "images_computed": n_todo,
        "images_per_s": round(n_todo / compute_s, 2) if n_todo and compute_s > 0 else None,
        "build_seconds": round(stats.get("build_s", 0.0), 3),
        "first_batch_seconds": round(stats.get("first_batch_s", 0.0), 3),
        "first_batch_items": stats.get("first_batch_items", 0),
        "model_seconds": round(stats.get("model_s", 0.0), 3),
        "input_wait_seconds": round(stats.get("wait_s", 0.0), 3),
        "engine": stats.get("engine", "local"),
        "runtime": stats.get("runtime"),
        **{k: stats[k] for k in ("workers", "worker_restarts") if k in stats},
    }


def _noop_summary(plan: Plan, t_start: float, notes: list[str]) -> tuple[store.Cache, RunSummary]:
    cache = store.open_cache(plan.out)
    return cache, RunSummary(plan.out, plan.key, len(plan.source), len(cache), len(cache.skipped), 0, plan.n_shards,
                             time.perf_counter() - t_start, 0.0, 0, True, notes)


def _run_read_only(plan: Plan, t_start: float, exc: store.ReadOnlyError) -> tuple[store.Cache, RunSummary]:
    """A cache on read-only media: an up-to-date one is a no-op; anything else says why it cannot go on."""
    old = store.read_manifest(plan.out)
    if old is not None and int(old.get("views", 0)) > plan.views:
        plan = plan.with_views(int(old["views"]))
    if store.up_to_date(plan.out, old, key=plan.key, n_shards=plan.n_shards):
        if old["dataset"].get("class_names") != list(plan.source.class_names):
            raise CacheError(f"{exc}; the class names changed and cannot be recorded there")
        return _noop_summary(plan, t_start, [])
    raise CacheError(f"{exc} and {_read_only_state(old, plan)}; extract to a writable --out") from None


def _read_only_state(old: dict | None, plan: Plan) -> str:
    """What a read-only directory holds that this run would have to write to."""
    if old is None:
        return "holds no cache"
    if old["key"] != plan.key:
        return "holds a cache made with other settings"
    if not old.get("complete"):
        return "holds an unfinished cache"
    if int(old.get("views", 0)) < plan.views:
        return (f"holds a complete cache with {int(old.get('views', 0))} views, and adding views to it means "
                "writing there, which cannot be done")
    return "holds a complete cache that needs repair (run `featcache verify`), which cannot be written there"


def _remove_unclaimed(out: Path) -> None:
    """Undo what a run that created ``out`` and never wrote a shard left: the empty folders."""
    for d in (out / store.SHARDS, out):
        try:
            d.rmdir()  # only if empty
        except OSError:
            pass


def prepare(source, backbone: str | Backbone = DEFAULT_BACKBONE, out=None, *, weights="imagenet",
            layer: str | None = None, classes=None, limit: int | None = None, first: int | None = None,
            limit_seed: int = LIMIT_SEED, labels=None, class_names=None, splits=None,
            allow_outside: bool = False, data_dir=None, engine: str = "local", ray_address: str | None = None,
            workers: int | None = None, gpus_per_worker: float | None = None,
            options: ExtractOptions | None = None) -> tuple[Plan, object]:
    """The plan and the engine for an extraction, checked before anything runs (see :func:`extract`)."""
    if out is None:
        raise FeatcacheError("extract needs an output directory (out=...)")
    runner = make_engine(engine, address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
    src = open_source(source, labels=labels, class_names=class_names, splits=splits, allow_outside=allow_outside,
                      data_dir=data_dir)
    if classes is not None or limit is not None or first is not None:
        src = src.subset(classes=classes, limit=limit, first=first, limit_seed=limit_seed)
    plan = make_plan(src, backbone, out, options or ExtractOptions(), weights=weights, layer=layer)
    return plan, runner


def extract(source, backbone: str | Backbone = DEFAULT_BACKBONE, out=None, *, weights="imagenet",
            layer: str | None = None, overwrite: bool = False, repair: bool = False, progress: bool = False,
            wait: float = 0.0, classes=None, limit: int | None = None, first: int | None = None,
            limit_seed: int = LIMIT_SEED, labels=None, class_names=None, splits=None, allow_outside: bool = False,
            data_dir=None, return_summary: bool = False, engine: str = "local", ray_address: str | None = None,
            workers: int | None = None, gpus_per_worker: float | None = None, frozen: bool = False, reuse=(),
            targets=None, **options) -> store.Cache:
    """Extract features of ``source`` with a frozen ``backbone`` into the cache at ``out``.

    Re-running resumes after any crash; an identical finished run is a no-op; a
    run on a source whose images changed grows the cache: only images whose
    content no cache holds go through the CNN ("N new, M reused, K removed, L
    relabelled"); a different setting in the same directory is an error naming it.

    Args:
        source: a folder of class sub-folders, a CSV manifest (``path,label[,split]``),
            a dataset name such as ``"fashion_mnist:test"``, a uint8 array
            (with ``labels=``) or a :class:`~featcache.sources.Source`.
        backbone: a registry name (``featcache backbones``) or a ``.keras`` file.
        out: the cache directory (new, empty, or a featcache cache).
        weights: ``"imagenet"``, ``"none"`` (seeded random, for tests) or a weights file.
        layer: cut the backbone at this layer.
        overwrite: replace a cache made with other settings. repair: check every shard's sha256 and recompute
            damaged ones. progress: show a progress bar. wait: seconds to wait for another writer's lock.
        frozen: refuse a changed source (today's snapshot behaviour) instead of growing the cache.
        reuse: paths of other caches with the same settings; images with the same content take their features.
        classes: keep only these labels. limit: keep a sample of ``limit`` items, stratified by label (and
            split), drawn with ``limit_seed``, in source order; warns when a class loses every image.
        first: keep the first ``first`` items in source order instead (a class-folder source lists them by class).
        limit_seed: the seed of ``limit``'s sample.
        labels: labels of an array ``source``: class indices, or class names (strings; sorted
            into indices unless ``class_names`` is given).
        class_names: the names of an array source's classes (label i is ``class_names[i]``).
        splits: an array source's split per image (``"train"``, ``"val"``, ``"test"``), used by
            ``train`` and ``Cache.split``.
        allow_outside: let a CSV manifest name files outside its folder. data_dir: where to look first for
            named datasets. return_summary: return ``(cache, summary)`` instead of the cache alone.
        targets: attached when the features are in: ``{name: one value per image}`` of an array, or a table with
            ids, as ``featcache targets`` takes (docs/TARGETS.md).
        engine: ``"local"`` or ``"ray"`` (with ``ray_address``, ``workers``, ``gpus_per_worker``); the same cache.
        **options: :class:`~featcache.plan.ExtractOptions` fields (``image_size``, ``pooling``, ``outputs``,
            ``dtype``, ``compute_dtype``, ``batch_size``, ``shard_size``, ``compression``, ``jit``, ...).

    Returns:
        The opened :class:`~featcache.store.Cache` (rows in source order), or ``(cache, RunSummary)``.

    Examples:
        >>> cache = featcache.extract("images/", image_size=96, out="caches/mine")  # doctest: +SKIP
        >>> X, y = cache.features(), cache.labels()                                 # doctest: +SKIP
    """
    attach = _attacher(targets, source, labels=labels, class_names=class_names, splits=splits)  # refused first
    plan, runner = prepare(source, backbone, out, weights=weights, layer=layer, classes=classes, limit=limit,
                           first=first, limit_seed=limit_seed, labels=labels, class_names=class_names,
                           splits=splits, allow_outside=allow_outside, data_dir=data_dir, engine=engine,
                           ray_address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker,
                           options=_extract_options(options))
    cache, summary = run(plan, overwrite=overwrite, repair=repair, progress=progress, wait=wait, engine=runner,
                         frozen=frozen, reuse=reuse)
    attach(cache)
    return (cache, summary) if return_summary else cache


def _target_columns(targets, source) -> dict | None:
    """extract's ``targets`` given per image of an array, as ``{name: columns}`` (None: a table with ids)."""
    from collections.abc import Mapping

    if targets is None or not isinstance(targets, Mapping) or "id" in targets:
        return None
    if not isinstance(source, np.ndarray):
        raise FeatcacheError("targets={name: values} lines values up with an array's images; for a folder, CSV or "
                             "dataset give a table with an id column (docs/TARGETS.md)")
    out = {}
    for name, values in targets.items():
        arr = values if isinstance(values, np.ndarray) else None
        if len(values) != len(source):
            raise FeatcacheError(f"targets[{name!r}] has {len(values)} values for the array's {len(source)} images")
        if arr is not None and arr.ndim == 2 and arr.shape[1] > 1:  # several outputs, or 0/1 indicators: one target
            out[name] = {f"{name}_{j}": arr[:, j].tolist() for j in range(arr.shape[1])}
        else:
            out[name] = {name: arr.reshape(len(arr), -1)[:, 0].tolist() if arr is not None else list(values)}
    return out


def _attacher(targets, source, **arrays):
    """What attaches extract's ``targets`` to the finished cache, every value checked now (before the CNN)."""
    by_image = _target_columns(targets, source)
    return lambda cache: None if targets is None else _attach(cache, targets, by_image, source, **arrays)


def _attach(cache, targets, by_image: dict | None, source, **arrays) -> None:
    """Attach extract's ``targets`` to the finished cache (no CNN runs): per image of the array, or a table."""
    if by_image is None:
        store.attach_targets(cache, targets)
        return
    ids = [it.id for it in open_source(source, **arrays).items]  # the array's ids, in the array's order
    have = set(cache.ids())
    keep = [i for i, item in enumerate(ids) if item in have]  # limit, first or classes left some out
    for name, columns in by_image.items():
        table = {"id": [ids[i] for i in keep], **{c: [v[i] for i in keep] for c, v in columns.items()}}
        store.attach_targets(cache, table, name=name if len(columns) > 1 else None)


def _extract_options(options: dict) -> ExtractOptions:
    """``extract``'s keyword options as :class:`~featcache.plan.ExtractOptions`, refusing unknown names."""
    unknown = set(options) - set(ExtractOptions.__dataclass_fields__)
    if unknown:
        raise FeatcacheError(f"unknown extract option(s): {', '.join(sorted(unknown))}")
    return ExtractOptions(**options)
