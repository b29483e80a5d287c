"""featcache/report.py: results.csv/json, report.md, report.html and each figure, checked against the rows drawn."""

import base64
import csv
import io
import json
import re
from html.parser import HTMLParser

import matplotlib
import matplotlib.collections
import matplotlib.container
import numpy as np
import pytest
from PIL import Image

from featcache import report

#: figures made while a test runs, in the order made (matplotlib's own ``figure.hooks`` calls ``_keep``)
MADE = []


def _keep(fig):
    MADE.append(fig)


def _figures(*args, **kwargs):
    """``report.plots(...)`` and each figure it drew, by file name: {name: (png bytes, matplotlib Figure)}."""
    MADE.clear()
    with matplotlib.rc_context({"figure.hooks": [f"{__name__}:_keep"]}):
        images = report.plots(*args, **kwargs)
    assert len(MADE) == len(images)  # one figure each, made in the order they are returned
    return {name: (png, fig) for (name, png), fig in zip(images.items(), MADE)}


def _rows():
    """Known rows: two heads on one cache, the pixel baseline, a failed head; logreg is best by val accuracy."""
    return [
        {"cache": "/nowhere/a", "features": "cacheA", "head": "logreg", "status": "ok", "baseline": False,
         "accuracy": 0.8, "accuracy_ci": [0.75, 0.85], "macro_f1": 0.79, "val_accuracy": 0.82, "fit_seconds": 0.5,
         "select_seconds": 1.5, "best_params": {"C": 0.1}, "settings": "s1",
         "confusion": [[8, 2, 0], [1, 7, 2], [0, 0, 10]], "confusion_labels": [0, 1, 2]},
        {"cache": "/nowhere/a", "features": "cacheA", "head": "lda", "status": "ok", "baseline": False,
         "accuracy": 0.7, "accuracy_ci": [0.6, 0.8], "macro_f1": 0.69, "val_accuracy": 0.7, "fit_seconds": 0.2,
         "select_seconds": 0.0, "settings": "s2", "confusion": [[7, 3, 0], [2, 6, 2], [0, 2, 8]],
         "confusion_labels": [0, 1, 2]},
        {"cache": "/nowhere/a", "features": "pixels 16x16", "head": "logreg", "status": "ok", "baseline": True,
         "accuracy": 0.4, "val_accuracy": 0.45, "fit_seconds": 0.1, "select_seconds": 0.3, "settings": "s3"},
        {"cache": "/nowhere/a", "features": "cacheA", "head": "knn", "status": "failed", "baseline": False,
         "error": "n_neighbors=100000 > n_samples", "settings": "s4"},
    ]


CURVE = [{"train_fraction": f, "n_train": n, "accuracy": a, "accuracy_ci": [a - 0.1, a + 0.05], "status": "ok",
          "head": "logreg", "features": "cacheA"} for f, n, a in ((0.1, 10, 0.5), (0.5, 50, 0.7), (1.0, 100, 0.8))]
NAMES = ["ant", "bee", "cat"]


