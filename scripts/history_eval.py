"""Simulate a brokerage that brings its history: the UK parcels' training split is imported as history (through the
real import and match services, into a temporary SQLite database), the held-out splits are classified.

The near-duplicate threshold is chosen on the validation split (history = training split), then the test split is
reported with that threshold: share of lines the record answers, accuracy of those lines, accuracy overall with and
without the record (HS6 and HS4). The split is the one the model uses (`hs_train.datasets.split_of`).

    .venv/bin/python scripts/history_eval.py --data-dir ../shared/data --model assets/model --json docs/results/history.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from db.engine import make_engine, make_session_factory, run_transaction, upgrade  # noqa: E402
from hs_train.datasets import load_uk_parcels, split_of  # noqa: E402
from services import history  # noqa: E402
from services.history_file import check_history_file  # noqa: E402
from services.history_match import normalise  # noqa: E402

log = logging.getLogger("history_eval")
GRID = (0.80, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98, 1.01)  # 1.01: exact matches only


def as_csv(examples) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["description", "code"])
    for ex in examples:
        w.writerow([ex.text, ex.hs])
    return buf.getvalue().encode()


def score(rows, model_top, matches) -> dict:
    """rows: examples; model_top: the model's HS6 per row; matches: Match | None per row."""
    n = len(rows)
    answered = [i for i, m in enumerate(matches) if m is not None and m.code is not None]
    conflicts = sum(1 for m in matches if m is not None and m.code is None)
    final = [matches[i].code if i in set(answered) else model_top[i] for i in range(n)]

    def acc(codes, idx, digits):
        return round(100 * sum(codes[i][:digits] == rows[i].hs[:digits] for i in idx) / max(len(idx), 1), 2)

    everyone = list(range(n))
    matched_codes = {i: matches[i].code for i in answered}
    return {
        "rows": n,
        "matched": len(answered),
        "matched_share": round(100 * len(answered) / max(n, 1), 2),
        "conflicts": conflicts,
        "by_how": {h: sum(1 for i in answered if matches[i].how == h) for h in ("description", "near")},
        "matched_accuracy_hs6": acc(matched_codes, answered, 6),
        "matched_accuracy_hs4": acc(matched_codes, answered, 4),
        "model_on_matched_hs6": acc(model_top, answered, 6),
        "model_on_matched_hs4": acc(model_top, answered, 4),
        "without_record_hs6": acc(model_top, everyone, 6),
        "without_record_hs4": acc(model_top, everyone, 4),
        "with_record_hs6": acc(final, everyone, 6),
        "with_record_hs4": acc(final, everyone, 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--model", default=str(REPO / "assets" / "model"))
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from hs_model.predict import Classifier, Query

    examples = load_uk_parcels(Path(args.data_dir))
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for ex in examples:
        parts[split_of(ex.text or ex.id)].append(ex)  # as the model, its precedents and the learning curve split
    log.info("UK parcels: %s", {k: len(v) for k, v in parts.items()})
    t0 = time.perf_counter()
    classifier = Classifier(Path(args.model))
    embedder = history.TowerEmbedder(classifier)
    log.info("classifier loaded in %.1f s", time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/history.sqlite3"
        upgrade(url)
        engine = make_engine(url)
        factory = make_session_factory(engine)
        checked = check_history_file("uk_parcels_train.csv", as_csv(parts["train"]))
        log.info("history file: %d rows ok, %d problems", len(checked.rows), checked.total_problems)
        refused = [f"line {p.line}: {p.problem}" for p in checked.problems]
        if refused:  # the import is all or nothing: a firm fixes its file first; here the refused lines are dropped
            bad = {p.line for p in checked.problems}
            kept = [ex for i, ex in enumerate(parts["train"], start=2) if i not in bad]
            checked = check_history_file("uk_parcels_train.csv", as_csv(kept))
            log.info("dropped %d refused line(s): %s", len(bad), refused)
        t0 = time.perf_counter()
        result = run_transaction(
            factory, lambda s: history.import_history(s, None, checked, embedder=embedder, via="cli", operator="eval")
        )
        import_s = time.perf_counter() - t0
        out: dict = {"split_rows": {k: len(v) for k, v in parts.items()}, "imported_rows": result.rows,
                     "refused_lines": refused,
                     "import_seconds": round(import_s, 1), "threshold_grid": {}}  # fmt: skip
        index = run_transaction(factory, lambda s: history.record_index(s, embedder))

        cache: dict[str, tuple[list[str], np.ndarray]] = {}

        def run_split(name: str, threshold: float) -> dict:
            rows = parts[name]
            if name not in cache:
                preds = []
                for s in range(0, len(rows), 64):
                    preds += classifier.predict_batch([Query(r.text) for r in rows[s : s + 64]])
                cache[name] = ([p.top.code for p in preds], embedder.encode([r.text for r in rows]))
            top, vecs = cache[name]
            index.threshold = threshold
            matches = [index.match(normalise(r.text), v) for r, v in zip(rows, vecs, strict=True)]
            return score(rows, top, matches)

        for t in GRID:
            out["threshold_grid"][str(t)] = run_split("val", t)
            log.info("val threshold %.2f: %s", t, out["threshold_grid"][str(t)])
        # The model's validation numbers are not a fair yardstick here: the shipped precedent index holds the
        # validation split itself. So the threshold is chosen on the record alone: the one whose matches are most
        # often right at HS6 (at least 5 matches), the lower one on a tie (more lines answered).
        grid = out["threshold_grid"]
        usable = [t for t in GRID if grid[str(t)]["matched"] >= 5]
        best = max(usable, key=lambda t: (grid[str(t)]["matched_accuracy_hs6"], -t))
        out["chosen_threshold"] = best
        out["test"] = run_split("test", best)
        out["test_grid"] = {str(t): run_split("test", t) for t in GRID}
        # The shipped model's precedent index already holds the training split (its vote is the model's own
        # memory of it). A model without that memory (codes only: a fine-tuned version, or a firm whose history
        # the shipped index never saw) shows what the record adds on its own.
        classifier.precedents = None
        cache.pop("test")
        out["test_codes_only_model"] = run_split("test", best)
        # latency of the record lookup as Classify runs it (embed the description + match), one at a time
        lat = []
        for r in parts["test"][:200]:
            t1 = time.perf_counter()
            run_transaction(factory, lambda s, r=r: history.find_match(s, embedder, r.text))
            lat.append(1000 * (time.perf_counter() - t1))
        out["lookup_ms_p50_p95"] = [round(float(np.percentile(lat, q)), 2) for q in (50, 95)]
        engine.dispose()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
