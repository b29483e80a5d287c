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

from rich.live import Live
from rich.table import Table
from rich.text import Text

from .console import console
from .files import atomic_write_bytes, spreadsheet_safe

COLUMNS = ["cache", "backbone", "features", "head", "baseline", "status", "accuracy", "balanced_accuracy", "macro_f1",
           "log_loss", "val_accuracy", "fit_seconds", "select_seconds", "predict_seconds_per_1000", "peak_memory_mb",
           "n_train", "n_test", "best_params", "params", "note", "error", "cache_key", "settings", "wall_seconds"]


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
        for c in ("features", "head", "status", "test acc.", "macro-F1", "fit s"):
            t.add_column(c)
        for key in self.order:
            s = self.state[key]
            style = {"ok": "green", "failed": "red", "timed out": "yellow", "running": "cyan"}.get(
                s["status"].split()[0] if s["status"] != "timed out" else "timed out", "")
            t.add_row(Text(s["features"]), Text(s["head"]), Text(s["status"], style=style), s.get("acc", ""),
                      s.get("f1", ""), s.get("fit", ""))
        return t

    def running(self, task):
        self.state[task.settings]["status"] = "running"
        self._refresh()

    def finished(self, row, refresh=True, note=""):
        s = self.state.get(row["settings"])
        if s is None:
            return
        s["status"] = (row.get("status", "?") + (" " + note if note else "")).strip()
        s["acc"] = _pct(row.get("accuracy"))
        s["f1"] = _pct(row.get("macro_f1"))
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
            self._live = None


