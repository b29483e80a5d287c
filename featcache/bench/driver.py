"""The driver: check a benchmark's settings, build its tasks, run the ones not yet done, save the best, report.

Each (cache, head) runs in its own fresh Python process (:mod:`.process`), at
most ``n_jobs`` at a time, with a per-head time budget; rows are appended to
``results.jsonl`` as they finish (:mod:`.results`), so a re-run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import numpy as np

from .. import report
from ..console import console
from ..errors import FeatcacheError, FeatcacheWarning
from ..heads import HEADS, HeadSpec, get_head_spec, validate_head
from ..heads.views import resolve_mode
from ..leakage import near_duplicates
from ..model_dir import current_card
from ..store import Cache, open_cache
from ..train import custom_fields, save_fitted, split_masks, train_classes
from ..params import defaults, docs
from .options import BENCH, check_options
from .process import _cores_per_head, _joblib_backend, run_task
from .results import (BEST_MODEL, CURVE, FITTED, RESULTS, _append_row, _load_rows, _remove_fitted, _row,
                      check_report_target, retry_reason)
from .select import best_row
from .tasks import Task, user_heads

_D = defaults(BENCH)


def _run_tasks(todo, timeout, n_jobs, backend):
    """The package's ``_run_tasks``, looked up at call time: ``featcache.bench._run_tasks`` is the seam a test
    replaces to run nothing."""
    return sys.modules[__package__]._run_tasks(todo, timeout, n_jobs, backend)


def bench(caches, heads=None, *, params: dict | None = None, cv: int | None = _D["cv"],
          timeout: float | None = _D["timeout"], n_jobs: int = _D["n_jobs"], out=_D["out"],
          baseline_heads=_D["baseline_heads"], pixel_size: int = _D["pixel_size"], backend: str = _D["backend"],
          progress: bool = _D["progress"], save_best: bool = _D["save_best"], ray_address: str | None = None,
          learning_curve=_D["learning_curve"], leakage: bool = _D["leakage"], views: str = _D["views"],
          target=_D["target"], repeats: int = _D["repeats"], seed: int = _D["seed"], shots=_D["shots"],
          shot_draws: int = _D["shot_draws"], mlflow=_D["mlflow"]) -> list[dict]:
    """Run ``heads`` on each cache with an honest protocol; write the report into ``out``; return the rows.

    Hyper-parameters are chosen on the validation split (or ``cv`` folds
    inside train), the chosen setting is refit on train+val, the test split
    is touched once, and the best head is picked by validation accuracy
    alone and saved to ``out/best_model``. Each head runs in its own process
    with a time budget; rows are kept as they finish, so a re-run resumes. A
    user's estimator in ``heads`` (``["logreg", SVC()]``) is cloned into its
    head's process, fitted once on train (no grid) and shown as
    ``custom:ClassName`` (``custom:SVC#2`` for a second); its parameters are
    part of the row's settings, and ``params`` for it are keyed by that name.
    Every setting is checked before any work.

    Args:
        caches: one cache (a :class:`~featcache.store.Cache`, opened with ``target=`` to bench that label) or several.
{settings}

    Returns:
        The rows, one dict per (cache, head): test accuracy, macro-F1, validation accuracy, parameters, status...

    Examples:
        >>> rows = featcache.bench("caches/fm", ["logreg", "knn"], out="report")  # doctest: +SKIP
        >>> from sklearn.svm import SVC
        >>> rows = featcache.bench("caches/fm", ["logreg", SVC()], out="report")  # doctest: +SKIP
    """
    given = locals()
    check_options(**{p.name: given[p.name] for p in BENCH if p.name != "heads"})  # heads: _check_heads's
    if shots is not None or target is not None:  # few-shot, or regression and multi-label targets: in this process
        return _bench_other(given)
    labels_target = _labels_target(caches)  # a cache opened with a classification target: its labels
    caches, heads, estimators, params = _check_heads(caches, heads, params, baseline_heads)
    opened = _open(caches, labels_target)
    draws = {"repeats": repeats, "seed": seed if repeats > 1 else 0}  # one draw: the seed changes nothing
    tasks = _tasks(opened, heads, estimators, params, cv, pixel_size, views, draws)
    tasks += _baseline_tasks(opened, str(caches[0]), heads, baseline_heads, params, cv, pixel_size, draws)
    out = _report_dir(out)
    run = _Run(out, tasks, estimators, timeout, n_jobs, backend)
    rows, todo = run.resume()
    run.prepare_fitted(save_best and bool(todo))
    todo = run.schedule(todo)
    if progress and todo:
        _say_estimate(todo, opened, timeout, n_jobs)
    try:
        rows = run.rows(todo, rows, opened, progress, ray_address)
        best = best_row(rows)
        curve, best_dir = run.best_and_curve(best, save_best, tuple(learning_curve or ()), cv, pixel_size)
    finally:
        if run.fitted:
            _remove_fitted(run.fitted, None)
    _write_report(out, rows, best, best_dir, curve, opened if leakage else None)
    _track(mlflow, given, heads, rows, out, opened)
    return rows


def _track(mlflow, given: dict, heads: list, rows: list, out: Path, opened: dict) -> None:
    """The bench as MLflow runs (when ``mlflow`` asks): its settings (the heads by name), each row, the report and
    best_model/."""
    if mlflow in (None, False):
        return
    from .tracking import log_bench

    layers = {c: cache.outputs[0] for c, cache in opened.items()}
    log_bench(mlflow, _tracked_settings(given, heads, list(opened)), rows, out, layers)


def _bench_other(given: dict) -> list[dict]:
    """A ``--shots`` or ``--target`` bench of :func:`bench`'s arguments ``given``, logged (when ``mlflow`` asks) as
    one parent run: the benches a target bench runs inside log nothing."""
    caches, heads, out, shots, target = (given[k] for k in ("caches", "heads", "out", "shots", "target"))
    rows = (_bench_shots(caches, heads, shots, given["shot_draws"], given["seed"], out, target) if shots is not None
            else _bench_with_targets(caches, heads, target, out, {**given, "mlflow": None}))
    _track_other(given["mlflow"], given, heads, caches, rows, Path(out))
    return rows


def _track_other(mlflow, given: dict, heads, caches, rows: list, out: Path) -> None:
    """A ``--shots`` or ``--target`` bench as MLflow runs (when ``mlflow`` asks): a child run a row."""
    if mlflow in (None, False):
        return
    from .tracking import log_shots, log_targets

    opened = [caches] if isinstance(caches, (str, os.PathLike, Cache)) else list(caches)
    opened = [c if isinstance(c, Cache) else open_cache(c) for c in opened]
    if given["shots"] is not None:
        heads = list(dict.fromkeys(r["head"] for r in rows))  # the heads that ran (none named: the defaults)
        log_shots(mlflow, _tracked_settings(given, heads, opened), rows, out)
    else:
        layers = {str(c.path): c.outputs[0] for c in opened}  # keyed as the rows name their cache
        log_targets(mlflow, _tracked_settings(given, heads, opened), rows, out, layers)


def _tracked_settings(given: dict, heads, caches: list) -> dict:
    """The bench's settings as MLflow params: paths as text, the heads by name, the caches."""
    settings = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in given.items()
                if k in {p.name for p in BENCH} - {"heads", "progress", "ray_address", "mlflow"}}
    settings.update(heads=[h if isinstance(h, str) else type(h).__name__ for h in heads or ()],
                    caches=[str(getattr(c, "path", c)) for c in caches])
    return settings


