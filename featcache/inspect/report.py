"""The inspect report: issues.csv (and .parquet), thumbnails/ and one self-contained report.html."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np

from ..files import spreadsheet_safe
from .thumbs import data_uri

#: the columns of issues.csv, one row per (image, finding)
COLUMNS = ("id", "issue", "score", "given_label", "suggested_label", "group")
#: rows of each finding shown in report.html (issues.csv has them all)
SHOWN = 60
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]
_ISSUE_COLOUR = {"label": "#d62728", "duplicate": "#ff7f0e", "near_duplicate": "#ff7f0e", "outlier": "#9467bd",
                 "": "#c7c7c7"}


def write_tables(out: Path, records: list[dict]) -> list[str]:
    """issues.csv, and issues.parquet when pyarrow is installed; the names written."""
    with open(out / "issues.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in records:
            w.writerow([spreadsheet_safe(r[c]) if isinstance(r[c], str) else ("" if r[c] is None else r[c])
                        for c in COLUMNS])
    written = ["issues.csv"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = pa.table({c: [r[c] for r in records] for c in COLUMNS},
                     schema=pa.schema([("id", pa.string()), ("issue", pa.string()), ("score", pa.float64()),
                                       ("given_label", pa.string()), ("suggested_label", pa.string()),
                                       ("group", pa.int64())]))
    pq.write_table(table, out / "issues.parquet")
    return written + ["issues.parquet"]


def write_thumbnails(out: Path, thumbs: dict[int, bytes] | None, rows) -> None:
    if not thumbs:
        return
    (out / "thumbnails").mkdir(exist_ok=True)
    for r in rows:
        if r in thumbs:
            (out / "thumbnails" / f"row{r}.png").write_bytes(thumbs[r])


def _cell_image(r: int, ids, thumbs) -> str:
    name = html.escape(ids[r])
    if not thumbs or r not in thumbs:
        return f"<span class=id>{name}</span>"
    return (f"<a href='thumbnails/row{r}.png'><img src='{data_uri(thumbs[r])}' alt='{name}' title='{name}'></a>"
            f"<br><span class=id>{name}</span>")


def _table(head: list[str], body: list[list[str]]) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    return f"<table><tr>{th}</tr>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                                             for row in body) + "</table>"


def _map_svg(xy: np.ndarray, rows, ids, labels, issue_of: dict[int, str], thumbs, size: int = 640) -> str:
    if not len(xy):
        return "<p>no rows to map</p>"
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1)
    p = 10 + (xy - lo) / span * (size - 20)
    dots = []
    for r, (x, y) in zip(rows.tolist(), p):
        cl = _PALETTE[labels[r] % len(_PALETTE)] if labels[r] >= 0 else "#7f7f7f"
        issue = issue_of.get(r, "")
        ci = _ISSUE_COLOUR.get(issue, "#d62728")
        thumb = data_uri(thumbs.get(r)) if thumbs else ""
        dots.append(f"<circle cx='{x:.1f}' cy='{size - y:.1f}' r='3' fill='{cl}' data-cl='{cl}' data-ci='{ci}' "
                    f"data-id='{html.escape(ids[r])}' data-issue='{issue}' data-thumb='{thumb}'></circle>")
    return (f"<svg id=map width='{size}' height='{size}' viewBox='0 0 {size} {size}'>" + "".join(dots) + "</svg>")


_JS = """
<div id=tip style='position:fixed;display:none;background:#fff;border:1px solid #888;padding:4px;font-size:12px'>
<img id=tipimg><div id=tiptext></div></div>
<script>
const tip=document.getElementById('tip');
document.querySelectorAll('#map circle').forEach(c=>{
  c.addEventListener('mouseenter',e=>{document.getElementById('tipimg').src=c.dataset.thumb;
    document.getElementById('tiptext').textContent=c.dataset.id+(c.dataset.issue?' ('+c.dataset.issue+')':'');
    tip.style.display='block';tip.style.left=(e.clientX+12)+'px';tip.style.top=(e.clientY+12)+'px';});
  c.addEventListener('mouseleave',()=>{tip.style.display='none';});});
function colour(by){document.querySelectorAll('#map circle').forEach(c=>c.setAttribute('fill',
  by==='issue'?c.dataset.ci:c.dataset.cl));}
</script>"""


def render_html(out: Path, s: dict, ids, labels, thumbs, xy, map_method: str, issue_of: dict[int, str],
                drawn) -> None:
    """report.html: every finding with ids and thumbnails, and the interactive map; no network."""
    parts = [f"<h1>featcache inspect: {html.escape(s['cache'])}</h1><p>{len(ids):,} rows, every split. "
             f"{html.escape(s['summary'])}</p>"]
    if thumbs is None:
        parts.append("<p>thumbnails: the cache's source cannot be reopened (made from arrays, moved or changed)</p>")
    for section in s["sections"]:
        parts.append(f"<h2>{html.escape(section['title'])}</h2><p>{html.escape(section['note'])}</p>")
        if section["rows"]:
            body = [[c if i in section.get("raw", ()) else html.escape(str(c)) for i, c in enumerate(row)]
                    for row in section["rows"][:SHOWN]]
            for row, rs in zip(body, section["images"][:SHOWN]):
                row.insert(0, " ".join(_cell_image(r, ids, thumbs) for r in rs[:8]))
            parts.append(_table(["images"] + section["head"], body))
    if xy is not None:
        note = ("PCA (fewer than a few hundred rows: too few for UMAP)" if map_method == "pca" else "UMAP (cosine)")
        if len(drawn) < len(ids):
            note += f" of a sample of {len(drawn):,} of the {len(ids):,} rows (every flagged row, then at random)"
        parts.append(f"<h2>Map</h2><p>{note}; hover a point for its image and id. Colour by "
                     "<button onclick=\"colour('label')\">label</button> "
                     "<button onclick=\"colour('issue')\">issue</button></p>")
        parts.append(_map_svg(xy, drawn, ids, labels, issue_of, thumbs) + _JS)
    style = ("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid "
             "#ccc;padding:3px 6px;font-size:13px;vertical-align:top}img{image-rendering:pixelated;width:48px}"
             ".id{font-size:11px;color:#555}</style>")
    summary = f"<script type='application/json' id=summary>{json.dumps(s['counts'])}</script>"
    (out / "report.html").write_text("<!doctype html><html><head><meta charset='utf-8'><title>featcache inspect"
                                     f"</title>{style}</head><body>" + "".join(parts) + summary + "</body></html>")