def _flat(row):
    out = {}
    for c in COLUMNS:
        v = row.get(c)
        out[c] = json.dumps(v) if isinstance(v, (dict, list)) else v
    return out


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plots(rows: list[dict], class_names: list[str] | None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    out = {}
    if not ok:
        return out
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    groups = sorted({r["features"] for r in ok})
    for g in groups:
        pts = [r for r in ok if r["features"] == g]
        ax.scatter([max(r["fit_seconds"], 1e-3) for r in pts], [100 * r["accuracy"] for r in pts], label=g, s=42)
        for r in pts:
            ax.annotate(r["head"], (max(r["fit_seconds"], 1e-3), 100 * r["accuracy"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("fit time (s, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against fit time, every head")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out["accuracy_vs_fit_time.png"] = _fig_png(fig)

    best = best_row(ok) or max(ok, key=lambda r: r.get("val_accuracy") or 0.0)  # only baseline rows succeeded
    cm = best.get("confusion")
    if cm:
        import numpy as np

        cm = np.asarray(cm, float)
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
        out["confusion_best.png"] = _fig_png(fig)

    if len(groups) > 1:
        import numpy as np

        heads = sorted({r["head"] for r in ok})
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(heads) + 2), 4.5))
        width = 0.8 / len(groups)
        for gi, g in enumerate(groups):
            acc = {r["head"]: 100 * r["accuracy"] for r in ok if r["features"] == g}
            xs = np.arange(len(heads)) + gi * width
            ax.bar(xs, [acc.get(h, 0) for h in heads], width, label=g)
        ax.set_xticks(np.arange(len(heads)) + 0.4 - width / 2, heads, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Accuracy per backbone (feature set) and head")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        out["accuracy_per_backbone.png"] = _fig_png(fig)
    return out


def _markdown_table(rows):
    lines = ["| features | head | status | test acc. | bal. acc. | macro-F1 | log-loss | val acc. | fit s | "
             "predict s/1k | peak MB | chosen params | note |", "|" + " --- |" * 13]
    for r in rows:
        lines.append("| " + " | ".join([
            r["features"], r["head"], r.get("status", "?"), _pct(r.get("accuracy")), _pct(r.get("balanced_accuracy")),
            _pct(r.get("macro_f1")), _num(r.get("log_loss"), "{:.3f}"), _pct(r.get("val_accuracy")),
            _num(r.get("fit_seconds")), _num(r.get("predict_seconds_per_1000"), "{:.3f}"),
            _num(r.get("peak_memory_mb"), "{:.0f}"), json.dumps(r.get("best_params") or {}),
            (r.get("note") or r.get("error") or "").replace("|", "/")[:160]]) + " |")
    return "\n".join(lines)


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


def write_report(out: Path, rows: list[dict], best_dir: Path | None = None) -> None:
    out = Path(out)
    atomic_write_bytes(out / "results.json", (json.dumps(rows, indent=2, default=str) + "\n").encode())
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: spreadsheet_safe(v) for k, v in _flat(r).items()})
    atomic_write_bytes(out / "results.csv", table.getvalue().encode("utf-8", "surrogateescape"))
    class_names = None
    try:
        from .store import open_cache

        class_names = open_cache(rows[0]["cache"]).class_names if rows else None
    except Exception:  # noqa: BLE001 - names are decoration
        pass
    images = plots(rows, class_names)
    for name, data in images.items():
        atomic_write_bytes(out / name, data)
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "failed", "timed out")}
    protocol = ("Hyper-parameters chosen on the validation split (or by K-fold CV inside train); the chosen setting "
                "refit on train+val; the test split touched once. Keras heads early-stop on the validation split. "
                "The best head is picked by validation accuracy, never by test accuracy.")
    notes = [f"{r['head']} on {r['features']}: {r['note']}" for r in rows if r.get("note")]
    md = ["# featcache benchmark", "", protocol, "",
          f"{len(rows)} rows: {counts['ok']} ok, {counts['failed']} failed, {counts['timed out']} timed out.", ""]
    if best_dir is not None:
        md += [f"Best head saved to `{best_dir}` (usable with `featcache predict`).", ""]
    md += [_markdown_table(rows), ""]
    if notes:
        md += ["Memory-aware fallbacks:", ""] + [f"* {n}" for n in notes] + [""]
    for name in images:
        md += [f"![{name}]({name})", ""]
    atomic_write_bytes(out / "report.md", "\n".join(md).encode("utf-8", "surrogateescape"))

    def img(name, alt):
        if name not in images:
            return ""
        data = base64.b64encode(images[name]).decode()
        return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'

    body_rows = "".join(
        "<tr class='{cls}'>".format(cls=html.escape(r.get("status", "").replace(" ", "-")))
        + "".join(f"<td>{html.escape(str(v))}</td>" for v in [
            r["features"], r["head"], r.get("status"), _pct(r.get("accuracy")), _pct(r.get("balanced_accuracy")),
            _pct(r.get("macro_f1")), _num(r.get("log_loss"), "{:.3f}"), _pct(r.get("val_accuracy")),
            _num(r.get("fit_seconds")), _num(r.get("predict_seconds_per_1000"), "{:.3f}"),
            _num(r.get("peak_memory_mb"), "{:.0f}"), json.dumps(r.get("best_params") or {}),
            (r.get("note") or r.get("error") or "")[:200]])
        + "</tr>" for r in rows)
    best_line = f"<p>Best head saved to <code>{html.escape(str(best_dir))}</code>.</p>" if best_dir else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>featcache benchmark</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}tr.failed{{background:#fdd}}tr.timed-out{{background:#ffd}}
figure{{display:inline-block;margin:1em}}img{{max-width:560px}}</style></head><body>
<h1>featcache benchmark</h1><p>{html.escape(protocol)}</p>
<p>{len(rows)} rows: {counts['ok']} ok, {counts['failed']} failed, {counts['timed out']} timed out.</p>{best_line}
<div>{img('accuracy_vs_fit_time.png', 'Accuracy against fit time, every head')}
{img('confusion_best.png', 'Confusion matrix of the best head (test split)')}
{img('accuracy_per_backbone.png', 'Accuracy per backbone and head')}</div>
<table><tr><th>features</th><th>head</th><th>status</th><th>test acc.</th><th>bal. acc.</th><th>macro-F1</th>
<th>log-loss</th><th>val acc.</th><th>fit s</th><th>predict s/1k</th><th>peak MB</th><th>chosen params</th><th>note / error</th></tr>
{body_rows}</table></body></html>
"""
    atomic_write_bytes(out / "report.html", page.encode("utf-8", "surrogateescape"))