def _bench_shots(caches, heads, shots, draws: int, seed: int, out, target=None) -> list[dict]:
    """:func:`.shots.few_shot` on every cache (one backbone each) with the named heads (the CLI's "every head":
    its defaults), written together; ``target``: one classification target to read as the labels (k images a
    class need classes)."""
    from .shots import few_shot, write_shots

    opened = [_shot_cache(c, target) for c in ([caches] if isinstance(caches, (str, os.PathLike, Cache))
                                               else list(caches))]
    if not opened:
        raise FeatcacheError("bench needs at least one cache directory")
    named = [h for h in heads if isinstance(h, str)] if heads else None
    named = None if named is not None and set(named) == set(HEADS) else named
    out = _report_dir(out)
    rows = [r for c in opened for r in few_shot(c, shots, heads=named, draws=draws, seed=seed)]
    write_shots(out, rows, opened)
    return rows


def _shot_cache(cache, target):
    """A cache for --shots, reading ``target`` (one classification target) as its labels when given."""
    from .targets import parse_targets

    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    if target is None:
        return cache
    names = parse_targets(target)
    if len(names) != 1 or cache.target(names[0]).kind != "classification":
        raise FeatcacheError(f"--shots takes one classification target (k train images a class), got "
                             f"{', '.join(f'{n} ({cache.target(n).kind})' for n in names)}")
    return cache.with_target(names[0])


