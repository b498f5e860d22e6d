"""Photo precedents: tune the catalogue photos' vote on Myntra val, ship the index, report it once on Myntra test.

    python -m hs_train.photo_precedents tune --data-dir ../shared/data --model assets/model
    python -m hs_train.photo_precedents ship --data-dir ../shared/data --model assets/model
    python -m hs_train.photo_precedents test --data-dir ../shared/data --model assets/model   # once, after ship

`tune` grids (k, tau, beta) on Myntra **val** with an index of Myntra **train** photos only and keeps the setting with
the best mean HS4 over the three photo conditions (photo only, brand word + photo, title + photo). Underneath is the
model alone: the shipped text index holds the Myntra val titles, so its vote on val would be a leak.
`ship` writes an index of Myntra train + val photos (test stays out) with the chosen setting next to the model.
`test` reports Myntra **test** before -> after: the model alone, the model + the photo vote (train-only index and
the shipped one), and the product as served (`Classifier.predict_features`: text vote, then photo vote).
Results go to docs/results/photo_precedents.json and .md. The eval/ files are never read.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hs_model.photo_precedents import (
    INDEX_CARD,
    INDEX_FILE,
    PHOTO_DATASET,
    PhotoIndex,
    PhotoVoteConfig,
    fuse_photo_vote,
)
from hs_model.precedents import code_tables, valid_code_set
from hs_model.predict import Classifier, Features
from hs_train.datasets import Example, Split, load_myntra
from hs_train.features import cached_text_embeddings, myntra_image_features

log = logging.getLogger(__name__)

CONDITIONS = ("photo only", "brand word + photo", "title + photo")
GRID_K = (3, 5, 10, 20)
GRID_TAU = (0.02, 0.05, 0.1)
GRID_BETA = (1.0, 2.0, 3.0, 4.0, 6.0)


@dataclass
class PhotoSplit:
    """One Myntra split with a readable photo: examples, pooled photo features [N, C], ImageNet probs, gold headings."""

    name: str
    rows: list[Example]
    pooled: torch.Tensor
    probs: torch.Tensor
    golds: torch.Tensor  # [N] heading index in the label space


def load_split(clf: Classifier, data_dir: Path, split: Split) -> PhotoSplit:
    img, row_of = myntra_image_features(clf.image_tower, data_dir)
    heads = {c: i for i, c in enumerate(clf.space.headings)}
    rows = [e for e in load_myntra(data_dir, split) if e.id in row_of and bool(img["ok"][row_of[e.id]])]
    outside = [e for e in rows if e.hs not in heads]
    if outside:
        log.warning("Myntra %s: %d rows whose heading is not in HS 2022 left out", split, len(outside))
    rows = [e for e in rows if e.hs in heads]
    idx = torch.tensor([row_of[e.id] for e in rows], dtype=torch.long)
    golds = torch.tensor([heads[e.hs] for e in rows], dtype=torch.long)
    return PhotoSplit(split, rows, img["pooled"][idx], img["probs"][idx], golds)


def condition_features(clf: Classifier, s: PhotoSplit) -> dict[str, Features]:
    """The three photo conditions of the Myntra report as the classifier's inputs (titles, first word, nothing)."""
    n = len(s.rows)
    titles = [e.text or "" for e in s.rows]
    brands = [t.split()[0] if t.split() else "" for t in titles]
    has_image = torch.ones(n, dtype=torch.bool)
    out = {"photo only": Features(torch.zeros(n, clf.text_tower.dim), s.pooled, s.probs, torch.zeros(n, dtype=torch.bool), has_image, texts=("",) * n)}  # fmt: skip
    for name, texts, tag in (("brand word + photo", brands, "brand"), ("title + photo", titles, "title")):
        emb = cached_text_embeddings(clf.text_tower, texts, f"myntra-{s.name}-{tag}")
        has_text = torch.tensor([bool(t.strip()) for t in texts])
        out[name] = Features(emb, s.pooled, s.probs, has_text, has_image, texts=tuple(texts))
    return out


