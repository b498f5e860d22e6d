"""Build the precedent index shipped next to a model, from every labelled training example.

The vote's settings and the combiner's weights come from the date-held-out experiment
(`python -m hs_train.precedents_eval`, its `chosen` entry in docs/results/precedents_v3_long.json); the shipped index
then holds all the training data: CBP rulings of January-May 2026, UK parcels (train and validation splits:
the test split stays out so it remains a test), UK brands and Myntra titles (train and validation splits).

    python -m hs_train.precedents_build --data-dir ../shared/data --model assets/model
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from hs_model.precedents import INDEX_CARD, INDEX_FILE, VoteConfig
from hs_model.predict import Classifier
from hs_train.precedents_eval import (
    SHIPPED_VOTE,
    _joint_view,
    build_index,
    load_rulings,
    ruling_entries,
    split_rulings,
    training_entries,
)

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", type=Path, default=Path("assets/model"))
    ap.add_argument("--results", type=Path, default=SHIPPED_VOTE, help="the vote settings (precedents_eval's output)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = json.loads(args.results.read_text())
    chosen = results["chosen"]
    cfg = VoteConfig.from_dict(chosen)
    weak = results.get("weak_min_score")
    clf = Classifier(args.model)
    rulings = load_rulings(args.data_dir)
    # the held-out experiment's index first (same texts: its cached vectors are reused), then what it held out
    held_in, held_out = split_rulings(rulings)
    early = ruling_entries(held_in)
    entries = early + training_entries(args.data_dir, ("train",), ("train",), weak)
    more = ruling_entries(held_out) + training_entries(args.data_dir, ("val",), ("val",), None, brands=False)
    index = build_index(clf, entries, f"heldout-w{weak}", cfg.lexical_scheme, more=more)
    if cfg.space == "joint":  # the vectors the vote compares live in the model's adapted text space
        index = _joint_view(index, clf)
    index.config = cfg
    index.save(args.model)
    sizes = {f: (args.model / f).stat().st_size for f in (INDEX_FILE, INDEX_CARD)}
    counts: dict[str, int] = {}
    for dataset, _, _ in index.provenance:
        counts[dataset] = counts.get(dataset, 0) + 1
    log.info("shipped %d precedents %s to %s (%s bytes)", len(index), counts, args.model, sizes)
    print(json.dumps({"rows": len(index), "by_dataset": counts, "bytes": sizes, "config": chosen}, indent=2))


if __name__ == "__main__":
    main()
