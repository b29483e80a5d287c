"""Similar-image search at 1,000,000 x 1,280: featcache's index build, streamed from disk, then queried mapped.

    PYTHONPATH=$PWD python benchmarks/similar_million.py --rows 1000000 --work /tmp/sim1m [--real-cache CACHE]

Rows are written block by block to a float16 memory-mapped file (as a cache's shards hold them), around the class
means of a real cache (``--real-cache``: its per-class means and the leading directions of its within-class
spread) or synthetic ones; 1,000 held-out rows of the same law are the queries. The index is built with
featcache's own settings (similar.ANN_SETTINGS) from the file, similar.BLOCK_ROWS rows at a time, saved, and
reopened memory-mapped (``Index.restore(view=True)``) for the queries. Prints one JSON line per stage, so a run
cut short still says how far it got; peak RSS counts the mapped file's pages too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np


def _law(dim: int, real_cache: str | None, seed: int, rank: int = 48):
    """Class means, a within-class basis scaled by its spread, and the isotropic noise left over."""
    rng = np.random.default_rng(seed)
    if real_cache is None:
        means = rng.standard_normal((100, dim)).astype(np.float32) * 0.6 / np.sqrt(dim) * np.sqrt(dim)
        return means / np.linalg.norm(means, axis=1, keepdims=True), \
            rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(dim) * 0.8, 0.25 / np.sqrt(dim)
    import featcache
    from featcache.inspect.duplicates import unit_rows

    cache = featcache.open_cache(real_cache)
    U = unit_rows(cache.read_rows(np.arange(len(cache))).features)
    y = cache.labels()
    classes = np.unique(y[y >= 0])
    means = np.stack([U[y == c].mean(0) for c in classes])
    resid = U[y >= 0] - means[np.searchsorted(classes, y[y >= 0])]
    _, s, vt = np.linalg.svd(resid, full_matrices=False)
    scale = s[:rank] / np.sqrt(len(resid))
    left = np.sqrt(max((s[rank:] ** 2).sum() / len(resid), 1e-12) / dim)  # the rest of the spread, isotropic
    return means.astype(np.float32), (vt[:rank] * scale[:, None]).astype(np.float32), float(left)


def block(law, n: int, rng) -> np.ndarray:
    means, basis, noise = law
    x = means[rng.integers(0, len(means), n)]
    x = x + rng.standard_normal((n, len(basis)), dtype=np.float32) @ basis
    x += rng.standard_normal(x.shape, dtype=np.float32) * noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _say(stage: str, **kw) -> None:
    kw.update(stage=stage, peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              load=os.getloadavg()[0])
    print(json.dumps(kw), flush=True)


def main() -> None:
    from usearch.index import Index

    from featcache.similar import ANN_SETTINGS, BLOCK_ROWS, EXPANSION_SEARCH

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--work", type=Path, default=Path("/tmp/sim1m"))
    p.add_argument("--real-cache")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    law = _law(a.dim, a.real_cache, 0)
    t0 = time.perf_counter()
    rows = np.lib.format.open_memmap(a.work / "rows.npy", "w+", np.float16, (a.rows, a.dim))
    for s in range(0, a.rows, 20000):
        rows[s:s + 20000] = block(law, min(20000, a.rows - s), rng)
    rows.flush()
    queries = block(law, a.queries, rng)
    _say("rows_written", rows=a.rows, seconds=round(time.perf_counter() - t0, 1))
    del rows
    rows = np.load(a.work / "rows.npy", mmap_mode="r")
    s = ANN_SETTINGS
    index = Index(ndim=a.dim, metric=s["metric"], dtype=s["dtype"], connectivity=s["connectivity"],
                  expansion_add=s["expansion_add"])
    t0 = time.perf_counter()
    for b in range(0, a.rows, BLOCK_ROWS):
        index.add(np.arange(b, min(b + BLOCK_ROWS, a.rows), dtype=np.uint64),
                  np.asarray(rows[b:b + BLOCK_ROWS], np.float32), threads=a.threads)
        if (b // BLOCK_ROWS) % 12 == 0:
            _say("building", added=min(b + BLOCK_ROWS, a.rows), seconds=round(time.perf_counter() - t0, 1))
    build = time.perf_counter() - t0
    index.save(str(a.work / "index.usearch"))
    _say("built", build_s=round(build, 1), index_mb=round((a.work / "index.usearch").stat().st_size / 2**20))
    del index
    index = Index.restore(str(a.work / "index.usearch"), view=True)
    index.expansion_search = EXPANSION_SEARCH
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    found = np.asarray(index.search(queries, 10, threads=a.threads).keys)
    qps = len(queries) / (time.perf_counter() - t0)
    single = []
    for q in queries[:300]:
        t = time.perf_counter()
        index.search(q, 10)
        single.append(time.perf_counter() - t)
    _say("queried", batch_qps=round(qps, 1), median_query_ms=round(1000 * float(np.median(single)), 3),
         p95_query_ms=round(1000 * float(np.percentile(single, 95)), 3), ef=EXPANSION_SEARCH)
    t0 = time.perf_counter()
    best_s = np.full((len(queries), 10), -np.inf, np.float32)
    best_r = np.zeros((len(queries), 10), np.int64)
    for b in range(0, a.rows, 50000):  # exact float32 search of the float16 rows, a block at a time
        sims = queries @ np.asarray(rows[b:b + 50000], np.float32).T
        allr = np.hstack([best_r, np.broadcast_to(np.arange(b, b + sims.shape[1]), sims.shape)])
        alls = np.hstack([best_s, sims])
        part = np.argpartition(-alls, 9, axis=1)[:, :10]
        best_r, best_s = np.take_along_axis(allr, part, 1), np.take_along_axis(alls, part, 1)
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), best_r.tolist())]))
    _say("recall", recall_at_10=round(recall, 4), exact_s=round(time.perf_counter() - t0, 1),
         query_rss_growth_mb=round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024))


if __name__ == "__main__":
    main()