def _bench_with_targets(caches, heads, target, out, kw: dict) -> list[dict]:
    """The other targets' rows (:func:`.targets.bench_targets`), then ``label``'s usual bench if it was asked for."""
    from .targets import bench_targets, check_target_bench, classification_heads, parse_targets

    names = parse_targets(target)
    first = ([caches] if isinstance(caches, (str, os.PathLike, Cache)) else list(caches))[0]
    named = list(heads) if heads else None  # names and your own estimators, each run on the kinds it serves
    if named is not None and {h for h in named if isinstance(h, str)} == set(HEADS):  # the CLI's "every head"
        named = [h for h in named if not isinstance(h, str)] or None  # each kind's defaults instead
    keep = {k: v for k, v in kw.items() if k in {p.name for p in BENCH} and k not in ("target", "heads")}
    check_target_bench(first, names, heads, keep)  # every refusal before any work, label's bench included
    rows = []
    if "label" in names:  # first: its report directory check sees the directory as the user left it
        rows = bench(caches, classification_heads(heads, "label"), **keep)
    return rows + bench_targets(first, [n for n in names if n != "label"] or "label", heads=named,
                                out=_report_dir(out), baseline_heads=kw["baseline_heads"],
                                pixel_size=kw["pixel_size"], options={**keep, "heads": heads}, classify=bench)


if bench.__doc__:  # the settings' help, declared once in .options (absent under python -OO)
    bench.__doc__ = bench.__doc__.replace("{settings}", docs(BENCH))


def _labels_target(caches) -> str | None:
    """The classification target the given caches were opened with as their labels (None: ``label``)."""
    given = [caches] if isinstance(caches, Cache) else list(caches) if not isinstance(caches, (str, os.PathLike)) else []
    names = {c.target_name for c in given if isinstance(c, Cache)}
    if len(names) > 1:
        raise FeatcacheError(f"the caches were opened with different targets as labels ({', '.join(sorted(names))})")
    return next(iter(names - {"label"}), None)


def _open(caches, target: str | None = None) -> dict:
    opened = {str(c): open_cache(c, target=target) for c in caches}
    for cache in opened.values():  # before any work: a one-class cache would fail every head
        train_classes(cache, split_masks(cache))
    return opened


