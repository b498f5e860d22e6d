"""Model versions compared on the held-out splits of the training data, each with its own precedent index.

The shipped precedent index holds the May 2026 rulings and the UK parcels' validation split, so it cannot be used
to measure on them. Here every model gets the held-out experiment's index instead (CBP rulings of January-April
2026 + the training splits of UK parcels and Myntra + UK brands, embedded with *that model's* text tower) and the
shipped vote settings (`chosen` in docs/results/precedents_v3_long.json, not refitted). Conditions: UK parcels validation
and test splits, May 2026 rulings (full description and one-line form), Myntra test titles (title only).

    python -m hs_train.heldout_compare --model hsdesk-v2=runs/v2 --model hsdesk-v3=runs/v3 --out docs/results
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

from hs_model.precedents import VoteConfig, code_tables
from hs_model.predict import Classifier
from hs_train.datasets import load_myntra, load_uk_parcels, split_of
from hs_train.precedents_eval import (
    SHIPPED_VOTE,
    _joint_view,
    build_index,
    evaluate_cond,
    load_rulings,
    make_cond,
    ruling_entries,
    split_rulings,
    training_entries,
)

log = logging.getLogger(__name__)


def heldout_conditions(
    data: Path, may: list[dict] | None = None, myntra_rows: int | None = None
) -> dict[str, tuple[list[str], list[str]]]:
    """{condition: (texts, gold codes)} of the held-out splits: UK parcels val and test, the May 2026 rulings (full
    description and one-line form), Myntra test titles (the rows with a photo; a fixed sample of `myntra_rows`,
    seed 0, when given)."""
    if may is None:
        may = split_rulings(load_rulings(data))[1]
    uk = load_uk_parcels(data)
    uk_split = {s: [e for e in uk if split_of(e.text or e.id) == s] for s in ("val", "test")}
    myntra = [e for e in load_myntra(data, "test") if e.images]
    name = "Myntra test, title only"
    if myntra_rows is not None:
        keep = sorted(random.Random(0).sample(range(len(myntra)), min(myntra_rows, len(myntra))))
        myntra, name = [myntra[i] for i in keep], f"{name} ({myntra_rows}-row sample)"
    return {
        "UK parcels, val": ([e.text or "" for e in uk_split["val"]], [e.hs for e in uk_split["val"]]),
        "UK parcels, test": ([e.text or "" for e in uk_split["test"]], [e.hs for e in uk_split["test"]]),
        "May 2026 rulings, full description": (
            [" ".join(r["description"].split()) for r in may],
            [r["hs6"] for r in may],
        ),
        "May 2026 rulings, one-line": ([r["short"] for r in may], [r["hs6"] for r in may]),
        name: ([e.text or "" for e in myntra], [e.hs for e in myntra]),
    }


def compare(models: dict[str, Path], data: Path, results_file: Path) -> dict:
    chosen = json.loads(results_file.read_text())
    cfg = VoteConfig.from_dict(chosen["chosen"])
    weak = chosen.get("weak_min_score")
    rulings = load_rulings(data)
    early, may = split_rulings(rulings)
    entries = ruling_entries(early) + training_entries(data, ("train",), ("train",), weak)
    conditions = heldout_conditions(data, may)
    out: dict = {"vote_config": chosen["chosen"], "index_rows": len(entries), "models": {}, "conditions": {}}
    base: Classifier | None = None
    for name, folder in models.items():
        t0 = time.time()
        clf = Classifier(folder) if base is None else base.with_model(folder)
        base = base or clf
        out["models"][name] = {"version": clf.version, "text_tower": clf.text_tower.name}
        tables = code_tables(clf.space.subheadings)
        index = build_index(clf, entries, f"heldout-w{weak}", cfg.lexical_scheme)
        if cfg.space == "joint":
            index = _joint_view(index, clf)
        for cname, (texts, golds) in conditions.items():
            cond = make_cond(clf, cname, texts, golds)
            emb = cond.raw if cfg.space == "raw" else cond.joint_text
            nb = index.neighbours(emb, cond.texts, cfg)
            res = evaluate_cond(index, cond, nb, cfg, tables, clf)
            out["conditions"].setdefault(cname, {})[name] = res
            log.info("%s / %s: codes %s fused %s", name, cname, res["codes-only"], res["fused"])
        out["models"][name]["seconds"] = time.time() - t0
    return out


def to_markdown(results: dict) -> str:
    names = list(results["models"])
    lines = [
        "| condition | rows | " + " | ".join(f"{n}: codes only / + precedents (HS2 / HS4 / HS6)" for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]

    def f(m: dict) -> str:
        return " / ".join(f"{100 * m[k]:.1f}" if k in m else "–" for k in ("hs2_top1", "hs4_top1", "hs6_top1"))

    for cname, per in results["conditions"].items():
        rows = next(iter(per.values()))["rows"]
        cells = [f"{f(per[n]['codes-only'])} → **{f(per[n]['fused'])}**" for n in names]
        lines.append(f"| {cname} | {rows} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER")
    ap.add_argument("--results", type=Path, default=SHIPPED_VOTE, help="the vote settings")
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    models = {n: Path(p) for n, _, p in (m.partition("=") for m in args.model)}
    results = compare(models, args.data_dir, args.results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "heldout_v3.json").write_text(json.dumps(results, indent=2))
    (args.out / "heldout_v3.md").write_text(to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
