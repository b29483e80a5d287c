"""One benchmark row's work, as a picklable :class:`Task`, and the head names of a user's own estimators."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass

from ..errors import FeatcacheError
from ..heads import HEADS, HeadSpec, get_head_spec, make_head
from ..store import canonical_json


@dataclass(frozen=True)
class Task:
    cache: str
    cache_key: str
    head: str
    params: dict
    cv: int | None
    baseline: bool  # raw pixels instead of the cache's features
    pixel_size: int = 16
    cores: int = 0  # the head's share of the CPUs (0: all); changes the speed, never the row
    #: a learning-curve point: the same protocol on this share of the train and val rows
    train_fraction: float = 1.0
    #: a user's own scikit-learn classifier (an unfitted clone) for a ``custom:`` head; None for a named head
    estimator: object = None
    #: the cache's augmented views the head trains on (0: none) and how (:mod:`featcache.heads.views`)
    views: int = 0
    views_mode: str = "none"
    #: where the head's process saves its fitted head, for bench to keep the best as best_model/ without fitting
    #: it again ("": nowhere); like ``cores``, never part of the row
    model_path: str = ""
    #: the named head's spec, so a head registered in this process is known in the head's own; never in the row
    spec: HeadSpec | None = None
    #: the cache's rows_key: what the row learns from, so a cache whose key changed but whose rows did not (a
    #: grow that found every image unchanged) keeps its rows ("": a row from before rows had a key)
    rows_key: str = ""
    #: split draws (1: the cache's own split only) and the seed of the re-draws (:mod:`.repeats`)
    repeats: int = 1
    seed: int = 0
    #: the classification target read as the labels ("": the source's own ``label``; docs/TARGETS.md)
    target: str = ""

    @property
    def settings(self) -> str:
        """A hash of what makes this row: a re-run with the same settings skips it."""
        spec = self.spec or (HEADS.get(self.head) if self.estimator is None else None)
        body = {"key": self.rows_key or self.cache_key, "head": self.head, "params": self.params, "cv": self.cv,
                "baseline": self.baseline, "pixels": self.pixel_size if self.baseline else None,
                "grid": spec.grid if spec is not None else None, "protocol": "val-select+trainval-refit/v3",
                "head_is": _head_is(self.head, self.estimator)}
        if self.train_fraction != 1.0:  # absent at 1.0, so the rows of earlier reports keep their hashes
            body["train_fraction"] = self.train_fraction
        if self.repeats > 1:  # absent at 1, so the rows of earlier reports keep their hashes
            body["repeats"] = [self.repeats, self.seed]
        if self.target:  # absent for label, likewise; its values are in rows_key, its name is here
            body["target"] = self.target
        if self.views:  # absent without views, likewise; K is not in the cache key, so it is here
            body["views"] = [self.views, self.views_mode]
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def _head_is(head: str, estimator=None) -> str:
    """What a head is (its pipeline's repr, or a user's estimator's with every parameter): a new default or a
    changed parameter makes a new row, never a kept stale one."""
    from sklearn import config_context  # scikit-learn is slow to import: `import featcache` stays fast without it

    with config_context(print_changed_only=False):  # every parameter, defaults too: a changed default counts
        return repr(estimator) if estimator is not None else repr(make_head(head))


def task_spec(task: Task) -> HeadSpec:
    """The task's HeadSpec: the named head's, or one for a user's own estimator (no preprocessing, no grid)."""
    if task.estimator is None:
        return task.spec or get_head_spec(task.head)
    est = task.estimator
    return HeadSpec(task.head, lambda: est, "sklearn", "none", f"your own {type(est).__name__}")


def user_heads(heads) -> tuple[list[str], dict]:
    """Head names for ``heads`` (names, or a user's estimators named ``custom:ClassName``, ``#2`` ... when two
    share a class) and ``{name: unfitted clone}`` of the estimators; a bad object is a FeatcacheError first."""
    from sklearn.base import clone  # scikit-learn is slow to import: `import featcache` stays fast without it

    from ..heads.custom import head_name, user_head  # scikit-learn too

    names, estimators = [], {}
    for h in heads:
        if isinstance(h, str):
            names.append(h)
            continue
        user_head(h, [])  # not a classifier, a class, unclonable: one line naming it
        base = name = head_name(h)
        n = 1
        while name in names:
            n += 1
            name = f"{base}#{n}"
        est = clone(h)
        try:
            pickle.dumps(est)
        except Exception as exc:  # noqa: BLE001 - any pickling failure: the head's process cannot get it
            raise FeatcacheError(f"head {name} cannot be pickled for its process: {exc}") from None
        names.append(name)
        estimators[name] = est
    return names, estimators