def _report_dir(out) -> Path:
    out = check_report_target(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatcacheError(f"cannot create the report directory {out}: {exc.strerror or exc}") from None
    return out


def _write_report(out: Path, rows: list, best, best_dir, curve, opened: dict | None) -> None:
    """The report, with the best head's near-duplicate check when ``opened`` (the caches) is given."""
    leaks = None
    if opened is not None and best is not None:
        leaks = near_duplicates(opened[best["cache"]])
        leaks["cache"] = best["cache"]
    try:
        report.write_report(out, rows, best_dir=best_dir, curve=curve, leakage=leaks)
    except OSError as exc:
        raise FeatcacheError(f"cannot write the report in {out}: {exc.strerror or exc}; the rows are kept in "
                             f"{out / RESULTS}") from None


def _check_heads(caches, heads, params, baseline_heads):
    """The cache paths, head names, a user's estimators by name and the params, every one checked."""
    caches = [caches] if isinstance(caches, (str, os.PathLike, Cache)) else list(caches)
    caches = [c.path if isinstance(c, Cache) else c for c in caches]  # each head's process reopens its cache
    if not caches:
        raise FeatcacheError("bench needs at least one cache directory")
    heads, estimators = user_heads(list(heads) if heads else list(HEADS))  # your own estimators: custom:Name
    for h in [h for h in heads if h not in estimators] + list(baseline_heads or ()):
        get_head_spec(h)
    params = params or {}
    unknown = set(params) - set(heads)
    if unknown:
        raise FeatcacheError(f"parameters given for heads that are not benchmarked: {', '.join(sorted(unknown))}")
    for h in heads:  # a bad parameter fails here, not in every head's process
        if h in estimators:
            from ..heads.custom import user_head  # scikit-learn is slow to import: only for your own heads

            user_head(estimators[h], [], params.get(h))
        else:
            validate_head(h, None, params.get(h))
    return caches, heads, estimators, params


def _tasks(opened: dict, heads, estimators, params, cv, pixel_size, views, draws: dict) -> list[Task]:
    tasks = []
    for path, cache in opened.items():
        for h in heads:
            spec = None if h in estimators else get_head_spec(h)
            keras = spec is not None and spec.kind == "keras"
            # one choice for every head: rows or mean for the scikit-learn heads, Keras heads still draw
            mode = resolve_mode("auto" if keras and views in ("rows", "mean") else views,
                                "rows" if spec is None else spec.views, keras, cache.views)
            tasks.append(Task(path, cache.key, h, dict(params.get(h, {})), cv, False, pixel_size,
                              estimator=estimators.get(h), views=cache.views if mode != "none" else 0,
                              views_mode=mode, spec=spec, rows_key=cache.rows_key, target=_own(cache), **draws))
    return tasks


def _baseline_tasks(opened: dict, first_path: str, heads, baseline_heads, params, cv, pixel_size,
                    draws: dict) -> list[Task]:
    first = opened[first_path]
    if baseline_heads and first.source_address is None:  # arrays: their pixels cannot be read again
        warnings.warn(f"no raw-pixel baseline: {first_path} was made from in-memory arrays, whose pixels featcache "
                      "cannot read again", FeatcacheWarning, stacklevel=3)
        return []
    return [Task(first_path, first.key, h, dict(params.get(h, {})), cv, True, pixel_size, spec=get_head_spec(h),
                 rows_key=first.rows_key, target=_own(first), **draws)
            for h in baseline_heads or () if h in heads]


def _own(cache) -> str:
    """A task's ``target``: the classification target the cache reads as labels, "" for ``label``."""
    return "" if cache.target_name == "label" else cache.target_name


class _Run:
    """One bench run's report directory, its tasks and the fits its heads leave until the best is known."""

    def __init__(self, out: Path, tasks: list, estimators: dict, timeout, n_jobs, backend):
        self.out, self.tasks, self.estimators = out, tasks, estimators
        self.timeout, self.n_jobs, self.backend = timeout, n_jobs, backend
        self.results = out / RESULTS
        self.order = {t.settings: i for i, t in enumerate(tasks)}
        self.fitted: Path | None = None

    def resume(self) -> tuple[list, list]:
        """The rows kept from an earlier run (as this run spells each cache), and the tasks left to run."""
        done = {r["settings"]: r for r in _load_rows(self.results)}  # a retried row's later line wins
        for key, r in list(done.items()):
            if retry_reason(r, self.timeout):
                del done[key]
        rows = [{**done[t.settings], "cache": t.cache, "cache_key": t.cache_key} for t in self.tasks
                if t.settings in done]
        return rows, [t for t in self.tasks if t.settings not in done]

    def prepare_fitted(self, wanted: bool) -> None:
        """Where each head's process leaves its fit: not under Ray (a worker may not see out/), and not in a
        folder that is not ours (the best is fitted again)."""
        fitted = self.out.resolve() / FITTED
        ours = not fitted.is_symlink() and (fitted.is_dir() or not fitted.exists())
        if ours and fitted.is_dir():
            _remove_fitted(fitted, None)  # a killed run's leftovers: never trusted for a row recomputed since
        self.fitted = fitted if wanted and ours and self.backend != "ray" else None

    def schedule(self, todo: list) -> list:
        """The tasks with their share of the cores and where to leave their fit, the costliest first."""
        return [dataclasses.replace(t, cores=_cores_per_head(self.n_jobs, len(todo), self.backend),
                                    model_path=str(self.fitted / f"{t.settings}.joblib")
                                    if self.fitted and not t.baseline else "")
                for t in _longest_first(todo)]

    def rows(self, todo: list, rows: list, opened: dict, progress: bool, ray_address) -> list:
        """Run ``todo``, recording each row as it finishes; every row, in the order of the tasks."""
        if self.fitted:
            self.fitted.mkdir(exist_ok=True)
        live = report.LiveTable(self.tasks, rows, enabled=progress)
        with live, _joblib_backend(self.backend if todo else "threading", ray_address):  # no Ray when none left
            for task in todo:
                live.running(task)
            for task, result in _run_tasks(todo, self.timeout, self.n_jobs, self.backend):
                row = _row(task, opened[task.cache], result)
                try:
                    _append_row(self.results, row)
                except OSError as exc:
                    raise FeatcacheError(f"cannot record a result in {self.results}: {exc.strerror or exc}; the "
                                         "rows recorded so far are kept, run the same command again to go on") from None
                rows.append(row)
                live.finished(row)
                if self.fitted:  # only the best so far is kept: the others' files go as soon as they are beaten
                    leader = best_row(self._ordered(rows))
                    _remove_fitted(self.fitted, {r["settings"] for r in rows} - {(leader or {}).get("settings")})
            live.summarise(self._ordered(rows))  # the best and its ties: the report's rule on the report's order
        return self._ordered(rows)

    def _ordered(self, rows: list) -> list:
        return sorted(rows, key=lambda r: self.order.get(r["settings"], 1 << 30))

    def best_and_curve(self, best, save_best: bool, fractions, cv, pixel_size):
        """Save the best head while the learning curve's processes run; (the curve, best_model/ or None)."""
        if best is None:
            return _learning_curve(None, fractions, self.out / CURVE, self.timeout, self.n_jobs, cv, pixel_size), None
        own = self.estimators.get(best["head"])
        best_dir = self.out / BEST_MODEL if save_best else None
        with ThreadPoolExecutor(1) as pool:
            saving = pool.submit(_save_best, best, best_dir, own, self.fitted, cv, pixel_size) if best_dir else None
            curve = _learning_curve(best, fractions, self.out / CURVE, self.timeout, self.n_jobs, cv, pixel_size, own)
            if saving is not None:
                saving.result()
        return curve, best_dir


def _say_estimate(todo: list, opened: dict, timeout, n_jobs) -> None:
    groups: dict = {}
    for t in todo:
        width = 3 * t.pixel_size ** 2 if t.baseline else _n_features(opened[t.cache])
        groups.setdefault((len(opened[t.cache]), width), []).append("logreg" if t.estimator is not None
                                                                    else t.head)  # your own: a linear head's
    est = sum(estimate_seconds(h, n, d, n_jobs) for (n, d), h in groups.items())
    budget = f", at most {timeout:g} s a head" if timeout else ""
    console.print(f"about {est:.0f} s for these {len(todo)} heads ({min(n_jobs if n_jobs > 0 else 99, len(todo))} "
                  f"at a time{budget})")


def estimate_seconds(heads, n_rows: int, n_features: int, n_jobs: int = 1) -> float:
    """About how long ``heads`` take on an ``n_rows`` x ``n_features`` cache, ``n_jobs`` at a time.

    A rough, up-front figure from each head's ``cost_10k`` (one core a head
    on the reference bench), scaled linearly by rows x features, capped
    where its ``row_cap`` caps a head's rows; said before the run so that a
    long one is no surprise.

    Args:
        heads: head names (a raw-pixel baseline counts as its head).
        n_rows, n_features: the cache's shape.
        n_jobs: heads at once (-1: every CPU).

    Returns:
        Seconds of wall time for the heads (not the best head's learning curve).

    Examples:
        >>> round(estimate_seconds(["logreg"], 10_000, 1280)) >= 3
        True
    """
    cpus = os.cpu_count() or 1
    at_once = max(1, min(cpus if n_jobs < 0 else n_jobs, len(heads) or 1))

    def cost(h):
        spec = get_head_spec(h)
        rows = min(n_rows, int((spec.row_cap or n_rows) / 0.67))  # the cap is on the ~67% of rows in train
        return spec.start_seconds + spec.cost_10k * rows * n_features / (10_000 * 1280)

    return sum(cost(h) for h in heads) / at_once


def _longest_first(tasks: list) -> list:
    """The tasks in the order to start them: the costliest first (by each head's ``cost_10k``), so that two
    slots finish together rather than one waiting on a long head started last."""
    def cost(t):
        spec = HeadSpec(t.head, None, "sklearn", "none", "") if t.estimator is not None else get_head_spec(t.head)
        return spec.start_seconds + spec.cost_10k

    return sorted(tasks, key=cost, reverse=True)


def _save_best(best: dict, best_dir: Path, own, fitted: Path | None, cv=None, pixel_size: int = 16) -> None:
    """Save the best row's head to ``best_dir``: the very estimator its process fitted when it left one in
    ``fitted`` (this run measured it), else (a row kept from an earlier run) the row's task run again through
    the same protocol, unless ``best_dir`` already holds a current one."""
    params = best.get("best_params") or {}
    name = best["head"] if own is None else best["head"].partition("#")[0]  # train names yours custom:ClassName
    keras = own is None and get_head_spec(best["head"]).kind == "keras"
    fit_splits = best.get("fit_splits") or (["train"] if keras else ["train", "val"])  # rows before it was kept
    views = (best.get("views") or 0, best.get("views_mode") or "none")
    path = fitted / f"{best['settings']}.joblib" if fitted else None
    cache = open_cache(best["cache"], target=best.get("target") or None)
    if path is not None and path.is_file():
        save_fitted(cache, name, joblib.load(path), out=best_dir, params=params, fit_splits=fit_splits,
                    views=views, fit_seconds=best.get("fit_seconds") or 0.0)
        return
    card = current_card(best_dir, name, best["cache_key"], params, *views, rows_key=best.get("rows_key") or None)
    if own is not None and card is not None:  # the same name, the same estimator?
        from ..heads.custom import user_head  # scikit-learn is slow to import: only for your own heads

        same = card.get("estimator") == custom_fields("custom:", user_head(own, [], params)[1])["estimator"]
        card = card if same else None
    if card is None or card.get("fit_splits", ["train"]) != fit_splits:
        with tempfile.TemporaryDirectory(prefix="featcache-best-") as tmp:
            task = dataclasses.replace(_row_task(best, own, cv, pixel_size), model_path=os.path.join(tmp, "fit"))
            result = run_task(task, None)
            if result.get("status") != "ok" or not os.path.isfile(task.model_path):
                raise FeatcacheError(f"cannot save the best head {best['head']} to {best_dir}: fitting it again "
                                     f"{result.get('status')}: {result.get('error') or 'its fit could not be saved'}")
            save_fitted(cache, name, joblib.load(task.model_path), out=best_dir, params=result["best_params"],
                        fit_splits=result["fit_splits"], views=views, fit_seconds=result["fit_seconds"])


def _row_task(row: dict, own, cv, pixel_size: int) -> Task:
    """The task that made a feature ``row`` (its settings), to run it again."""
    return Task(row["cache"], row["cache_key"], row["head"], dict(row.get("params") or {}), cv, False, pixel_size,
                estimator=own, views=row.get("views") or 0, views_mode=row.get("views_mode") or "none",
                spec=HEADS.get(row["head"]) if own is None else None, rows_key=row.get("rows_key") or "",
                target=row.get("target") or "")


def _n_features(cache) -> int:
    return int(np.prod(cache.output_info(cache.output_name(None))["shape"]))


def _learning_curve(best, fractions, path: Path, timeout, n_jobs, cv, pixel_size, estimator=None) -> list[dict]:
    """The best head's rows at each share of the train and val rows, its chosen parameters fixed.

    Each point is a row like the table's (its own process and budget), kept in
    ``learning_curve.jsonl`` and reused by a re-run under the same rules; the
    100% point is the best row itself.
    """
    if best is None or not fractions:
        return []
    done = {r["settings"]: r for r in _load_rows(path) if isinstance(r, dict) and "settings" in r}
    for key, r in list(done.items()):
        if retry_reason(r, timeout):
            del done[key]
    params = {**(best.get("params") or {}), **(best.get("best_params") or {})}
    tasks = [Task(best["cache"], best["cache_key"], best["head"], params, cv, False, pixel_size=pixel_size,
                  train_fraction=float(f), cores=_cores_per_head(n_jobs, len(fractions), "threading"),
                  estimator=estimator, views=best.get("views") or 0, views_mode=best.get("views_mode") or "none",
                  spec=HEADS.get(best["head"]) if estimator is None else None, rows_key=best.get("rows_key") or "",
                  target=best.get("target") or "")
             for f in sorted(set(fractions)) if 0 < f < 1]
    rows = {t.settings: done[t.settings] for t in tasks if t.settings in done}
    todo = [t for t in tasks if t.settings not in rows]
    cache = open_cache(best["cache"], target=best.get("target") or None) if todo else None
    for task, result in _run_tasks(todo, timeout, n_jobs, "threading"):
        row = {**_row(task, cache, result), "train_fraction": task.train_fraction}
        with contextlib.suppress(OSError):  # a lost point costs a re-run, not the report
            _append_row(path, row)
        rows[task.settings] = row
    points = [rows[t.settings] for t in tasks] + [{**best, "train_fraction": 1.0}]
    return [{k: r.get(k) for k in ("head", "features", "train_fraction", "status", "accuracy", "accuracy_ci",
                                   "macro_f1", "n_train", "error")} for r in points]
