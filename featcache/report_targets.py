"""The report's section per regression or multi-label target: its rows and plots of its best head (test split).

Regression: predicted against true with the identity line, residuals against
true, and the mean absolute error per decile of the true value. Multi-label:
average precision per label (bars, each label's test prevalence marked: the
AP of guessing) and the micro-averaged precision-recall curve. The section
sits between two markers in report.md and report.html, so a later bench of
``label`` keeps it (:func:`keep_target_sections`) and a later targets run
replaces it.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import numpy as np

START, END = "<!-- featcache:targets -->", "<!-- /featcache:targets -->"
_SECTION = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
#: the metrics each kind's table shows (the same columns as target_results.csv)
SHOWN = {"regression": ("r2", "mae", "rmse", "spearman"),
         "multilabel": ("map", "micro_f1", "macro_f1", "subset_accuracy"),
         "classification": ("accuracy", "macro_f1")}


#: each figure's file name is target_NAME_PLOT.png, in this order
PLOTS = ("predicted", "residuals", "deciles", "ap", "pr")


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _columns(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1)


def regression_plots(plt, name: str, y: np.ndarray, pred: np.ndarray, outputs: list[str]) -> dict[str, bytes]:
    """Predicted against true (identity line), residuals against true, MAE per decile of the true value."""
    y, pred = _columns(y), _columns(pred)
    figs = {}
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for k in range(y.shape[1]):
        ax.scatter(y[:, k], pred[:, k], s=6, alpha=0.5, label=outputs[k] if k < len(outputs) else str(k))
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    ax.set(xlabel="true", ylabel="predicted", title=f"{name}: predicted against true")
    ax.legend(fontsize=7)
    figs[f"target_{name}_predicted.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for k in range(y.shape[1]):
        ax.scatter(y[:, k], pred[:, k] - y[:, k], s=6, alpha=0.5)
    ax.axhline(0, color="k", lw=1, ls="--")
    ax.set(xlabel="true", ylabel="predicted - true", title=f"{name}: residuals")
    figs[f"target_{name}_residuals.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    t, err = y.mean(axis=1), np.abs(pred - y).mean(axis=1)
    order = np.argsort(t, kind="stable")
    parts = [p for p in np.array_split(order, 10) if len(p)]
    ax.bar(range(1, len(parts) + 1), [err[p].mean() for p in parts], color="#4c72b0")
    ax.set(xlabel="decile of the true value (1: lowest)", ylabel="mean absolute error",
           title=f"{name}: error by decile")
    figs[f"target_{name}_deciles.png"] = _png(fig)
    return figs


def multilabel_plots(plt, name: str, y: np.ndarray, scores: np.ndarray, labels: list[str]) -> dict[str, bytes]:
    """AP per label (bars; prevalence marked) and the micro-averaged precision-recall curve."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    has = y.sum(axis=0) > 0
    ap = [average_precision_score(y[:, k], scores[:, k]) if has[k] else np.nan for k in range(y.shape[1])]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.35 * len(labels)), 4))
    ax.bar(range(len(labels)), ap, color="#4c72b0", label="average precision")
    ax.scatter(range(len(labels)), y.mean(axis=0), color="k", marker="_", s=200, label="prevalence (chance)")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set(ylim=(0, 1.02), ylabel="AP (test)", title=f"{name}: average precision per label")
    ax.legend(fontsize=7)
    figs = {f"target_{name}_ap.png": _png(fig)}
    precision, recall, _ = precision_recall_curve(y.ravel(), scores.ravel())
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(recall, precision, lw=1.5)
    ax.axhline(y.mean(), color="k", lw=1, ls="--", label="chance")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{name}: precision-recall (micro)")
    ax.legend(fontsize=7)
    figs[f"target_{name}_pr.png"] = _png(fig)
    return figs


def target_plots(rows: list[dict]) -> dict[str, dict[str, bytes]]:
    """Each target's figures (by file name) from its best row's test predictions."""
    import matplotlib  # heavy: only when a report is rendered

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for r in rows:
        if not r.get("best") or r.get("test") is None or not len(r["test"][0]) or r["kind"] == "classification":
            continue
        y, pred = r["test"]
        draw = regression_plots if r["kind"] == "regression" else multilabel_plots
        out[r["target"]] = draw(plt, r["target"], np.asarray(y), np.asarray(pred), list(r.get("names") or []))
    return out


def _cell(r: dict, k: str) -> str:
    if r.get(k) is None:
        return "-"
    lo, hi = r.get(f"{k}_lo"), r.get(f"{k}_hi")
    return f"{r[k]:.3f}" if lo is None else f"{r[k]:.3f} [{lo:.3f}, {hi:.3f}]"


def _table(own: list[dict]) -> tuple[list[str], list[list[str]]]:
    kind = own[0]["kind"]
    body = [[r["head"] + (" (best)" if r.get("best") else ""), r.get("features", "cache"),
             r.get("status", ""), *[_cell(r, k) for k in SHOWN[kind]]] for r in own]
    return ["head", "features", "status", *SHOWN[kind]], body


