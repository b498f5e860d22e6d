"""What the fine-tune progress reports per epoch on small sets of reviewed decisions (README "Learning from reviews").

Fine-tunes the shipped model on the first N decisions of the learning curve's pool (UK parcel rows it did not train
on, `hs_train.learning_curve.build_pool`; never the evaluation files) and prints every epoch's row as one JSON line,
with how many validation items have a subheading or heading that also occurs in the training part.

    .venv/bin/python scripts/finetune_progress.py --sizes 30 50 100 > progress.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hs_core.settings import DEFAULT_DATA_DIR, DEFAULT_MODEL_DIR  # noqa: E402
from hs_train.finetune import FinetuneConfig, finetune_and_gate, load_base, part_of  # noqa: E402
from hs_train.learning_curve import CurveConfig, as_reviewed, build_pool, encode_examples  # noqa: E402
from services.classify import load_classifier  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 50, 100])
    args = parser.parse_args()
    classifier = load_classifier(DEFAULT_MODEL_DIR)
    base = load_base(classifier, DEFAULT_MODEL_DIR)
    cfg = CurveConfig()
    examples = build_pool(Path(DEFAULT_DATA_DIR), cfg)[cfg.test_rows :]
    pool = encode_examples(classifier, examples[: max(args.sizes)], "lc-pool-progress")
    for n in args.sizes:
        reviewed = as_reviewed(pool.subset(range(n)))
        parts = [part_of(i) for i in reviewed.ids]
        train = [g for g, p in zip(reviewed.golds, parts, strict=True) if p == "train"]
        val = [g for g, p in zip(reviewed.golds, parts, strict=True) if p == "val"]
        seen = {
            "val_codes_in_train": sum(g in set(train) for g in val),
            "val_headings_in_train": sum(g[:4] in {t[:4] for t in train} for g in val),
        }
        rows: list[dict] = []
        finetune_and_gate(
            base, base, reviewed, benchmark=None, cfg=FinetuneConfig(), version=f"progress-{n}",
            started_by="finetune_progress", on_epoch=rows.append,
        )  # fmt: skip
        for row in rows:
            row = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k != "seconds"}
            print(json.dumps({"decisions": n, **seen, **row}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
