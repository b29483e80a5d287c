"""Benchmark many heads on one or more caches with an honest protocol.

Protocol: hyper-parameters are chosen on the validation split (or by K-fold
cross-validation inside the training split with ``cv=K``); the chosen
setting is refit on train+val and the test split is touched once. Linear
heads sweep their regularisation on a log grid, as linear probes do. Keras
heads early-stop on the validation split and are evaluated once.

Each (cache, head) runs in its own fresh Python process (so a crash or a
runaway head cannot take the run down, and a script without a ``__main__``
guard works), at most ``n_jobs`` at a time through joblib, with a per-head
time budget after which the process is killed and the row says "timed out".
Rows are appended to ``results.jsonl`` as they finish, so an interrupted run
keeps what it did and a re-run skips finished rows for the same cache key and
settings; it retries a timed-out row under a larger budget and a failed one
when the code changed (:func:`retry_reason`). Every row carries 95% bootstrap
intervals on its test accuracy and macro-F1 and its own peak memory.

One role per module: :mod:`.tasks` (a row's work), :mod:`.protocol` (the
selection strategies, in the head's process), :mod:`.child` and
:mod:`.process` (the head's process, its budget and memory), :mod:`.stats`
(bootstrap intervals), :mod:`.results` (results.jsonl and the retry rule),
:mod:`.select` (the best-row rules), :mod:`.options` (the settings, declared once) and :mod:`.driver`
(:func:`bench`).
"""

from __future__ import annotations

import importlib

from ..heads import HEADS
from .driver import bench, estimate_seconds
from .options import BENCH, DEFAULT_N_JOBS, DEFAULT_TIMEOUT, VIEW_MODES, check_options
from .process import BACKENDS, STDERR_TAIL, _cores_per_head, _run_tasks, run_task
from .results import (BEST_MODEL, CURVE, FITTED, RESULTS, _load_rows, check_report_target, retry_reason)
from .select import best_row, mark_ties
from .stats import bootstrap_intervals
from .tasks import Task, user_heads

__all__ = ["bench", "BENCH", "check_options", "estimate_seconds", "retry_reason", "bootstrap_intervals",
           "check_report_target", "best_row", "mark_ties", "run_task", "user_heads", "evaluate", "pixel_features", "Task", "RESULTS",
           "FITTED", "CURVE", "BEST_MODEL", "BACKENDS", "VIEW_MODES", "DEFAULT_TIMEOUT", "DEFAULT_N_JOBS",
           "STDERR_TAIL", "GRIDS", "SUBSAMPLE", "COST_10K"]

#: names of the head's-process modules, loaded on first use: they import scikit-learn, and `import featcache`
#: stays fast without it
_LAZY = {"evaluate": "protocol", "_path": "protocol", "PATH_PATIENCE": "protocol", "pixel_features": "pixels",
         "_child_main": "child", "_child": "child"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    # the per-head tables of earlier versions, read from the head registry (each HeadSpec holds its own)
    if name == "GRIDS":
        return {n: s.grid for n, s in HEADS.items() if s.grid}
    if name == "SUBSAMPLE":
        return {n: s.row_cap for n, s in HEADS.items() if s.row_cap}
    if name == "COST_10K":
        return {n: s.cost_10k for n, s in HEADS.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
