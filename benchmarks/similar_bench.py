"""Similar-image search: USearch against faiss-cpu on synthetic feature rows (docs/PERFORMANCE.md, docs/SEARCH.md).

Rows are class means plus low-rank and isotropic noise, unit-normalised (real features are clustered and have a
low intrinsic dimension; pure isotropic noise would be a harder, unrealistic case). Each library runs in its own
process so its peak memory is its own. Measures build seconds, peak RSS, batch queries/s, median single-query
latency and recall@10 against an exact float32 search, on ``--queries`` held-out rows.

    python benchmarks/similar_bench.py --rows 100000 --dim 1280 --libs usearch,faiss --out bench.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def synthetic(rows: int, dim: int, seed: int = 0, classes: int = 100, rank: int = 48) -> np.ndarray:
    """Unit rows: a class mean, a low-rank class-shared spread and a little isotropic noise (float32)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim), dtype=np.float32)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(rank)
    out = np.empty((rows, dim), np.float32)
    for a in range(0, rows, 20000):  # in blocks: 1M x 1280 float32 fits, its temporaries need not
        n = min(20000, rows - a)
        block = means[rng.integers(0, classes, n)] * 0.6
        block += rng.standard_normal((n, rank), dtype=np.float32) @ basis * 1.2
        block += rng.standard_normal((n, dim), dtype=np.float32) * 0.25
        out[a:a + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    top = np.empty((len(queries), k), np.int64)
    for a in range(0, len(queries), 256):
        sims = queries[a:a + 256] @ base.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1)
        top[a:a + 256] = np.take_along_axis(part, order, 1)
    return top


def _build(lib: str, base: np.ndarray, threads: int):
    if lib == "usearch":
        from usearch.index import Index
        index = Index(ndim=base.shape[1], metric="cos", dtype="f16", connectivity=16, expansion_add=128,
                      expansion_search=128)
        for a in range(0, len(base), 50000):  # block by block, as featcache builds from shards
            index.add(np.arange(a, min(a + 50000, len(base))), base[a:a + 50000], threads=threads)
        def search(q, k, ef=128):
            index.expansion_search = ef
            return index.search(q, k, threads=threads).keys
        return search, index.memory_usage
    import faiss
    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWSQ(base.shape[1], faiss.ScalarQuantizer.QT_fp16, 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    for a in range(0, len(base), 50000):
        index.add(base[a:a + 50000])
    index.hnsw.efSearch = 128
    def search(q, k, ef=128):
        index.hnsw.efSearch = ef
        return index.search(q, k)[1]
    return search, len(faiss.serialize_index(index))


def one(lib: str, rows: int, dim: int, n_queries: int, threads: int) -> dict:
    data = synthetic(rows + n_queries, dim)
    base, queries = data[:rows], data[rows:]
    truth = exact_top(base, queries, 10)
    t0 = time.perf_counter()
    for q in queries[:20]:  # what an exact search of rows already in memory costs a query
        exact_top(base, q[None], 10)
    exact_ms = 1000 * (time.perf_counter() - t0) / 20
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    search, index_bytes = _build(lib, base, threads)
    build = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    found = np.asarray(search(queries, 10))
    qps = len(queries) / (time.perf_counter() - t0)
    single = []
    for q in queries[:200]:
        t = time.perf_counter()
        search(q[None], 10)
        single.append(time.perf_counter() - t)
    recall = _recall(found, truth)
    by_ef = {ef: _recall(np.asarray(search(queries, 10, ef)), truth) for ef in (64, 256)}  # the search depth's trade
    return {"lib": lib, "rows": rows, "dim": dim, "queries": n_queries, "threads": threads,
            "build_s": round(build, 2), "peak_rss_mb": round(peak / 1024), "build_rss_growth_mb": round((peak - rss0) / 1024),
            "index_mb": round(index_bytes / 2**20),
            "batch_qps": round(qps, 1), "median_query_ms": round(1000 * float(np.median(single)), 3),
            "exact_in_memory_query_ms": round(exact_ms, 2),
            "recall_at_10": round(recall, 4),
            "recall_at_10_by_ef": {64: round(by_ef[64], 4), 128: round(recall, 4), 256: round(by_ef[256], 4)}}


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())]))


def featcache_path(rows: int, n_queries: int = 200) -> dict:
    """featcache.similar end to end on a real cache (random 32 px images, random-weights MobileNetV2: 1,280
    values a row): the exact search, the index's first build, and one-query calls through the index."""
    import tempfile

    import featcache

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8)
    images[: rows // 2] //= 2  # two brightness classes: some structure for the graph
    with tempfile.TemporaryDirectory() as tmp:
        cache = featcache.extract(images, labels=np.arange(rows) % 2, out=f"{tmp}/c", backbone="mobilenet_v2",
                                  weights="none", image_size=32, batch_size=256)
        ids = cache.ids()[:: max(1, rows // n_queries)][:n_queries]
        t0 = time.perf_counter()
        exact = featcache.similar(cache, ids, k=10, index="exact")
        exact_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ann = featcache.similar(cache, ids, k=10, index="ann")
        first_s = time.perf_counter() - t0
        single = []
        for q in ids[:50]:
            t = time.perf_counter()
            featcache.similar(cache, q, k=10, index="ann")
            single.append(time.perf_counter() - t)
        recall = np.mean([len({n["row"] for n in a["neighbours"]} & {n["row"] for n in e["neighbours"]}) / 10
                          for a, e in zip(ann, exact)])
    return {"featcache_rows": rows, "queries": len(ids), "exact_batch_s": round(exact_s, 2),
            "index_build_and_batch_s": round(first_s, 2),
            "median_one_query_call_ms": round(1000 * float(np.median(single)), 2), "recall_at_10": round(float(recall), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--libs", default="usearch,faiss")
    p.add_argument("--featcache-rows", type=int, help="instead: featcache.similar end to end on a real cache of N rows")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--out")
    a = p.parse_args()
    if a.featcache_rows:
        print(json.dumps(featcache_path(a.featcache_rows)))
        return
    if a.one:
        print(json.dumps(one(a.one, a.rows, a.dim, a.queries, a.threads)))
        return
    results = []
    for lib in a.libs.split(","):  # a fresh process each: ru_maxrss is per process
        cmd = [sys.executable, __file__, "--one", lib, "--rows", str(a.rows), "--dim", str(a.dim),
               "--queries", str(a.queries), "--threads", str(a.threads)]
        results.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        print(json.dumps(results[-1]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
