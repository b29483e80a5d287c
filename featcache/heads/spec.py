"""Every fact about a head in one entry: how it is built, selected, fitted, threaded and read.

A :class:`HeadSpec` is what ``featcache heads`` lists and what ``bench`` and
``train`` read: its factory, default preprocessing, grid, row cap, cost
estimate, selection strategy, thread use, how it trains on augmented views and
how its labels are taken. Adding a head is one :func:`register_head` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import FeatcacheError

#: how a head's hyper-parameters are chosen (:mod:`featcache.bench.protocol` has one function each)
SELECTIONS = ("early_stopping", "path", "calibrated_on_val", "out_of_bag", "grid", "fit_once")
#: the kinds of target a head may serve (featcache.store.targets)
TARGET_KINDS = ("classification", "regression", "multilabel")
#: a head's process start, its imports and loading the cache, by kind (Keras heads: importing TensorFlow)
START_SECONDS = {"sklearn": 1.5, "keras": 5.0}
#: what the up-front estimate counts for a head that declares no cost
DEFAULT_COST_10K = 10.0


@dataclass(frozen=True)
class HeadSpec:
    name: str
    #: builds the unfitted classifier (the Pipeline's ``clf`` step)
    make: Callable
    kind: str  # "sklearn" or "keras"
    preprocess: str  # default: "standard", "none" or "pca:N"
    description: str
    #: where a plain parameter such as C goes inside the pipeline
    param_prefix: str = "clf__"
    #: supports streaming from a cache (partial_fit or fit_cache)
    streams: bool = False
    #: how it trains on a cache's augmented views (:mod:`featcache.heads.views`): ``rows`` (every view a
    #: training row), ``mean`` (each image's mean over its views: as many rows as without views) or ``draw``
    #: (Keras heads: one view per image per epoch)
    views: str = "rows"
    #: the grid chosen on the validation split, ``{parameter: [values]}`` (None: no grid)
    grid: dict | None = None
    #: bench fits on a stratified subsample of at most this many train rows (its cost grows badly with rows)
    row_cap: int | None = None
    #: seconds for selection, fit and test on one core on the reference bench (docs/PERFORMANCE.md)
    cost_10k: float = DEFAULT_COST_10K
    #: one of :data:`SELECTIONS`; "" picks early_stopping for Keras, grid with a grid, else fit_once
    selection: str = ""
    #: the parameter a ``path`` selection walks, from the strongest regularisation
    path_param: str | None = None
    #: a ``calibrated_on_val`` head whose every alpha comes from one SVD (RidgeClassifierCV's GCV)
    one_svd: bool = False
    #: the classifier takes ``n_jobs``: bench gives it the head's cores unless the parameters fix it
    threaded: bool = False
    #: ``argmax``: its predict is the argmax of predict_proba wherever unique; ``predict``: ask predict
    labels: str = "predict"
    #: the target kinds it serves (docs/TARGETS.md); classification is built by ``make``
    kinds: tuple = ("classification",)
    #: how it is built for each other kind it serves, ``{kind: factory}``
    builds: dict | None = None
    #: where a plain parameter goes for each of those kinds (default ``clf__``)
    build_prefixes: dict | None = None

    def prefix(self, kind: str = "classification") -> str:
        """Where a plain parameter such as alpha goes in this head's pipeline for a target of ``kind``."""
        return self.param_prefix if kind == "classification" else (self.build_prefixes or {}).get(kind, "clf__")

    def factory(self, kind: str = "classification") -> Callable:
        """The factory of the unfitted estimator for a target of ``kind``; a one-line error naming the heads that fit."""
        if kind not in self.kinds:
            fit = ", ".join(n for n, s in HEADS.items() if kind in s.kinds) or "none"
            raise FeatcacheError(f"head {self.name!r} does not serve {kind} targets; heads that do: {fit}")
        return self.make if kind == "classification" else self.builds[kind]

    def __post_init__(self):
        if self.kind not in START_SECONDS:
            raise FeatcacheError(f"head {self.name!r}: kind must be one of {', '.join(START_SECONDS)}")
        if self.selection and self.selection not in SELECTIONS:
            raise FeatcacheError(f"head {self.name!r}: selection must be one of {', '.join(SELECTIONS)}, "
                                 f"got {self.selection!r}")
        if self.strategy == "path" and not self.path_param:
            raise FeatcacheError(f"head {self.name!r}: a path selection needs its path_param")
        if set(self.kinds) - set(TARGET_KINDS) or set(self.kinds) - {"classification"} - set(self.builds or {}):
            raise FeatcacheError(f"head {self.name!r}: kinds must be among {', '.join(TARGET_KINDS)}, each "
                                 f"beyond classification with its factory in builds")
        if self.labels not in ("argmax", "predict"):
            raise FeatcacheError(f"head {self.name!r}: labels must be 'argmax' or 'predict', got {self.labels!r}")

    @property
    def strategy(self) -> str:
        """The selection strategy this head's rows use."""
        if self.selection:
            return self.selection
        if self.kind == "keras":
            return "early_stopping"
        return "grid" if self.grid else "fit_once"

    @property
    def start_seconds(self) -> float:
        return START_SECONDS[self.kind]


#: the registry: every head by name, in the order ``featcache heads`` lists them
HEADS: dict[str, HeadSpec] = {}
_argmax_types: tuple | None = None


def register_head(spec: HeadSpec, *, replace: bool = False) -> HeadSpec:
    """Add ``spec`` to the registry: bench, train and ``featcache heads`` then know it by its name."""
    global _argmax_types
    if not isinstance(spec, HeadSpec):
        raise FeatcacheError(f"register_head takes a HeadSpec, got {type(spec).__name__}")
    if spec.name in HEADS and not replace and HEADS[spec.name] != spec:
        raise FeatcacheError(f"a head named {spec.name!r} is already registered")
    HEADS[spec.name] = spec
    _argmax_types = None
    return spec


def unregister_head(name: str) -> None:
    """Remove a registered head (a test's or a notebook's own); unknown names are ignored."""
    global _argmax_types
    HEADS.pop(name, None)
    _argmax_types = None


def argmax_classifiers() -> tuple:
    """The classifier classes of the heads whose labels are the argmax of their probabilities."""
    global _argmax_types
    if _argmax_types is None:
        _argmax_types = tuple({type(s.make()) for s in HEADS.values() if s.labels == "argmax"})
    return _argmax_types
