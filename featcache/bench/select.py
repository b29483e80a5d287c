"""The best-row rules: the best head by validation accuracy alone, and which rows tie with it on test."""

from __future__ import annotations


def best_row(rows: list[dict]) -> dict | None:
    """The benchmark's best head: the highest validation accuracy among successful feature rows.

    Chosen by validation accuracy alone, never by test accuracy; a tie goes to
    the row that comes first (heads in the order asked for). The baseline
    rows (raw pixels) are never the best head.
    """
    ok = [r for r in rows if r.get("status") == "ok" and not r.get("baseline")]
    if not ok:
        return None
    top = max(r.get("val_accuracy") or 0.0 for r in ok)
    return next(r for r in ok if (r.get("val_accuracy") or 0.0) == top)


#: a paired test's p-value at or above this: the two rows are not distinguishable, a ``tie``
TIE_ALPHA = 0.05


def paired_p(best: dict, row: dict) -> float | None:
    """The corrected resampled t-test's p-value between two rows' validation draws, or None when they were not
    scored on the same draws (one split only, other rows or another draw rule: nothing to pair)."""
    a, b = best.get("val_draws"), row.get("val_draws")
    if not a or not b or len(a) != len(b) or len(a) < 2 or best.get("draws_key") != row.get("draws_key"):
        return None
    from .stats import corrected_ttest  # scipy: only when draws are paired

    return corrected_ttest(a, b, best["val_ratio"])


def mark_ties(rows: list[dict]) -> dict | None:
    """Set each successful row's ``versus_best``; return the best row. One rule for the console, results, report
    and best_model/: every one of them calls this (or :func:`best_row`) on the rows in task order.

    ``best`` for the best head (chosen by validation accuracy, its mean over
    repeats: :func:`best_row`). With repeats, a row scored on the best's
    draws is a ``tie`` when the paired test (:func:`paired_p`, its p-value
    in ``versus_best_p``) cannot tell it from the best (p >= 0.05), else
    ``below``. Without repeats, ``tie`` where a row's 95% test interval
    overlaps the best's, else ``below`` or ``above`` (a head the validation
    split ranked lower can still score higher on test).

    Args:
        rows: benchmark rows (changed in place).

    Returns:
        The best row, or None.

    Examples:
        >>> rows = [{"head": "a", "status": "ok", "val_accuracy": .9, "accuracy_ci": [.8, .9]},
        ...         {"head": "b", "status": "ok", "val_accuracy": .8, "accuracy_ci": [.85, .95]}]
        >>> mark_ties(rows)["head"], rows[1]["versus_best"]
        ('a', 'tie')
    """
    best = best_row(rows)
    for r in rows:
        r.pop("versus_best", None)
        r.pop("versus_best_p", None)
    if best is None:
        return None
    b = best.get("accuracy_ci")
    for r in rows:
        c = r.get("accuracy_ci")
        p = paired_p(best, r) if r is not best and r.get("status") == "ok" else None
        if r is best:
            r["versus_best"] = "best"
        elif p is not None:
            r["versus_best"], r["versus_best_p"] = ("tie" if p >= TIE_ALPHA else "below"), p
        elif r.get("status") == "ok" and b and c:
            r["versus_best"] = "tie" if c[0] <= b[1] and b[0] <= c[1] else ("below" if c[1] < b[0] else "above")
    return best


#: the validation metric that picks a target's best head, by kind (higher is better)
SELECT_METRIC = {"regression": "r2", "multilabel": "map", "classification": "accuracy"}


def best_target_row(rows: list[dict]) -> dict | None:
    """A regression or multi-label target's best head: its kind's validation metric alone, as :func:`best_row`."""
    ok = [r for r in rows if r.get("status") == "ok" and not r.get("baseline")
          and r.get(f"val_{SELECT_METRIC[r['kind']]}") is not None]
    if not ok:
        return None
    key = lambda r: r[f"val_{SELECT_METRIC[r['kind']]}"]  # noqa: E731
    top = max(key(r) for r in ok)
    return next(r for r in ok if key(r) == top)
