"""Speed and memory of the precedents vote at 10k, 100k and 1M precedents (synthetic vectors and word counts).

Measures what the vote adds to one prediction (embedding + lexical search, hybrid re-rank, vote, fusion over
the 5,612 subheadings), single queries as `Classifier.predict` runs them, and the memory the index takes.

    python -m hs_train.precedents_bench --sizes 10000 100000 1000000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
import scipy.sparse as sp  # type: ignore[import-untyped]  # scipy ships no type information (no py.typed)
import torch

from hs_model.lexical import _hash
from hs_model.model import LabelSpace
from hs_model.precedents import PrecedentIndex, VoteConfig, code_tables, fuse_log_probs

VOCAB = 30_000


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_index(n: int, subheadings: list[str], seed: int = 0, chunk: int = 100_000) -> PrecedentIndex:
    """n unit vectors (float16, 384-d, clustered like real goods), Zipf word counts, random valid codes."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = VoteConfig(k=10, lexical_weight=0.3, min_similarity=0.5, beta6=1.0, beta4=1.0, beta2=0.5)
    index = PrecedentIndex("synthetic", 384, config=cfg)
    centres = torch.nn.functional.normalize(torch.randn(2000, 384, generator=g), dim=-1)
    col_of = np.array([_hash(f"w{i}") for i in range(VOCAB)], dtype=np.int64)
    codes = np.array(subheadings)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        c = torch.randint(0, len(centres), (m,), generator=g)
        vec = torch.nn.functional.normalize(centres[c] + 0.6 * torch.randn(m, 384, generator=g) / 384**0.5 * 8, dim=-1)
        index._append(vec.to(torch.float16))
        lengths = rng.integers(6, 30, m)
        words = np.minimum(rng.zipf(1.3, lengths.sum()) - 1, VOCAB - 1)
        rows = np.repeat(np.arange(m), lengths)
        counts = sp.csr_matrix((np.ones(len(words), np.float32), (rows, col_of[words])), shape=(m, 1 << 20))
        counts.sum_duplicates()
        index.lexical.add_counts(counts)
        picked = codes[c.numpy() % len(codes)]
        index.codes.extend(picked.tolist())
        index.texts.extend([""] * m)
        index.provenance.extend([("synthetic", str(start + i), "") for i in range(m)])
    index.lexical.counts()  # merge the pending block, as after a load
    return index


def bench(n: int, queries: int = 50) -> dict:
    from hs_core.nomenclature import get_nomenclature

    subs = sorted(c.digits for c in get_nomenclature().subheadings)
    space = LabelSpace.from_codes(subs)
    tables = code_tables(subs)
    heads, chaps = space.parent_index(4), space.parent_index(2)
    before = rss_mb()
    t0 = time.perf_counter()
    index = synthetic_index(n, subs)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    # queries near stored rows (as real goods are), with a few words from the same Zipf vocabulary
    rows = torch.randint(0, n, (queries,), generator=g)
    qv = torch.nn.functional.normalize(index.emb[rows].float() + 0.02 * torch.randn(queries, 384, generator=g), dim=-1)
    qt = [" ".join(f"w{min(int(w) - 1, VOCAB - 1)}" for w in rng.zipf(1.3, 12)) for _ in range(queries)]
    log_p = torch.log_softmax(torch.randn(1, len(subs)), dim=-1)
    index.neighbours(qv[:1], qt[:1])  # warm-up (builds the IVF above the exact-search size)
    ivf_s = time.perf_counter()
    index.neighbours(qv[:1], qt[:1])
    times = []
    for i in range(queries):
        t = time.perf_counter()
        nb = index.neighbours(qv[i : i + 1], qt[i : i + 1])
        votes, *_ = index.vote(nb, tables)
        fuse_log_probs(log_p, votes, index.config, heads, chaps, long_rows=nb.long_rows(index.config))
        times.append((time.perf_counter() - t) * 1000)
    del ivf_s
    times.sort()
    emb_mb = index.emb.numel() * 2 / 2**20
    lex = index.lexical.counts()
    lex_mb = (lex.data.nbytes + lex.indices.nbytes + lex.indptr.nbytes) / 2**20
    return {
        "rows": n,
        "search": "exact float16 matrix" if n <= index.config.exact_up_to else f"IVF, nprobe {index.config.nprobe}",
        "added_ms": {"p50": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))]},
        "build_s": build_s,
        "memory_mb": {"vectors_float16": emb_mb, "lexical_counts": lex_mb, "process_rss_delta": rss_mb() - before},
    }


def predict_p50(queries: int = 40) -> dict:
    """Real predictions (text only) with the shipped model, without and with its shipped precedent index."""
    from hs_model.predict import Classifier

    clf = Classifier()
    texts = ["bicycle helmets", "men's knitted cotton T-shirt", "stainless steel kitchen knife", "laptop 14 inch"]
    out: dict[str, int | dict[str, float]] = {"index_rows": len(clf.precedents) if clf.precedents is not None else 0}
    index = clf.precedents
    for name, idx in (("codes_only", None), ("with_precedents", index)):
        clf.precedents = idx
        clf.predict(texts[0])
        times = []
        for i in range(queries):
            t = time.perf_counter()
            clf.predict(texts[i % len(texts)])
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        out[name] = {"p50": statistics.median(times), "p95": times[int(0.95 * (len(times) - 1))]}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--predict", action="store_true", help="also time real predictions with the shipped index")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "load_average": os.getloadavg(),
        "results": [],
    }
    for n in args.sizes:
        out["results"].append(bench(n, args.queries))
        print(json.dumps(out["results"][-1]), file=sys.stderr, flush=True)
    if args.predict:
        out["predict_text_ms"] = predict_p50(args.queries)
    print(json.dumps(out, indent=2) if args.json else out)


if __name__ == "__main__":
    main()
