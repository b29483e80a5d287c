"""bench --repeats: seeded re-draws inside train+val, the paired tie rule, and one best row everywhere."""

import csv
import importlib
import json

import numpy as np
import pytest

import featcache
from featcache.bench import Task, evaluate, mark_ties
from featcache.bench.repeats import redraw
from featcache.bench.stats import corrected_ttest
from featcache.model_dir import read_card
from featcache.store import split_masks


def _task(c, head="logreg", **kw):
    return Task(str(c.path), c.key, head, {}, kw.pop("cv", None), False, cores=1, rows_key=c.rows_key, **kw)


def _splits(cache):
    masks = split_masks(cache)
    return [np.flatnonzero(masks[s]) for s in ("train", "val", "test")]


# -- the draws ----------------------------------------------------------------------------------------------------

def test_same_seed_same_rows_other_seed_other_rows(small_cache):
    a = evaluate(_task(small_cache, "gaussian_nb", repeats=4, seed=0))
    b = evaluate(_task(small_cache, "gaussian_nb", repeats=4, seed=0))
    c = evaluate(_task(small_cache, "gaussian_nb", repeats=4, seed=1))
    assert a["repeats"] == 4 and len(a["val_draws"]) == 4
    assert a["val_draws"] == b["val_draws"] and a["draws_key"] == b["draws_key"]
    assert a["val_draws"][0] == c["val_draws"][0]  # draw 0 is the cache's own split under any seed
    assert a["val_draws"][1:] != c["val_draws"][1:] and a["draws_key"] != c["draws_key"]
    assert a["val_accuracy"] == pytest.approx(np.mean(a["val_draws"]))
    assert a["val_accuracy_sd"] == pytest.approx(np.std(a["val_draws"], ddof=1))


def test_test_rows_never_move(small_cache):
    """Repeats change the validation figures only: the test predictions are the one-split protocol's."""
    one = evaluate(_task(small_cache, "gaussian_nb"))
    many = evaluate(_task(small_cache, "gaussian_nb", repeats=3, seed=7))
    assert one["repeats"] == 1 and "val_draws" not in one  # R=1: today's row
    assert many["test_predictions"] == one["test_predictions"] and many["y_test"] == one["y_test"]
    tr, va, te = _splits(small_cache)
    y = small_cache.labels()
    for r in (1, 2, 3):
        t, v = redraw(y, tr, va, r, seed=7)
        assert len(t) == len(tr) and len(v) == len(va) and not set(t) & set(v)
        assert set(t) | set(v) == set(tr) | set(va) and not (set(t) | set(v)) & set(te)
    assert not np.array_equal(redraw(y, tr, va, 1, 7)[1], redraw(y, tr, va, 2, 7)[1])


def test_repeated_cv_scores_every_fold_of_every_draw(small_cache):
    row = evaluate(_task(small_cache, "gaussian_nb", cv=3, repeats=2))
    assert len(row["val_draws"]) == 6 and row["val_ratio"] == pytest.approx(0.5)  # K=3: n_val/n_train = 1/2


def test_repeats_change_the_settings_only_above_one(small_cache):
    base = _task(small_cache)
    assert _task(small_cache, repeats=1, seed=5).settings == base.settings  # earlier reports keep their rows
    assert _task(small_cache, repeats=3).settings not in (base.settings, _task(small_cache, repeats=3,
                                                                                 seed=1).settings)


# -- the paired tie rule --------------------------------------------------------------------------------------------

def test_corrected_ttest_by_hand():
    # d = [.02, .01, .04]: mean .02333, s^2 = 2.3333e-4; (1/3 + 1/4) s^2 = 1.3611e-4, t = .02333 / .011667 = 2.0
    # and on 2 degrees of freedom the two-sided p of t is 1 - t / sqrt(t^2 + 2) = 1 - 2 / sqrt(6)
    assert corrected_ttest([.80, .82, .84], [.78, .81, .80], 0.25) == pytest.approx(1 - 2 / np.sqrt(6))
    assert corrected_ttest([.8, .8], [.8, .8], 0.25) == 1.0 and corrected_ttest([.9, .9], [.8, .8], 0.25) == 0.0


def _row(head, draws, key="k", ci=(.80, .90)):
    return {"head": head, "status": "ok", "val_accuracy": float(np.mean(draws)), "val_draws": draws,
            "val_ratio": 0.25, "draws_key": key, "accuracy_ci": list(ci)}


def test_paired_rule_uses_the_correction():
    """d = [.01, .03, .00, .02, .04]: a plain paired t-test says p = .047 (below), the corrected one p = .13."""
    best = _row("best", [.90, .92, .90, .91, .93])
    other = _row("other", [.89, .89, .90, .89, .89], ci=(.60, .65))  # its test interval is far below: not used
    apart = _row("apart", [.80, .81, .80, .81, .80], ci=(.85, .95))
    rows = [other, best, apart]
    assert mark_ties(rows) is best
    assert other["versus_best"] == "tie" and other["versus_best_p"] == pytest.approx(0.1324, abs=1e-3)
    assert apart["versus_best"] == "below" and apart["versus_best_p"] < 0.001


def test_rows_on_other_draws_fall_back_to_intervals():
    best = _row("best", [.90, .92, .94])
    other = _row("other", [.80, .81, .80], key="another cache's rows", ci=(.85, .95))
    mark_ties([best, other])
    assert other["versus_best"] == "tie" and "versus_best_p" not in other  # the intervals overlap


# -- one best row everywhere ------------------------------------------------------------------------------------

def test_one_best_row_everywhere(small_cache, tmp_path, monkeypatch, capsys):
    """ridge and logreg tie on validation (1.0 on every draw); they finish in the other order than asked, as
    they did when the live table crowned one head and the report another. All four must name ridge."""
    bench_mod = importlib.import_module("featcache.bench")
    real = bench_mod._run_tasks

    def backwards(todo, *args):  # the heads' real results, the last task's first
        return list(real(todo, *args))[::-1]

    monkeypatch.setattr(bench_mod, "_run_tasks", backwards)
    out = tmp_path / "report"
    rows = featcache.bench(small_cache, ["ridge", "logreg"], out=out, baseline_heads=(), repeats=2,
                           learning_curve=None, leakage=False, progress=True, n_jobs=1)
    assert [r["val_draws"] for r in rows][0] == rows[1]["val_draws"]  # the constructed tie
    live = [line for line in capsys.readouterr().err.splitlines() if " best" in line and "│" in line]
    assert len(live) == 1 and "ridge" in live[0]
    with open(out / "results.csv", newline="") as f:
        assert {r["head"]: r["versus_best"] for r in csv.DictReader(f)} == {"ridge": "best", "logreg": "tie"}
    assert {r["head"]: r["versus_best"] for r in json.loads((out / "results.json").read_text())}["ridge"] == "best"
    assert "the best head (ridge on" in (out / "report.md").read_text()
    assert read_card(out / "best_model")["head"] == "ridge"