def test_each_figure_draws_the_rows_it_is_given():
    thumbs = [(np.full((8, 8, 3), 10, np.uint8), np.full((8, 8, 3), 200, np.uint8))]
    leakage = {"pairs": [{"cosine": 0.99912, "test_id": "t", "train_id": "u"}]}
    curve = CURVE + [{"train_fraction": 0.25, "status": "failed", "head": "logreg", "features": "cacheA"}]
    figs = _figures(_rows(), NAMES, curve=curve, leakage=leakage, thumbs=thumbs)
    assert list(figs) == ["accuracy_vs_fit_time.png", "confusion_best.png", "accuracy_per_backbone.png",
                          "learning_curve.png", "leakage_pairs.png"]
    for png, fig in figs.values():  # each PNG is its figure, drawn at the report's 110 dpi
        im = Image.open(io.BytesIO(png))
        assert im.format == "PNG" and im.width > 300 and im.height > 200
        assert np.asarray(im.convert("L")).std() > 10

    # accuracy against time: one dot per successful row at (select + fit seconds, test accuracy), grouped
    ax = figs["accuracy_vs_fit_time.png"][1].axes[0]
    assert ax.get_title() == "Accuracy against the time to select and fit, every head" and ax.get_xscale() == "log"
    dots = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
    assert [d.get_label() for d in dots] == ["cacheA", "pixels 16x16"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cacheA", "pixels 16x16"]
    np.testing.assert_allclose(dots[0].get_offsets(), [[2.0, 80.0], [0.2, 70.0]])
    np.testing.assert_allclose(dots[1].get_offsets(), [[0.4, 40.0]])
    assert [t.get_text() for t in ax.texts] == ["logreg", "lda", "logreg"]  # the failed knn is not drawn
    lines = [c for c in ax.collections if isinstance(c, matplotlib.collections.LineCollection)]
    segments = [np.asarray(s).tolist() for c in lines for s in c.get_segments()]  # final fit alone -> with selection
    np.testing.assert_allclose(segments, [[[0.5, 80.0], [2.0, 80.0]], [[0.1, 40.0], [0.4, 40.0]]])

    # the confusion matrix of the best head by validation accuracy, each true class's row normalised
    ax = figs["confusion_best.png"][1].axes[0]
    assert ax.get_title() == "Confusion matrix (test) of the best head: logreg on cacheA"
    cm = np.array(_rows()[0]["confusion"], float)
    np.testing.assert_allclose(ax.images[0].get_array(), cm / cm.sum(1, keepdims=True))
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES == [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(int(v) for v in cm.ravel() if v)

    # accuracy per feature set: a bar per (feature set, head), heads sorted, a missing pair at 0, CIs as error bars
    ax = figs["accuracy_per_backbone.png"][1].axes[0]
    assert ax.get_title() == "Accuracy per backbone (feature set) and head"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["lda", "logreg"]
    bars = [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)]
    assert [b.get_label() for b in bars] == ["cacheA", "pixels 16x16"]
    np.testing.assert_allclose([p.get_height() for p in bars[0]], [70.0, 80.0])
    np.testing.assert_allclose([p.get_height() for p in bars[1]], [0.0, 40.0])
    whiskers = [[seg[0][1], seg[1][1]] for seg in bars[0].errorbar.lines[2][0].get_segments()]
    np.testing.assert_allclose(whiskers, [[60.0, 80.0], [75.0, 85.0]])

    # the learning curve: the successful points only, at their share of rows, with the interval filled
    ax = figs["learning_curve.png"][1].axes[0]
    assert ax.get_title() == "Learning curve of the best head: logreg on cacheA"
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_xdata(), [10.0, 50.0, 100.0])
    np.testing.assert_allclose(line.get_ydata(), [50.0, 70.0, 80.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10%\n(10)", "50%\n(50)", "100%\n(100)"]
    (band,) = ax.collections
    np.testing.assert_allclose(band.get_paths()[0].vertices[:, 1].min(), 40.0)
    np.testing.assert_allclose(band.get_paths()[0].vertices[:, 1].max(), 85.0)

    # the leakage pairs: each test thumbnail above its nearest training row's, titled with their cosine
    axes = figs["leakage_pairs.png"][1].axes
    assert len(axes) == 2 and axes[0].get_title() == "cos 0.999"
    for a, expected in zip(axes, thumbs[0]):
        np.testing.assert_array_equal(a.images[0].get_array(), expected)
    assert [a.get_ylabel() for a in axes] == ["test", "train"]


def test_figures_are_left_out_where_there_is_nothing_to_draw():
    rows = _rows()
    assert _figures([rows[3]], NAMES) == {}  # only a failure: no figure at all
    one_cache = [r for r in rows if r["features"] == "cacheA"]
    without_confusion = [{k: v for k, v in r.items() if k != "confusion"} for r in one_cache]
    assert list(_figures(without_confusion, NAMES, curve=CURVE[:1])) == ["accuracy_vs_fit_time.png"]
    # without names the confusion matrix is labelled by class index
    figs = _figures(one_cache, None)
    assert list(figs) == ["accuracy_vs_fit_time.png", "confusion_best.png"]
    assert [t.get_text() for t in figs["confusion_best.png"][1].axes[0].get_xticklabels()] == ["0", "1", "2"]


class _Page(HTMLParser):
    """report.html as a browser reads it: tags must close in order; figures and table rows are collected."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open, self.images, self.tables, self.row_classes = [], [], [], []
        self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag not in self.VOID:
            self.open.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
            self.row_classes.append(attrs.get("class"))
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()
        if tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self.tables[-1].append(self._row)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_report_html_embeds_each_figure_and_shows_every_row(tmp_path):
    """What the report shows in a browser: every figure written, embedded as the same PNG, and every row."""
    rows = _rows()
    report.write_report(tmp_path, rows, best_dir=tmp_path / "best_model", curve=CURVE)
    page = _Page()
    page.feed((tmp_path / "report.html").read_text())
    page.close()
    assert page.open == []  # every tag closed: nothing of the page is swallowed
    written = {p.name: p.read_bytes() for p in tmp_path.glob("*.png")}
    assert set(written) == {"accuracy_vs_fit_time.png", "confusion_best.png", "accuracy_per_backbone.png",
                            "learning_curve.png"}
    embedded = {}
    for img in page.images:
        data = re.fullmatch(r"data:image/png;base64,([A-Za-z0-9+/=]+)", img["src"]).group(1)
        embedded[img["alt"]] = base64.b64decode(data)
        Image.open(io.BytesIO(embedded[img["alt"]])).load()  # a whole PNG a browser can decode
    shown = [name for data in embedded.values() for name, png in written.items() if png == data]
    assert sorted(shown) == sorted(written) and len(embedded) == len(written)  # each figure once, byte for byte
    assert embedded["Confusion matrix of the best head (test split)"] == written["confusion_best.png"]
    assert embedded["Learning curve of the best head"] == written["learning_curve.png"]

    main, classes, curve = page.tables
    assert main[0] == report.HEADERS
    assert [r[:3] for r in main[1:]] == [[r["features"], r["head"], r["status"]] for r in rows]
    assert main[1][3] == "80.00% [75.0, 85.0]" and main[1][4] == "best" and main[2][4] == "tie"
    assert main[4][-1] == rows[3]["error"]  # the failure's reason is on its row
    assert page.row_classes[1:5] == ["ok", "ok", "ok", "failed"]  # the failed row is styled as failed
    assert [c[0] for c in classes[1:]] == ["0", "1", "2"]  # per class of the best head: no names to read back
    assert [c[4] for c in classes[1:]] == ["10", "10", "10"]  # support: each true class's row of the confusion
    assert [c[0] for c in curve[1:]] == ["10%", "50%", "100%"]
    md = (tmp_path / "report.md").read_text()
    for name in written:  # report.md shows the same figures, beside it
        assert f"![{name}]({name})" in md
    assert "4 rows: 3 ok, 1 failed, 0 timed out." in md and f"Best head saved to {tmp_path / 'best_model'}" in md


@pytest.mark.slow
def test_rows_carry_intervals_in_csv_json_and_report_with_ties_marked(bench_rows):
    out, rows = bench_rows
    for r in rows.values():
        assert r["status"] == "ok", r
        lo, hi = r["accuracy_ci"]
        assert lo <= r["accuracy"] <= hi and r["macro_f1_ci"][0] <= r["macro_f1"] <= r["macro_f1_ci"][1]
    with open(out / "results.csv", newline="") as f:
        table = {r["head"]: r for r in csv.DictReader(f)}
    for head, r in rows.items():
        assert float(table[head]["accuracy_ci_low"]) == pytest.approx(r["accuracy_ci"][0])
        assert float(table[head]["macro_f1_ci_high"]) == pytest.approx(r["macro_f1_ci"][1])
    saved = {r["head"]: r for r in json.loads((out / "results.json").read_text())}
    assert [table[h]["versus_best"] for h in rows].count("best") == 1
    for head, r in saved.items():
        assert r["accuracy_ci"] == rows[head]["accuracy_ci"]
        assert "test_predictions" not in r  # kept in results.jsonl only
    best = next(r for r in saved.values() if r["versus_best"] == "best")
    for r in saved.values():  # a tie is exactly an overlap with the best head's interval
        if r is not best:
            overlap = r["accuracy_ci"][0] <= best["accuracy_ci"][1] and best["accuracy_ci"][0] <= r["accuracy_ci"][1]
            assert r["versus_best"] == ("tie" if overlap else ("below" if r["accuracy"] < best["accuracy"] else "above"))
    md = (out / "report.md").read_text()
    assert "test acc. [95% CI]" in md and "vs. best" in md and "select s" in md
    lo, hi = rows["logreg"]["accuracy_ci"]
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in md and "[95% CI]" in (out / "report.html").read_text()


@pytest.mark.slow
def test_report_has_per_class_table_and_learning_curve_of_the_best_head(bench_rows):
    out, rows = bench_rows
    md = (out / "report.md").read_text()
    assert "## Per class: the best head" in md and "| precision | recall | F1 | support |" in md
    curve = md.split("## Learning curve of the best head")[1]
    for share in ("| 10% |", "| 25% |", "| 50% |", "| 100% |"):
        assert share in curve
    assert (out / "learning_curve.png").is_file()
    lines = [json.loads(x) for x in (out / "learning_curve.jsonl").read_text().splitlines()]
    points = sorted(r["n_train"] for r in lines if r.get("train_fraction"))
    assert len(points) == 3 and points[0] < points[1] < points[2]  # fewer rows at smaller shares
