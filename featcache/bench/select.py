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


def mark_ties(rows: list[dict]) -> dict | None:
    """Set each successful row's ``versus_best`` from its test-accuracy interval; return the best row.

    ``best`` for the best head (chosen by validation accuracy, :func:`best_row`),
    ``tie`` where a row's 95% interval overlaps the best's, else ``below`` or
    ``above`` (a head the validation split ranked lower can still score higher on test).

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
    if best is None:
        return None
    b = best.get("accuracy_ci")
    for r in rows:
        c = r.get("accuracy_ci")
        if r is best:
            r["versus_best"] = "best"
        elif r.get("status") == "ok" and b and c:
            r["versus_best"] = "tie" if c[0] <= b[1] and b[0] <= c[1] else ("below" if c[1] < b[0] else "above")
    return best


#: the validation metric that picks a target's best head, by kind (higher is better)
SELECT_METRIC = {"regression": "r2", "multilabel": "map"}


def best_target_row(rows: list[dict]) -> dict | None:
    """A regression or multi-label target's best head: its kind's validation metric alone, as :func:`best_row`."""
    ok = [r for r in rows if r.get("status") == "ok" and not r.get("baseline")
          and r.get(f"val_{SELECT_METRIC[r['kind']]}") is not None]
    if not ok:
        return None
    key = lambda r: r[f"val_{SELECT_METRIC[r['kind']]}"]  # noqa: E731
    top = max(key(r) for r in ok)
    return next(r for r in ok if key(r) == top)
