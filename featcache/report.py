"""The benchmark's outputs: a live rich table, results.csv/json, report.md and a self-contained report.html.

Plots are drawn with matplotlib (Agg) and embedded in the HTML as base64
PNGs, so the report is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import numpy as np
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .bench.select import best_row, mark_ties  # the selection rules are the bench's; re-exported here
from .console import console
from .files import atomic_write_bytes, spreadsheet_safe
from .report_targets import keep_target_sections

COLUMNS = ["cache", "backbone", "features", "head", "baseline", "status", "accuracy", "accuracy_ci_low",
           "accuracy_ci_high", "balanced_accuracy", "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "versus_best",
           "versus_best_p", "log_loss", "val_accuracy", "val_accuracy_sd", "repeats", "fit_seconds", "select_seconds", "predict_seconds_per_1000", "peak_memory_mb",
           "n_train", "n_test", "best_params", "params", "note", "error", "cache_key", "rows_key", "settings", "wall_seconds",
           "budget_seconds"]
#: per-row lists kept in results.jsonl (the leakage check reads them) but left out of results.json/csv
BULKY = ("test_predictions",)


def _ci(v) -> str:
    """A 95% interval as ``[84.1, 86.7]`` (percent), or empty."""
    return f"[{100 * v[0]:.1f}, {100 * v[1]:.1f}]" if v else ""


def with_interval(row, key) -> str:
    """A row's metric as ``85.44% [83.9, 86.9]`` (its 95% interval, where it has one), or ``-``."""
    v = row.get(key)
    return _pct(v) + (" " + _ci(row.get(key + "_ci")) if row.get(key + "_ci") else "") if v is not None else "-"


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


class LiveTable:
    """Progress per head while the benchmark runs, as a rich table."""

    def __init__(self, tasks, done_rows, enabled=True):
        self.enabled = enabled
        self.state = {}
        self.order = []
        for t in tasks:
            self.order.append(t.settings)
            self.state[t.settings] = {"features": "pixels" if t.baseline else Path(t.cache).name, "head": t.head,
                                      "status": "queued"}
        for r in done_rows:
            self.finished(r, refresh=False, note="(kept)")
        self._live = None

    def _table(self) -> Table:
        t = Table(title="featcache bench", title_justify="left")
        for c in ("features", "head", "status", "test acc. [95% CI]", "macro-F1 [95% CI]", "vs. best", "fit s"):
            t.add_column(c)
        for key in self.order:
            s = self.state[key]
            style = {"ok": "green", "failed": "red", "timed out": "yellow", "running": "cyan"}.get(
                s["status"].split()[0] if s["status"] != "timed out" else "timed out", "")
            t.add_row(Text(s["features"]), Text(s["head"]), Text(s["status"], style=style), s.get("acc", ""),
                      s.get("f1", ""), s.get("vs", ""), s.get("fit", ""))
        return t

    def summarise(self, rows):
        """Mark the best head and its ties (overlapping intervals) once every row is in."""
        mark_ties(rows)
        for r in rows:
            s = self.state.get(r["settings"])
            if s is not None:
                s["vs"] = r.get("versus_best", "")
        self._refresh()

    def running(self, task):
        self.state[task.settings]["status"] = "running"
        self._refresh()

    def finished(self, row, refresh=True, note=""):
        s = self.state.get(row["settings"])
        if s is None:
            return
        s["status"] = (row.get("status", "?") + (" " + note if note else "")).strip()
        s["acc"] = with_interval(row, "accuracy")
        s["f1"] = with_interval(row, "macro_f1")
        s["fit"] = _num(row.get("fit_seconds"))
        if refresh:
            self._refresh()

    def _refresh(self):
        if self._live is not None:
            self._live.update(self._table())

    def __enter__(self):
        if self.enabled:
            self._live = Live(self._table(), console=console.get(), refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.__exit__(*exc)
            if not self._live.console.is_terminal:  # rich ends the last line only on a terminal
                self._live.console.line()
            self._live = None


def _flat(row):
    out = {}
    for c in COLUMNS:
        v = row.get(c)
        for metric in ("accuracy", "macro_f1"):
            ci = row.get(metric + "_ci")
            if c in (metric + "_ci_low", metric + "_ci_high") and ci:
                v = ci[0] if c.endswith("low") else ci[1]
        out[c] = json.dumps(v) if isinstance(v, (dict, list)) else v
    return out


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files, never a window)."""
    import matplotlib  # heavy: only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, xlabel: str, ylabel: str, title: str) -> bytes:
    """The labels, grid and legend every line and scatter plot here has, then the PNG bytes."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _fig_png(fig)