@torch.inference_mode()
def model_scores(clf: Classifier, feats: Features, text_vote: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(subheading) [N, S] of the model alone (or with the shipped text vote) and the image gate [N]."""
    out = clf.model(*feats.as_inputs(clf.device))
    lp6 = clf.model.level_log_probs(out.logits, 6)
    if text_vote and clf.precedents is not None and bool(feats.has_text.any()):
        lp6, _, _ = clf._vote(lp6, feats, out.text_joint, out.gates[:, 0])
    return lp6.float().cpu(), out.gates[:, 1].float().cpu()


def hs4(clf: Classifier, lp6: torch.Tensor, golds: torch.Tensor) -> float:
    lp4 = clf.model.level_log_probs(lp6, 4, temperature=False)
    return round(100 * (lp4.argmax(1) == golds).float().mean().item(), 2)


def with_photo_vote(clf: Classifier, index: PhotoIndex, lp6: torch.Tensor, gate: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The product's photo vote (search, vote, fuse) on precomputed model scores."""
    v4 = index.vote(index.search(pooled), code_tables(clf.space.subheadings)[4])
    return fuse_photo_vote(lp6, v4, gate, index.config.beta, clf.model.sub_to_head.cpu())


def build_index(clf: Classifier, splits: list[PhotoSplit], cfg: PhotoVoteConfig) -> PhotoIndex:
    index = PhotoIndex(clf.image_tower.name, clf.image_tower.dim, config=cfg)
    for s in splits:
        rep = index.add(
            s.pooled,
            [e.hs for e in s.rows],
            [e.text or "" for e in s.rows],
            [(PHOTO_DATASET, e.id, "") for e in s.rows],
            valid_code_set(),
        )
        log.info("photo index: %s %s", s.name, rep)
    return index


def tune(clf: Classifier, data_dir: Path) -> dict:
    train, val = load_split(clf, data_dir, "train"), load_split(clf, data_dir, "val")
    index = build_index(clf, [train], PhotoVoteConfig())
    conds = {name: model_scores(clf, f, text_vote=False) for name, f in condition_features(clf, val).items()}
    base = {name: hs4(clf, lp6, val.golds) for name, (lp6, _) in conds.items()}
    grid: list[dict[str, float]] = []
    for k in GRID_K:
        for tau in GRID_TAU:
            index.config = PhotoVoteConfig(k, tau, 1.0)
            v4 = index.vote(index.search(val.pooled), code_tables(clf.space.subheadings)[4])
            for beta in GRID_BETA:
                accs = {
                    name: hs4(clf, fuse_photo_vote(lp6, v4, gate, beta, clf.model.sub_to_head.cpu()), val.golds)
                    for name, (lp6, gate) in conds.items()
                }
                grid.append(
                    {"k": k, "tau": tau, "beta": beta, **accs, "mean": round(statistics.mean(accs.values()), 3)}
                )
    best = max(grid, key=lambda g: g["mean"])  # first of equals in grid order (smaller k, tau, beta)
    chosen = PhotoVoteConfig(int(best["k"]), float(best["tau"]), float(best["beta"]))
    log.info("chosen %s: %s", chosen, best)
    return {
        "tune": {
            "split": "Myntra val",
            "rows": len(val.rows),
            "index": {"split": "Myntra train", "rows": len(index)},
            "underneath": "model alone (codes only)",
            "before": base,
            "grid": grid,
        },
        "chosen": asdict(chosen),
    }


def ship(clf: Classifier, data_dir: Path, model_dir: Path, cfg: PhotoVoteConfig) -> dict:
    index = build_index(clf, [load_split(clf, data_dir, "train"), load_split(clf, data_dir, "val")], cfg)
    index.save(model_dir)
    sizes = {f: (model_dir / f).stat().st_size for f in (INDEX_FILE, INDEX_CARD)}
    log.info("shipped %d photos to %s (%s bytes)", len(index), model_dir, sizes)
    return {"splits": ["Myntra train", "Myntra val"], "rows": len(index), "bytes": sizes, "config": asdict(cfg)}


def test(clf: Classifier, data_dir: Path, cfg: PhotoVoteConfig) -> dict:
    """Myntra test, once: every number of the before -> after table (nothing here chooses anything)."""
    shipped = clf.photo_precedents
    if shipped is None:
        raise SystemExit("no photo index next to the model: run `ship` first")
    test_split = load_split(clf, data_dir, "test")
    train_only = build_index(clf, [load_split(clf, data_dir, "train")], cfg)
    rows = {}
    for name, feats in condition_features(clf, test_split).items():
        lp6, gate = model_scores(clf, feats, text_vote=False)
        served_lp6, served_gate = model_scores(clf, feats, text_vote=True)
        preds = clf.predict_features(feats, top_k=1)
        heads = {c: i for i, c in enumerate(clf.space.headings)}
        served = torch.tensor([heads[p.levels[4][0].code] for p in preds])
        rows[name] = {
            "model": hs4(clf, lp6, test_split.golds),
            "model + photo vote (train index)": hs4(
                clf, with_photo_vote(clf, train_only, lp6, gate, test_split.pooled), test_split.golds
            ),  # fmt: skip
            "model + photo vote (shipped index)": hs4(
                clf, with_photo_vote(clf, shipped, lp6, gate, test_split.pooled), test_split.golds
            ),  # fmt: skip
            "model + text vote (served before)": hs4(clf, served_lp6, test_split.golds),
            "model + text vote + photo vote (served now)": round(
                100 * (served == test_split.golds).float().mean().item(), 2
            ),  # fmt: skip
        }
        del served_gate
    return {"split": "Myntra test", "rows": len(test_split.rows), "config": asdict(cfg), "index_rows": {"train": len(train_only), "shipped": len(shipped)}, "hs4": rows}  # fmt: skip


def speed(index: PhotoIndex, clf: Classifier, queries: torch.Tensor, repeats: int = 200) -> dict:
    """Milliseconds per single-photo query for the vote (search + vote + fuse), median and p90 of `repeats`."""
    lp6 = torch.log_softmax(torch.randn(1, len(clf.space.subheadings)), dim=-1)
    gate, table, s2h = torch.ones(1), code_tables(clf.space.subheadings)[4], clf.model.sub_to_head.cpu()
    times = []
    for i in range(repeats):
        q = queries[i % len(queries)][None]
        t0 = time.perf_counter()
        fuse_photo_vote(lp6, index.vote(index.search(q), table), gate, index.config.beta, s2h)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"rows": len(index), "median_ms": round(times[len(times) // 2], 3), "p90_ms": round(times[int(len(times) * 0.9)], 3), "torch_threads": torch.get_num_threads()}  # fmt: skip


def to_markdown(results: dict) -> str:
    t = results.get("tune", {})
    lines = ["# Photo precedents (catalogue photos' vote)", ""]
    if t:
        c = results["chosen"]
        lines += [
            f"Tuned on {t['split']} ({t['rows']} rows), index of {t['index']['split']} ({t['index']['rows']} photos), "
            f"{t['underneath']} underneath. HS4 top-1 %. Chosen: k = {c['k']}, tau = {c['tau']}, beta = {c['beta']}.",
            "",
            "| k | tau | beta | " + " | ".join(CONDITIONS) + " | mean |",
            "|---|---|---|" + "---|" * (len(CONDITIONS) + 1),
            "| – | – | 0 (model alone) | "
            + " | ".join(f"{t['before'][n]:.1f}" for n in CONDITIONS)
            + f" | {statistics.mean(t['before'].values()):.2f} |",
        ]
        for g in sorted(t["grid"], key=lambda g: -g["mean"])[:15]:
            lines.append(f"| {g['k']} | {g['tau']} | {g['beta']} | " + " | ".join(f"{g[n]:.1f}" for n in CONDITIONS) + f" | {g['mean']:.2f} |")  # fmt: skip
        lines += ["", f"(best 15 of {len(t['grid'])} settings; all in photo_precedents.json)", ""]
    if "shipped" in results:
        s = results["shipped"]
        lines += [f"Shipped: {s['rows']} photos of {' + '.join(s['splits'])}, {s['bytes']} bytes.", ""]
    if "test" in results:
        r = results["test"]
        cols = list(next(iter(r["hs4"].values())))
        lines += [
            f"{r['split']} ({r['rows']} rows), HS4 top-1 %, once, with the chosen setting "
            f"(train index {r['index_rows']['train']} photos, shipped {r['index_rows']['shipped']}):",
            "",
            "| condition | " + " | ".join(cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        lines += [f"| {n} | " + " | ".join(f"{v[c]:.1f}" for c in cols) + " |" for n, v in r["hs4"].items()]
    if "speed" in results:
        sp = results["speed"]
        lines += ["", f"Vote cost per single-photo query ({sp['rows']} photos, {sp['torch_threads']} torch thread): median {sp['median_ms']} ms, p90 {sp['p90_ms']} ms."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("tune", "ship", "test"))
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", type=Path, default=Path("assets/model"))
    ap.add_argument("--results", type=Path, default=Path("docs/results/photo_precedents.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    clf = Classifier(args.model)
    if args.step == "tune":
        results.update(tune(clf, args.data_dir))
    else:
        if "chosen" not in results:
            raise SystemExit(f"no chosen setting in {args.results}: run `tune` first")
        cfg = PhotoVoteConfig.from_dict(results["chosen"])
        if args.step == "ship":
            results["shipped"] = ship(clf, args.data_dir, args.model, cfg)
        else:
            results["test"] = test(clf, args.data_dir, cfg)
            assert clf.photo_precedents is not None  # test() refused otherwise
            results["speed"] = speed(clf.photo_precedents, clf, load_split(clf, args.data_dir, "val").pooled)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    args.results.with_suffix(".md").write_text(to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
