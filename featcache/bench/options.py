"""The benchmark's settings, declared once: ``featcache.bench``'s keyword defaults, ``featcache bench``'s flags and
the pipeline's ``[bench]`` table all come from :data:`BENCH`."""

from __future__ import annotations

from pathlib import Path

from ..errors import FeatcacheError, is_integer
from ..params import Param, check
from .process import BACKENDS

#: seconds per head: interactive (every default head takes well under a minute on the reference bench)
DEFAULT_TIMEOUT = 180.0
#: split draws per row: 1 keeps one split (docs/PERFORMANCE.md "Repeated selection" measures what R costs)
DEFAULT_REPEATS = 1
#: heads at once: each gets half the cores (BLAS capped), which hides one head's start-up behind another's work
DEFAULT_N_JOBS = 2
#: how bench's heads may use a cache's augmented views (Keras heads draw one view an epoch whenever they do)
VIEW_MODES = ("auto", "rows", "mean", "none")

#: every keyword of :func:`featcache.bench` but the caches
BENCH: tuple[Param, ...] = (
    # --heads and --param are written by hand: module:Class heads and HEAD:key=value pairs
    Param("heads", None, "head names (default: every head), or your own unfitted scikit-learn classifiers among "
          "them, each shown as custom:ClassName", object, many=True, cli=False),
    Param("params", None, "fixed parameters per head, e.g. {'knn': {'n_neighbors': 5}}", dict, cli=False),
    Param("cv", None, "choose hyper-parameters by K-fold CV inside train instead of on val", int, minimum=2),
    Param("repeats", DEFAULT_REPEATS, "seeded re-draws of the train/val split inside train+val (R x K folds with "
          "cv); each row reports its validation mean and sd over them, and ties are a paired test on them", int,
          minimum=1),
    Param("seed", 0, "seed of the repeats' re-draws: the same seed, the same draws and rows", int, minimum=0),
    Param("shots", None, "few-shot instead of the table: k train images a class for each k, e.g. 1,2,4,8,16, "
          "min(k, 4) val images a class, the whole test split; to shots.md/csv/json", int, minimum=1, many=True,
          nullable=True),
    Param("shot_draws", 5, "seeded draws per k for shots", int, minimum=1),
    Param("timeout", DEFAULT_TIMEOUT, "seconds per head before it is reported timed out (None: no limit); a kept "
          "timed-out row runs again under a larger budget", float, minimum=0, bounds="(]", nullable=True),
    Param("n_jobs", DEFAULT_N_JOBS, "heads run in parallel, each with its share of the cores (-1: every CPU of the "
          "backend)", int, minimum=-1),
    Param("out", "report", "report directory (new, empty, or an earlier featcache report)", Path),
    Param("baseline_heads", ("logreg",), "heads also run on raw pixels of the first cache's images ('' for none)",
          many=True),
    Param("pixel_size", 16, "side of the downsampled raw-pixel baseline", int, minimum=1),
    Param("backend", "threading", "joblib backend: threading (one process per head, this machine) or ray (a Ray "
          "cluster; the caches and out must be on storage every node sees)", choices=BACKENDS),
    Param("progress", False, "show the live table", bool, cli=False, pipeline=False),
    Param("save_best", True, "refit and save the best head to out/best_model", bool, cli=False),
    Param("ray_address", None, "Ray cluster for backend ray (default: RAY_ADDRESS, else a local instance)"),
    Param("learning_curve", (0.1, 0.25, 0.5), "shares of the train and val rows at which the best head runs again "
          "for the report's learning curve (empty or None: none)", float, minimum=0, maximum=1, bounds="()",
          many=True, nullable=True, cli=False),
    Param("leakage", True, "report the best head's accuracy without test rows that nearly duplicate a train or val "
          "row (cosine >= 0.98)", bool, cli=False),
    Param("views", "auto", "how heads train on the caches' augmented views: auto (each head's own way), rows, mean "
          "(Keras heads draw one view an epoch either way) or none", choices=VIEW_MODES, spelling="--use-views"),
    Param("target", None, "targets to bench on the first cache, e.g. age,tags,label (default: label only); "
          "regression and multi-label rows go to target_results.csv and targets.md", many=True, nullable=True),
    Param("mlflow", None, "log the bench to MLflow: a parent run (settings; report and best_model/ as artifacts) "
          "and a nested run a row (params, metrics with their intervals); bare: a ./mlruns file store, else a "
          "tracking URI (needs featcache[mlflow])", bools=True, nullable=True, const=True),
)


def check_options(*, name=lambda key: key, **values) -> None:
    """Refuse a bad benchmark setting before any work; ``name(key)`` is how the error names the setting."""
    check(BENCH, values, label=name)
    n_jobs = values.get("n_jobs", DEFAULT_N_JOBS)
    if not is_integer(n_jobs) or n_jobs == 0:
        raise FeatcacheError(f"{name('n_jobs')} must be a non-zero integer (-1: every CPU), got {n_jobs!r}")
    if values.get("mlflow") not in (None, False):  # a missing MLflow: one line naming the extra, before any work
        from .tracking import import_mlflow  # MLflow is slow to import: only when asked for

        import_mlflow()
