"""How fast the record answers at 10k, 100k and 1M history rows: synthetic clustered unit vectors (384-d, as the
MiniLM text tower), one query at a time as Classify asks it. Prints JSON.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/history_bench.py --sizes 10000 100000 1000000

Half the queries are near duplicates of stored rows (cosine about 0.95), half are new products; the exact
lookups (SKU + importer, normalised description) are dictionary hits and are timed too. The text tower's own
encoding of the query (a few ms, measured in scripts/history_eval.py) is not included.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.history_match import HistoryIndex, Source  # noqa: E402

DIM = 384


def rss_mb() -> float:
    """Resident memory now (not the peak: the synthetic rows' temporaries are not the index)."""
    gc.collect()
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e6


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Rows scattered around random cluster centres (products come in families), unit length, float32."""
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        pick = centres[rng.integers(0, len(centres), m)]
        block = pick + 0.6 * rng.standard_normal((m, DIM)).astype(np.float32) / np.sqrt(DIM)
        out[s : s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def bench(n: int, queries: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(64, n // 200), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rss0 = rss_mb()
    index = HistoryIndex(dim=DIM)
    t0 = time.perf_counter()
    chunk = 50_000
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        vecs = clustered(m, rng, centres)
        index.add(
            [
                Source(
                    "imported",
                    "610910",
                    "firm.csv, imported on 2026-12-02",
                    history_row_id=s + i,
                    import_id=1,
                    line_no=s + i + 2,
                )
                for i in range(m)
            ],  # fmt: skip
            [f"product {s + i}" for i in range(m)],
            vecs,
            [(f"sku{s + i}", "acme") for i in range(m)],
        )
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.near(np.ones(DIM, np.float32))  # the first search builds the inverted file above EXACT_UP_TO rows
    build_s = time.perf_counter() - t0
    stored = rng.integers(0, n, queries // 2)
    near_q = index.emb[stored].astype(np.float32) + 0.3 * rng.standard_normal((len(stored), DIM)).astype(
        np.float32
    ) / np.sqrt(DIM)
    new_q = clustered(queries - len(stored), rng, centres)
    times, found = [], 0
    for i, q in enumerate(np.concatenate([near_q, new_q])):
        t1 = time.perf_counter()
        rows, sims = index.near(q)
        times.append(1000 * (time.perf_counter() - t1))
        if i < len(stored) and rows and rows[0] == stored[i]:
            found += 1
    lists = len(index._ivf[0]) if index._ivf else 0
    exact = []
    for i in rng.integers(0, n, 200):
        t1 = time.perf_counter()
        index.match(f"product {i}", None, (f"sku{i}", "acme"))
        exact.append(1000 * (time.perf_counter() - t1))
    return {
        "rows": n,
        "search": "exact (float32 blocks)"
        if n <= index.exact_up_to
        else f"inverted file, {lists} lists, {index.n_probe} probed",
        "near_ms_p50": round(float(np.percentile(times, 50)), 2),
        "near_ms_p95": round(float(np.percentile(times, 95)), 2),
        "near_duplicate_found_share": round(found / max(len(stored), 1), 3),
        "exact_ms_p50": round(float(np.percentile(exact, 50)), 4),
        "load_seconds": round(add_s, 1),
        "index_build_seconds": round(build_s, 1),
        "vectors_mb": round(index.emb[: len(index)].nbytes / 1e6, 1),
        "rss_growth_mb": round(rss_mb() - rss0, 0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    results = [bench(n, args.queries) for n in args.sizes]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
