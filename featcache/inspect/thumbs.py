"""Thumbnails of cache rows, read back from the cache's source as the CNN saw them (as featcache/leakage.py does)."""

from __future__ import annotations

import base64
import io

import numpy as np


def thumbnails(cache, rows, size: int = 32) -> dict[int, bytes] | None:
    """PNG bytes of each row's image, or None when the source cannot be reopened (arrays, moved, changed)."""
    from PIL import Image

    from ..decode import parse_background
    from ..sources import reopen

    rows = [int(r) for r in rows]
    try:
        src = reopen(cache.source_address)
    except Exception:  # noqa: BLE001 - thumbnails are decoration; the findings stand without them
        return None
    by_id = {it.id: it for it in src.items}
    ids = cache.ids()
    if any(ids[r] not in by_id for r in rows):
        return None
    background = parse_background(cache.params.get("background", "white"))
    out = {}
    for a in range(0, len(rows), 512):
        part = rows[a:a + 512]
        batch = src.read([by_id[ids[r]] for r in part], (size, size), background=background)
        got = {it.id: im for it, im in zip(batch.items, batch.images)}
        for r in part:
            if ids[r] in got:
                buf = io.BytesIO()
                Image.fromarray(np.asarray(got[ids[r]], np.uint8)).save(buf, format="PNG")
                out[r] = buf.getvalue()
    return out


def data_uri(png: bytes | None) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode() if png else ""