def plots(rows: list[dict], class_names: list[str] | None, curve: list[dict] | None = None,
          leakage: dict | None = None, thumbs=None) -> dict[str, bytes]:
    """The report's figures as PNG bytes by file name (matplotlib, Agg), one function each."""
    plt = _pyplot()
    ok = [r for r in rows if r.get("status") == "ok"]
    out = {}
    if not ok:
        return out
    groups = sorted({r["features"] for r in ok})
    out["accuracy_vs_fit_time.png"] = _time_figure(plt, ok, groups)
    best = best_row(ok) or max(ok, key=lambda r: r.get("val_accuracy") or 0.0)  # only baseline rows succeeded
    if best.get("confusion"):
        out["confusion_best.png"] = _confusion_figure(plt, best, class_names)
    if len(groups) > 1:
        out["accuracy_per_backbone.png"] = _backbone_figure(plt, ok, groups)
    points = [p for p in (curve or []) if p.get("status") == "ok"]
    if len(points) > 1:
        out["learning_curve.png"] = _curve_figure(plt, points)
    if thumbs:
        out["leakage_pairs.png"] = _leakage_figure(plt, thumbs, leakage)
    return out


def _time_figure(plt, ok: list, groups: list) -> bytes:
    """Test accuracy against the time to select and fit, every head."""
    from matplotlib.ticker import NullFormatter  # heavy: only when a report is rendered

    fig, ax = plt.subplots(figsize=(7.5, 4.8))

    def fit_s(r):
        return max(r.get("fit_seconds") or 0.0, 1e-3)

    def total_s(r):  # the selection (grid sweep) and the final fit
        return max((r.get("fit_seconds") or 0.0) + (r.get("select_seconds") or 0.0), 1e-3)

    for g in groups:
        pts = [r for r in ok if r["features"] == g]
        dots = ax.scatter([total_s(r) for r in pts], [100 * r["accuracy"] for r in pts], label=g, s=42)
        for r in pts:
            if total_s(r) > fit_s(r):
                ax.hlines(100 * r["accuracy"], fit_s(r), total_s(r), colors=dots.get_facecolor()[:1], lw=1.2,
                          alpha=0.6)
            ax.annotate(r["head"], (total_s(r), 100 * r["accuracy"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    return _finish(fig, ax, "selection + final fit time (s, log scale); each line starts at the final fit alone",
                   "test accuracy (%)", "Accuracy against the time to select and fit, every head")


def _confusion_figure(plt, best: dict, class_names) -> bytes:
    """The best head's confusion matrix on the test split, each true class's row normalised."""
    cm = np.asarray(best["confusion"], float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    labels = [class_names[i] if class_names and 0 <= i < len(class_names) else str(i)
              for i in best.get("confusion_labels", range(len(cm)))]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (test) of the best head: {best['head']} on {best['features']}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _fig_png(fig)


def _backbone_figure(plt, ok: list, groups: list) -> bytes:
    """Test accuracy per feature set and head, with 95% intervals as error bars."""
    heads = sorted({r["head"] for r in ok})
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(heads) + 2), 4.5))
    width = 0.8 / len(groups)
    for gi, g in enumerate(groups):
        mine = {r["head"]: r for r in ok if r["features"] == g}
        acc = {h: 100 * r["accuracy"] for h, r in mine.items()}
        xs = np.arange(len(heads)) + gi * width
        # the 95% interval as an error bar, where the row has one
        err = np.array([[100 * (r["accuracy"] - r["accuracy_ci"][0]), 100 * (r["accuracy_ci"][1] - r["accuracy"])]
                        if (r := mine.get(h)) and r.get("accuracy_ci") else [0.0, 0.0] for h in heads]).T
        ax.bar(xs, [acc.get(h, 0) for h in heads], width, label=g, yerr=err, capsize=2,
               error_kw={"lw": 0.8, "alpha": 0.7})
    ax.set_xticks(np.arange(len(heads)) + 0.4 - width / 2, heads, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy per backbone (feature set) and head")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside, never over
    ax.grid(axis="y", alpha=0.3)
    return _fig_png(fig)


def _curve_figure(plt, points: list) -> bytes:
    """The best head's learning curve: test accuracy against the share of rows fitted."""
    from matplotlib.ticker import NullFormatter  # heavy: only when a report is rendered

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [100 * p["train_fraction"] for p in points]
    ax.plot(xs, [100 * p["accuracy"] for p in points], "o-", label="test accuracy")
    cis = [p.get("accuracy_ci") for p in points]
    if all(cis):
        ax.fill_between(xs, [100 * c[0] for c in cis], [100 * c[1] for c in cis], alpha=0.2, label="95% CI")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{x:g}%\n({p['n_train']:,})" for x, p in zip(xs, points)])
    ax.xaxis.set_minor_formatter(NullFormatter())
    return _finish(fig, ax, "share of the train and val rows (rows fitted on)", "test accuracy (%)",
                   f"Learning curve of the best head: {points[-1]['head']} on {points[-1]['features']}")


def shots_figure(rows: list[dict]) -> bytes:
    """bench --shots' plot: test accuracy against k shots a class (log2 axis), a line per head and backbone
    with its ±sd band over the draws, as PNG bytes."""
    fig, ax = _pyplot().subplots(figsize=(6.5, 4.2))
    for features, head in dict.fromkeys((r["features"], r["head"]) for r in rows):
        line = sorted((r for r in rows if r["features"] == features and r["head"] == head), key=lambda r: r["shots"])
        ks, acc = [r["shots"] for r in line], np.array([100 * r["accuracy"] for r in line])
        sd = np.array([100 * r["accuracy_sd"] for r in line])
        (drawn,) = ax.plot(ks, acc, "o-", label=f"{head} on {features}")
        ax.fill_between(ks, acc - sd, acc + sd, alpha=0.2, color=drawn.get_color())
    ks = sorted({r["shots"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    return _finish(fig, ax, "train images a class (k)", "test accuracy (%), mean ± sd over the draws",
                   "Few-shot: accuracy against k")


def _leakage_figure(plt, thumbs, leakage: dict) -> bytes:
    """Test rows beside their nearest training rows."""
    n = len(thumbs)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n + 0.6, 3.0), squeeze=False)
    for j, ((a, b), pair) in enumerate(zip(thumbs, leakage["pairs"])):
        for i, (im, who) in enumerate(((a, "test"), (b, "train"))):
            axes[i][j].imshow(im)
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
            if j == 0:
                axes[i][j].set_ylabel(who)
        axes[0][j].set_title(f"cos {pair['cosine']:.3f}", fontsize=7)
    fig.suptitle("Test rows and their nearest training rows (cached features)", fontsize=9)
    return _fig_png(fig)


def per_class(row: dict, class_names: list[str] | None = None) -> list[dict]:
    """Precision, recall, F1 and support per class, from a row's test confusion matrix.

    Args:
        row: a benchmark row with ``confusion`` and ``confusion_labels``.
        class_names: names for the labels (label i is ``class_names[i]``).

    Returns:
        One dict per class: ``class``, ``precision``, ``recall``, ``f1``, ``support``
        (scikit-learn's definitions, 0 where undefined).

    Examples:
        >>> per_class({"confusion": [[3, 1], [0, 4]], "confusion_labels": [0, 1]}, ["cat", "dog"])[0]
        {'class': 'cat', 'precision': 1.0, 'recall': 0.75, 'f1': 0.8571428571428571, 'support': 4}
    """
    cm = np.asarray(row.get("confusion") or [], float)
    if cm.ndim != 2 or not cm.size:
        return []
    labels = row.get("confusion_labels") or list(range(len(cm)))
    tp = np.diag(cm)
    pred, true = cm.sum(0), cm.sum(1)
    prec = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    rec = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    out = []
    for i, lab in enumerate(labels):
        name = class_names[lab] if class_names and isinstance(lab, int) and 0 <= lab < len(class_names) else str(lab)
        out.append({"class": name, "precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                    "support": int(true[i])})
    return out


#: the row table's columns, in the markdown and HTML reports alike
HEADERS = ["features", "head", "status", "test acc. [95% CI]", "vs. best", "bal. acc.", "macro-F1 [95% CI]",
           "log-loss", "val acc.", "select s", "fit s", "predict s/1k", "peak MB", "chosen params", "note / error"]


def _cells(r, width=160) -> list[str]:
    return [r["features"], r["head"], r.get("status", "?"), with_interval(r, "accuracy"), r.get("versus_best") or "",
            _pct(r.get("balanced_accuracy")), with_interval(r, "macro_f1"), _num(r.get("log_loss"), "{:.3f}"),
            _pct(r.get("val_accuracy")) + (f" ± {100 * r['val_accuracy_sd']:.1f}" if r.get("val_accuracy_sd")
                                           is not None else ""), _num(r.get("select_seconds")), _num(r.get("fit_seconds")),
            _num(r.get("predict_seconds_per_1000"), "{:.3f}"), _num(r.get("peak_memory_mb"), "{:.0f}"),
            json.dumps(r.get("best_params") or {}), (r.get("note") or r.get("error") or "")[:width]]


#: what a table cell or a line of report.md must not hold as is: it would end the cell, the row or the line,
#: open a code span, or reach a Markdown renderer as HTML
_MD_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "`": "\\`",
                             "\r": " ", "\n": " ", "\t": " "})


def md_text(value) -> str:
    """``value`` as text that stays in its Markdown table cell or line and renders as the text itself."""
    return str(value).translate(_MD_ESCAPES)


def _md(headers, body) -> list[str]:
    lines = ["| " + " | ".join(md_text(h) for h in headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(md_text(c) for c in cells) + " |" for cells in body]
    return lines


def _html_table(headers, body, classes=None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
    rows = "".join(
        (f"<tr class='{html.escape(classes[i])}'>" if classes else "<tr>")
        + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>" for i, cells in enumerate(body))
    return f"<table>{head}\n{rows}</table>"


def _markdown_table(rows):
    return "\n".join(_md(HEADERS, [_cells(r) for r in rows]))


def _curve_body(curve):
    return [[f"{100 * p['train_fraction']:g}%", "-" if p.get("n_train") is None else f"{p['n_train']:,}",
             p.get("status") or "?", with_interval(p, "accuracy"), _pct(p.get("macro_f1")), (p.get("error") or "")[:120]]
            for p in curve]


CURVE_HEADERS = ["share of train+val", "rows fitted", "status", "test acc. [95% CI]", "macro-F1", "error"]
CLASS_HEADERS = ["class", "precision", "recall", "F1", "support"]


def _class_body(classes):
    return [[c["class"], _pct(c["precision"]), _pct(c["recall"]), _pct(c["f1"]), c["support"]] for c in classes]


def _leakage_summary(leakage, best) -> tuple[str, dict | None]:
    """One paragraph on the leakage check, and the best head's accuracy with and without the suspects."""
    from .leakage import accuracy_with_and_without

    if not leakage:
        return "", None
    n, total = leakage["n_leaked"], leakage["n_test"]
    text = (f"Leakage check: {n:,} of {total:,} test rows ({100 * n / max(total, 1):.2f}%) have a train or val row "
            f"with cosine similarity >= {leakage['threshold']:g} on the cached features.")
    acc = None
    preds = best.get("test_predictions") if best else None
    if best and preds is not None and len(preds) == total:
        from .store import open_cache
        from .train import split_masks

        try:
            cache = open_cache(best["cache"], target=best.get("target") or None)
            y = cache.labels()[np.flatnonzero(split_masks(cache)["test"])]
            acc = accuracy_with_and_without(y, preds, leakage["leaked"])
        except Exception:  # noqa: BLE001 - the count stands without the accuracies
            acc = None
    if acc:
        text += (f" The best head ({best['head']}) scores {_pct(acc['all'])} on every test row and "
                 f"{_pct(acc['without'])} without them" + (f" ({_pct(acc['leaked'])} on them)."
                                                          if acc["leaked"] is not None else "."))
    return text, acc


PROTOCOL = ("Hyper-parameters chosen on the validation split (or by K-fold CV inside train); the chosen setting "
            "refit on train+val; the test split touched once. Keras heads early-stop on the validation split. "
            "The best head is picked by validation accuracy, never by test accuracy. Intervals are 95% "
            "percentile bootstraps over the test rows (1,000 resamples); 'tie' marks a head whose accuracy "
            "interval overlaps the best head's. With repeats (R seeded re-draws of train/val inside train+val), "
            "val acc. is the mean over the draws, the best has the highest mean, and 'tie' means a paired, "
            "corrected resampled t-test (Nadeau and Bengio) on the same draws finds no difference (p >= 0.05). "
            "Peak MB is each head's own: the peak resident memory of its "
            "process while it ran, above what the process held once its libraries were imported.")


def _write_results(out: Path, rows: list[dict]) -> None:
    """results.json (without the bulky per-row arrays) and results.csv (spreadsheet-safe cells)."""
    slim = [{k: v for k, v in r.items() if k not in BULKY} for r in rows]
    atomic_write_bytes(out / "results.json", (json.dumps(slim, indent=2, default=str) + "\n").encode())
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: spreadsheet_safe(v) for k, v in _flat(r).items()})
    atomic_write_bytes(out / "results.csv", table.getvalue().encode("utf-8", "surrogateescape"))


def _report_class_names(rows: list[dict]):
    """The class names of the first row's cache, or None when it cannot be opened."""
    try:
        from .store import open_cache

        return open_cache(rows[0]["cache"], target=rows[0].get("target") or None).class_names if rows else None
    except Exception:  # noqa: BLE001 - names are decoration
        return None


def _leakage_thumbs(leakage: dict | None):
    """Thumbnails of the first near-duplicate pairs, or None when there are none or the source is gone."""
    if not (leakage and leakage.get("pairs")):
        return None
    from .leakage import pair_thumbnails
    from .store import open_cache

    try:
        return pair_thumbnails(open_cache(leakage["cache"]), leakage["pairs"][:12])
    except Exception:  # noqa: BLE001 - thumbnails are decoration
        return None


def _write_leakage(out: Path, leakage: dict | None, best: dict | None, thumbs) -> str:
    """leakage.json where a check ran; returns the leakage summary the reports show."""
    leak_text, leak_acc = _leakage_summary(leakage, best)
    if leakage:
        shown = {k: v for k, v in leakage.items() if k != "leaked"}
        atomic_write_bytes(out / "leakage.json", (json.dumps({**shown, "best_head_accuracy": leak_acc},
                                                             indent=2, default=str) + "\n").encode())
        if leakage.get("pairs") and thumbs is None:
            leak_text += " (No thumbnails: the cache's source cannot be read back.)"
    return leak_text


def _counts_line(rows: list[dict]) -> str:
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "failed", "timed out")}
    return f"{len(rows)} rows: {counts['ok']} ok, {counts['failed']} failed, {counts['timed out']} timed out."


def _markdown_report(rows, best, best_dir, classes, curve, leakage, leak_text, images) -> str:
    """report.md: the protocol, the table, fallbacks, per class, learning curve, leakage, the figures."""
    notes = [f"{r['head']} on {r['features']}: {r['note']}" for r in rows if r.get("note")]
    md = ["# featcache benchmark", "", PROTOCOL, "", _counts_line(rows), ""]
    if best_dir is not None:
        md += [f"Best head saved to {md_text(best_dir)} (usable with `featcache predict`).", ""]
    md += [_markdown_table(rows), ""]
    if notes:
        md += ["Memory-aware fallbacks:", ""] + [f"* {md_text(n)}" for n in notes] + [""]
    if classes:
        md += [f"## Per class: the best head ({md_text(best['head'])} on {md_text(best['features'])}), test split",
               ""]
        md += _md(CLASS_HEADERS, _class_body(classes)) + [""]
    if curve:
        md += ["## Learning curve of the best head", ""] + _md(CURVE_HEADERS, _curve_body(curve)) + [""]
    if leak_text:
        md += ["## Leakage check", "", md_text(leak_text), ""]
        if leakage.get("pairs"):
            md += _md(["test id", "nearest train/val id", "cosine"],
                      [[p["test_id"], p["train_id"], f"{p['cosine']:.4f}"] for p in leakage["pairs"][:20]]) + [""]
    for name in images:
        md += [f"![{name}]({name})", ""]
    return "\n".join(md)


def _figure(images: dict, name: str, alt: str) -> str:
    """An embedded figure, or nothing where the plot was not made."""
    if name not in images:
        return ""
    data = base64.b64encode(images[name]).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


#: the style of every report page
_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
          "font-size:13px}\ntd,th{border:1px solid #ccc;padding:3px 6px;text-align:left}tr.failed{background:#fdd}"
          "tr.timed-out{background:#ffd}\nfigure{display:inline-block;margin:1em}img{max-width:560px}")


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style></head><body>\n{body}</body></html>\n")


def shots_page(title: str, intro: str, headers: list[str], body: list[list], png: bytes, alt: str) -> str:
    """bench --shots' report.html: the intro, the plot (embedded) and the table of means ± sd."""
    return _page(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>\n"
                        f"{_figure({'plot': png}, 'plot', alt)}\n{_html_table(headers, body)}\n")


def _html_report(rows, best, best_dir, classes, curve, leak_text, images) -> str:
    """report.html: what report.md says, with the figures embedded."""
    def img(name, alt):
        return _figure(images, name, alt)

    main = _html_table(HEADERS, [_cells(r, 200) for r in rows],
                       [r.get("status", "").replace(" ", "-") for r in rows])
    extra = ""
    if classes:
        extra += (f"<h2>Per class: the best head ({html.escape(best['head'])} on {html.escape(best['features'])}), "
                  f"test split</h2>" + _html_table(CLASS_HEADERS, _class_body(classes)))
    if curve:
        extra += ("<h2>Learning curve of the best head</h2>" + _html_table(CURVE_HEADERS, _curve_body(curve))
                  + img("learning_curve.png", "Learning curve of the best head"))
    if leak_text:
        extra += f"<h2>Leakage check</h2><p>{html.escape(leak_text)}</p>" + img(
            "leakage_pairs.png", "Near-duplicate pairs: test row above, its nearest train/val row below")
    best_line = f"<p>Best head saved to <code>{html.escape(str(best_dir))}</code>.</p>" if best_dir else ""
    return _page("featcache benchmark", f"""<h1>featcache benchmark</h1><p>{html.escape(PROTOCOL)}</p>
<p>{_counts_line(rows)}</p>{best_line}
<div>{img('accuracy_vs_fit_time.png', 'Accuracy against the time to select and fit, every head')}
{img('confusion_best.png', 'Confusion matrix of the best head (test split)')}
{img('accuracy_per_backbone.png', 'Accuracy per backbone and head')}</div>
{main}
{extra}""")


def write_report(out: Path, rows: list[dict], best_dir: Path | None = None, curve: list[dict] | None = None,
                 leakage: dict | None = None) -> None:
    """Write results.json/csv, report.md and report.html (figures embedded) into ``out``.

    Args:
        out: the report directory.
        rows: the benchmark rows (``versus_best`` is set on them).
        best_dir: where the best head was saved, if it was.
        curve: the best head's learning-curve points (``bench``'s ``learning_curve``).
        leakage: :func:`featcache.leakage.near_duplicates` on the best head's cache.

    Returns:
        None.

    Examples:
        >>> write_report(Path("report"), rows)  # doctest: +SKIP
    """
    out = Path(out)
    best = mark_ties(rows)
    _write_results(out, rows)
    class_names = _report_class_names(rows)
    thumbs = _leakage_thumbs(leakage)
    leak_text = _write_leakage(out, leakage, best, thumbs)
    images = plots(rows, class_names, curve=curve, leakage=leakage, thumbs=thumbs)
    for name, data in images.items():
        atomic_write_bytes(out / name, data)
    classes = per_class(best, class_names) if best else []
    md = _markdown_report(rows, best, best_dir, classes, curve, leakage, leak_text, images)
    page = _html_report(rows, best, best_dir, classes, curve, leak_text, images)
    md, page = keep_target_sections(out, md, page)  # a targets run's section outlives a later label bench
    atomic_write_bytes(out / "report.md", md.encode("utf-8", "surrogateescape"))
    atomic_write_bytes(out / "report.html", page.encode("utf-8", "surrogateescape"))
