"""The report directory's files: results.jsonl (resumable, with the retry rule) and each head's fit until the best is known."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from ..errors import FeatcacheError
from ..versions import HEAD_PACKAGES, versions
from .tasks import Task

RESULTS = "results.jsonl"
#: where each head's process of this run leaves its fitted head until the best is known (then removed)
FITTED = ".featcache-fitted"
#: the best head's learning-curve rows, apart from the table's rows so each file has one kind of row
CURVE = "learning_curve.jsonl"
BEST_MODEL = "best_model"
#: a fitted head's file in FITTED: the row's settings hash (a ``.part`` while it is written)
_FITTED_FILE = re.compile(r"([0-9a-f]{16})\.joblib(\.part)?")


def _row(task: Task, cache, result: dict) -> dict:
    p = cache.params
    return {
        "cache": task.cache, "cache_key": task.cache_key, "rows_key": task.rows_key, "backbone": "raw pixels" if task.baseline else p["backbone"],
        "features": (f"pixels {task.pixel_size}x{task.pixel_size}" if task.baseline
                     else f"{p['backbone']} {p['image_size'][0]}px {cache.outputs[0]}"
                     + (f" + {task.views} views" if task.views else "")),  # the report shows the K a row used
        "head": task.head, "baseline": task.baseline, "params": task.params, "settings": task.settings,
        **({"target": task.target} if task.target else {}),  # a classification target other than label
        "views": task.views, "views_mode": task.views_mode,
        **({"augment": cache.augment} if task.views else {}),
        **({"estimator": repr(task.estimator)} if task.estimator is not None else {}),  # what custom:X was
        "versions": versions(HEAD_PACKAGES, backend=False),
        **{k: v for k, v in result.items() if k != "traceback"},
    }


def retry_reason(row: dict, timeout: float | None) -> str | None:
    """Why a kept row is run again under these settings, or None when it stands.

    A row that finished stands. A timed-out row is retried when the budget is
    now larger (or gone); a failed row when featcache, scikit-learn, Keras or
    NumPy changed since it failed (its cause may be fixed). A failure that the
    same code would repeat is kept, so a re-run costs nothing.

    Args:
        row: a row from ``results.jsonl``.
        timeout: this run's per-head budget in seconds (None: no limit).

    Returns:
        A short reason (shown in the live table), or None.

    Examples:
        >>> retry_reason({"status": "timed out", "budget_seconds": 60.0}, 600.0)
        'budget 60 s -> 600 s'
        >>> retry_reason({"status": "timed out", "budget_seconds": 60.0}, 60.0) is None
        True
    """

    status = row.get("status")
    if status == "timed out":
        budget = row.get("budget_seconds")
        if budget is None:  # rows written before the budget was recorded name it in their error
            m = re.search(r"within the ([0-9.e+-]+) s budget", row.get("error") or "")
            budget = float(m.group(1)) if m else None
        if budget is None or timeout is None or timeout > budget:
            return f"budget {budget:g} s -> " + ("no limit" if timeout is None else f"{timeout:g} s") \
                if budget is not None else "budget unknown"
        return None
    if status == "failed":
        now = versions(HEAD_PACKAGES, backend=False)
        if row.get("versions") != now:
            return "versions changed"
    return None


def _load_rows(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text("utf-8").splitlines():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a line cut by a kill mid-write, or not a row of ours
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _append_row(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _remove_fitted(fitted: Path, settings: set | None) -> None:
    """Remove the fitted heads of these rows' ``settings`` from ``fitted`` (None: all, and the folder itself).

    Only files named as bench names them go; the folder is removed only when
    nothing else is in it."""
    with contextlib.suppress(OSError):
        for p in fitted.iterdir():
            m = _FITTED_FILE.fullmatch(p.name)
            if m and p.is_file() and not p.is_symlink() and (settings is None or (m[1] in settings and not m[2])):
                p.unlink()
        if settings is None:
            fitted.rmdir()  # refuses when something else is there: it stays


def check_report_target(out) -> Path:
    """Refuse, before any work, a report directory that is not featcache's; returns it as a Path.

    ``out`` may be new, empty, or a report of featcache's: one holding a
    ``results.jsonl`` of benchmark rows. featcache then writes only its own
    file names there (results.*, report.*, best_model/, learning_curve.jsonl,
    leakage.json, the report's figures, *.png, and while it runs
    .featcache-fitted/, each head's fit until the best is saved).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FeatcacheError(f"--out {out} exists and is not a directory; choose a new report directory")
    if out.is_dir() and any(p for p in out.iterdir() if not _is_fitted_leftover(p)) and not _is_report(out):
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:3])
        raise FeatcacheError(f"--out {out} is not empty and holds no featcache report (it has {shown}); "
                             "choose a new or empty report directory")
    return out


def _is_fitted_leftover(path: Path) -> bool:
    """``out/.featcache-fitted`` of a run killed before its first row: a folder holding only our fits."""
    return (path.name == FITTED and path.is_dir() and not path.is_symlink()
            and all(_FITTED_FILE.fullmatch(p.name) and p.is_file() for p in path.iterdir()))


def _is_report(out: Path) -> bool:
    from .targets import is_target_report  # bench --target of regression/multi-label targets alone is ours too

    if is_target_report(out):
        return True
    path = out / RESULTS
    if path.is_symlink() or not path.is_file():
        return False
    try:
        rows = _load_rows(path)  # a line cut by a kill is skipped, as on resume
    except OSError:
        return False
    return any(isinstance(r, dict) and {"settings", "head", "status"} <= set(r) for r in rows)