def notes(own: list[dict]) -> list[str]:
    """The lines under a target's table: its best head's learning curve and the leakage check, where measured."""
    best = next((r for r in own if r.get("best")), None)
    if best is None:
        return []
    metric = {"regression": "r2", "multilabel": "map", "classification": "accuracy"}[best["kind"]]
    lines = []
    if best.get("curve"):
        points = ", ".join(f"{p['train_fraction']:.0%} ({p['n_train']:,} rows) {p[metric]:.3f}"
                           for p in best["curve"] if p.get(metric) is not None)
        lines.append(f"Learning curve of {best['head']} (test {metric} by share of the train and val rows): {points}.")
    if best.get("kind") == "classification" and best.get("report"):
        lines.append(f"Full report of every head: {best['report']}/report.html.")
    leak = best.get("leakage")
    if leak:
        text = (f"Leakage check: {leak['n_leaked']} of {leak['n_test']} test rows nearly duplicate a train or val "
                "row (cosine >= 0.98 on the features)")
        if leak.get(f"{metric}_without") is not None:
            text += f"; {best['head']}'s test {metric} without them: {leak[f'{metric}_without']:.3f}"
        lines.append(text + ".")
    return lines


def _by_target(rows: list[dict]) -> dict[str, list[dict]]:
    out = {}
    for r in rows:
        out.setdefault(r["target"], []).append(r)
    return out


def sections(rows: list[dict], figures: dict) -> tuple[str, str]:
    """The marked markdown and HTML sections: one per target, its table (test, 95% intervals) and figures."""
    md, page = [START, "", "# Targets", ""], [START, "<h1>Targets</h1>"]
    for name, own in _by_target(rows).items():
        headers, body = _table(own)
        md += [f"## {name} ({own[0]['kind']}), test split", "", "| " + " | ".join(headers) + " |",
               "|---" * len(headers) + "|", *["| " + " | ".join(c.replace("|", "/") for c in b) + " |" for b in body],
               "", *[f"{n}\n" for n in notes(own)], *[f"![{f}]({f})" for f in figures.get(name, {})], ""]
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in b) + "</tr>" for b in body)
        page += [f"<h2>{html.escape(name)} ({own[0]['kind']}), test split</h2><table><tr>"
                 + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + f"</tr>{cells}</table>"
                 + "".join(f"<p>{html.escape(n)}</p>" for n in notes(own)) + "<div>"]
        for f, data in figures.get(name, {}).items():
            page.append(f'<figure><img alt="{html.escape(f)}" src="data:image/png;base64,'
                        f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(f)}</figcaption></figure>')
        page.append("</div>")
    return "\n".join(md + [END]), "\n".join(page + [END])


def _merge(text: str, section: str, closing: str | None) -> str:
    """``text`` with its targets section replaced by ``section`` (placed before ``closing``, else at the end)."""
    if _SECTION.search(text):
        return _SECTION.sub(lambda _: section, text, count=1)
    if closing and closing in text:
        i = text.rindex(closing)
        return text[:i] + section + "\n" + text[i:]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def _read(path: Path) -> str | None:
    try:
        return path.read_text("utf-8", "surrogateescape") if path.is_file() and not path.is_symlink() else None
    except OSError:
        return None


def write_target_report(out: Path, rows: list[dict]) -> None:
    """The figures into ``out`` and the targets section into report.md and report.html (made if absent)."""
    from .files import atomic_write_bytes

    out = Path(out)
    figures = target_plots(rows)
    for files in figures.values():
        for f, data in files.items():
            atomic_write_bytes(out / f, data)
    for name in dict.fromkeys(r["target"] for r in rows if r["target"] not in figures):  # kept rows: kept figures
        files = [out / f"target_{name}_{p}.png" for p in PLOTS]
        figures[name] = {f.name: f.read_bytes() for f in files if f.is_file() and not f.is_symlink()}
    md, page = sections(rows, figures)
    old_md = _read(out / "report.md") or "# featcache benchmark\n"
    old_html = _read(out / "report.html") or ('<!doctype html><html><head><meta charset="utf-8"><title>featcache '
                                              'benchmark</title></head><body></body></html>\n')
    atomic_write_bytes(out / "report.md", _merge(old_md, md, None).encode("utf-8", "surrogateescape"))
    atomic_write_bytes(out / "report.html", _merge(old_html, page, "</body>").encode("utf-8", "surrogateescape"))


def keep_target_sections(out: Path, md: str, page: str) -> tuple[str, str]:
    """report.py's hook: a new report.md/html keeps the targets section its predecessor in ``out`` had."""
    found = [_SECTION.search(_read(Path(out) / f) or "") for f in ("report.md", "report.html")]
    if found[0]:
        md = _merge(md, found[0].group(0), None)
    if found[1]:
        page = _merge(page, found[1].group(0), "</body>")
    return md, page
