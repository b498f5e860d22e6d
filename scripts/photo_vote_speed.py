"""Milliseconds per single-photo query for the photo precedents' vote (search + vote + fusion) over a shipped index.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/photo_vote_speed.py [--model assets/model] [--queries 300]

Random query vectors (the cost does not depend on what they match), one at a time as `predict` runs, one torch thread;
the first 20 are warm-up. Prints rows, median and p90, and the load average (a shared machine is only as good as quiet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hs_model.model import LabelSpace  # noqa: E402
from hs_model.photo_precedents import PhotoIndex, fuse_photo_vote  # noqa: E402
from hs_model.precedents import code_tables, valid_code_set  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("assets/model"))
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    index = PhotoIndex.load(args.model, valid_code_set())
    if index is None:
        raise SystemExit(f"no photo precedent index in {args.model}")
    subs = sorted(c for c in valid_code_set() if len(c) == 6)
    table, s2h = code_tables(subs)[4], LabelSpace.from_codes(subs).parent_index(4)
    lp6, gate = torch.log_softmax(torch.randn(1, len(subs)), dim=-1), torch.ones(1)
    queries = torch.randn(args.queries, index.dim, generator=torch.Generator().manual_seed(0)).abs()
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        fuse_photo_vote(lp6, index.vote(index.search(q[None]), table), gate, index.config.beta, s2h)
        ms.append((time.perf_counter() - t0) * 1000)
    ms = sorted(ms[20:])
    out = {"rows": len(index), "median_ms": round(ms[len(ms) // 2], 3), "p90_ms": round(ms[int(len(ms) * 0.9)], 3)}
    print(json.dumps(out | {"load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
