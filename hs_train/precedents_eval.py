"""Date-held-out experiment for the precedents vote: codes only | precedents only | fused, on every condition.

Index: CBP rulings of January-April 2026 (long description and one-line subject as two entries), UK parcels
(train split), UK brands, Myntra titles (train split, heading labels) and optionally HMRC's weak parcel labels.
Tuning (retrieval settings by grid, then the combiner's three weights and temperature by NLL): May 2026 rulings
(long and short form) and the UK parcels' validation split. Reported: HSCodeComp, ATLAS validation, May rulings
(also 5-fold cross-fitted), UK parcels test split, Myntra test. Evaluation files are only queried, never indexed.

    python -m hs_train.precedents_eval --data-dir ../shared/data --model assets/model --out docs/results
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from hs_model.lexical import LexicalIndex
from hs_model.precedents import (
    Neighbours,
    PrecedentIndex,
    VoteConfig,
    code_tables,
    fuse_log_probs,
    valid_code_set,
    voted_rows,
)
from hs_model.predict import Classifier
from hs_train.datasets import (
    convert_atlas,
    convert_hscodecomp,
    load_myntra,
    load_uk_brands,
    load_uk_parcels,
    load_uk_weak,
    split_of,
)
from hs_train.features import cached_image_features, cached_text_embeddings

log = logging.getLogger(__name__)
LEVELS = (2, 4, 6)


@dataclass
class Entry:
    text: str
    code: str
    dataset: str
    id: str
    date: str


def load_rulings(data_dir: Path) -> list[dict]:
    """CBP rulings with HS6 = first 6 digits of `hs10` (all valid HS 2022 per the data README; checked anyway)."""
    valid = valid_code_set()
    rows, bad = [], 0
    for line in (data_dir / "train" / "cbp_rulings_2026.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        hs6 = str(r.get("hs10", ""))[:6]
        if hs6 not in valid:
            bad += 1
            continue
        rows.append({**r, "hs6": hs6})
    log.info("CBP rulings: %d kept, %d with an HS6 not in HS 2022", len(rows), bad)
    return rows


# the vote settings the shipped index carries (`chosen` there; `precedents_build --results` writes them into the index)
SHIPPED_VOTE = Path("docs/results/precedents_v3_long.json")
HELD_OUT_FROM = "2026-05-01"  # rulings from this date on are held out of training and tuning (the last month)


def split_rulings(rulings: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rulings the model and the held-out index may learn from, the held-out ones: May 2026), by date."""
    return [r for r in rulings if r["date"] < HELD_OUT_FROM], [r for r in rulings if r["date"] >= HELD_OUT_FROM]


def ruling_entries(rulings: list[dict]) -> list[Entry]:
    out = []
    for r in rulings:
        for form in ("description", "short"):
            text = " ".join(str(r.get(form) or "").split())
            if text:
                out.append(Entry(text, r["hs6"], "cbp_rulings", f"{r['ruling']}:{form}", r["date"]))
    return out


def training_entries(
    data_dir: Path, uk_splits: tuple[str, ...], myntra_splits: tuple[str, ...], weak: float | None, brands: bool = True
):
    """Every labelled training example except rulings (those are split by date by the caller)."""
    out = []
    for e in load_uk_parcels(data_dir):
        if split_of(e.text or e.id) in uk_splits:
            out.append(Entry(e.text or "", e.hs, "uk_parcels", e.id, ""))
    for e in load_uk_brands(data_dir) if brands else []:
        out.append(Entry(e.text or "", e.hs, "uk_brands", e.id, ""))
    for split in myntra_splits:
        for e in load_myntra(data_dir, split):  # type: ignore[arg-type]
            if e.text:
                out.append(Entry(e.text, e.hs, "myntra", e.id, ""))
    if weak is not None:
        out += [Entry(e.text or "", e.hs, "uk_weak", e.id, "") for e in load_uk_weak(data_dir, weak)]
    return out


def build_index(
    clf: Classifier, entries: list[Entry], tag: str, scheme: str = "bm25", more: list[Entry] | None = None
) -> PrecedentIndex:
    """The index over `entries` (+ `more`, embedded and cached separately so the held-out part's cache is reused)."""
    emb = cached_text_embeddings(clf.text_tower, [e.text for e in entries], f"prec-{tag}")
    if more:
        emb = torch.cat([emb, cached_text_embeddings(clf.text_tower, [e.text for e in more], f"prec-{tag}-more")])
        entries = entries + more
    texts = [e.text for e in entries]
    index = PrecedentIndex(clf.text_tower.name, clf.text_tower.dim, lexical=LexicalIndex(scheme))  # type: ignore[arg-type]
    report = index.add(
        texts, emb, [e.code for e in entries], [(e.dataset, e.id, e.date) for e in entries], valid_code_set()
    )
    log.info("index %s: %s", tag, report)
    return index


@dataclass
class Cond:
    """One evaluation or tuning condition: the model's log P(subheading), the query texts and their vectors."""

    name: str
    golds: list[str]
    texts: list[str]
    raw: torch.Tensor  # [N, E] text tower vectors (zeros where no text)
    log_p6: torch.Tensor  # [N, S]
    joint_text: torch.Tensor  # [N, D] the model's adapted text vector
    gate: torch.Tensor  # [N] the model's weight on the description (1 for text alone)


@torch.inference_mode()
def make_cond(clf: Classifier, name: str, texts: list[str], golds: list[str], images=None, tag: str = "") -> Cond:
    n = len(texts)
    slug = "".join(ch if ch.isalnum() else "-" for ch in (tag or name).lower())[:24]
    raw = cached_text_embeddings(clf.text_tower, texts, f"precq-{slug}")
    has_text = torch.tensor([bool(t.strip()) for t in texts])
    pooled, probs = torch.zeros(n, clf.image_tower.dim), torch.zeros(n, 1000)
    has_image = torch.zeros(n, dtype=torch.bool)
    if images is not None:
        pooled, probs, has_image = images
    m = clf.model
    out = m(raw, pooled, probs, has_text, has_image)
    log_p6 = m.level_log_probs(out.logits, 6)
    return Cond(name, golds, texts, raw, log_p6.float(), m.embed_text(raw) * has_text[:, None], out.gates[:, 0].float())


def level_probs(log_p6: torch.Tensor, clf: Classifier) -> dict[int, torch.Tensor]:
    m = clf.model
    return {
        6: log_p6,
        4: m.level_log_probs(log_p6, 4, temperature=False),
        2: m.level_log_probs(log_p6, 2, temperature=False),
    }


def accuracy(scores: dict[int, torch.Tensor], golds: list[str], clf: Classifier, answered=None) -> dict[str, float]:
    """Top-1 / top-5 at each level the labels allow (labels outside HS 2022 and unanswered rows count wrong)."""
    out = {}
    for lv in LEVELS:
        codes = clf.space.codes(lv)
        pos = {c: i for i, c in enumerate(codes)}
        rows = [i for i, g in enumerate(golds) if len(g) >= lv]
        if not rows:
            continue
        top = scores[lv][rows].topk(5, dim=1).indices
        gold = torch.tensor([pos.get(golds[i][:lv], -1) for i in rows])
        if answered is not None:
            gold = torch.where(answered[rows], gold, -1)
        out[f"hs{lv}_top1"] = float((top[:, 0] == gold).float().mean())
        out[f"hs{lv}_top5"] = float((top == gold[:, None]).any(1).float().mean())
    return out


def vote_only_scores(
    index: PrecedentIndex, nb: Neighbours, cfg: VoteConfig, tables: dict[int, dict[str, int]], n: int, clf: Classifier
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Precedents alone: a plain similarity-weighted kNN vote at each level (weights = similarity, no floor).

    Returns (scores per level, answered mask); a row without any neighbour has no answer and counts wrong."""
    votes, *_ = index.vote(nb, tables, replace(cfg, min_similarity=0.0))
    out = {}
    for lv in LEVELS:
        rows, cols, w = votes[lv]
        v = torch.zeros(n, len(clf.space.codes(lv)))
        v.index_put_((torch.from_numpy(rows), torch.from_numpy(cols)), torch.from_numpy(w), accumulate=True)
        out[lv] = v
    return out, out[2].sum(1) > 0


def fuse_cond(index: PrecedentIndex, cond: Cond, nb: Neighbours, cfg: VoteConfig, tables, clf: Classifier):
    """A condition's fused log P(subheading) under `cfg`: the vote and the fusion exactly as the product runs them."""
    votes = index.vote(nb, tables, cfg)[0]
    m = clf.model
    return fuse_log_probs(cond.log_p6, votes, cfg, m.sub_to_head, m.sub_to_chap, cond.gate, nb.long_rows(cfg))


def fit_combiner(
    index: PrecedentIndex,
    parts: list[tuple[Cond, Neighbours]],
    cfg: VoteConfig,
    tables,
    clf: Classifier,
    max_rows: int = 300,
) -> VoteConfig:
    """Fit beta6, beta4, beta2 and the temperature by mean NLL over the tuning conditions (each weighs the same);
    the retrieval settings and the long-description regime of `cfg` are kept.

    Only rows with votes can move (the others keep the model's distribution), so only those enter the fit."""
    m = clf.model
    prepared = []
    for cond, nb in parts:
        votes = index.vote(nb, tables, cfg)[0]
        long_rows = torch.from_numpy(nb.long_rows(cfg))
        log_p6 = torch.where(long_rows[:, None], cfg.long_model_weight * cond.log_p6, cond.log_p6)
        voted = voted_rows(votes, len(cond.golds))
        rows = voted.nonzero().flatten()
        if len(rows) == 0:
            continue
        if len(rows) > max_rows:  # a fixed subsample keeps each fit to seconds on 2 cores
            rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:max_rows].sort().values]
        v = _vote_matrices(votes, cond.log_p6.shape, m) * cond.gate[None, :, None]  # [3, N, S]
        level = 6 if all(len(g) == 6 for g in cond.golds) else 4  # Myntra: heading labels
        pos = {c: i for i, c in enumerate(clf.space.codes(level))}
        gold = torch.tensor([pos.get(cond.golds[i][:level], -1) for i in rows.tolist()])
        ok = gold >= 0
        prepared.append((log_p6[rows][ok], v[:, rows][:, ok], gold[ok], len(cond.golds), level))
    if not prepared:
        return cfg
    params = torch.tensor([0.0, 0.0, 0.0, 0.0], requires_grad=True)  # beta6, beta4, beta2, log temperature
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=40, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.zeros(())
        for log_p, v, gold, n, level in prepared:
            z = (log_p + torch.einsum("j,jns->ns", params[:3], v)) / params[3].exp()
            lp = torch.log_softmax(z, dim=-1)
            if level == 4:
                lp = m.level_log_probs(lp, 4, temperature=False)
            lp = lp.gather(1, gold[:, None]).squeeze(1)
            # unvoted rows contribute their (constant) NLL: scale so every condition weighs the same
            loss = loss - lp.sum() / n
        loss = loss / len(prepared) + 1e-4 * (params[:3] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    b6, b4, b2, lt = params.detach().tolist()
    return replace(cfg, beta6=b6, beta4=b4, beta2=b2, temperature=float(np.exp(lt)))


def _vote_matrices(votes, shape, m) -> torch.Tensor:
    """[3, Q, S] the votes at 6, 4 and 2 digits spread onto the subheadings."""
    q, s = shape
    out = torch.zeros(3, q, s)
    for j, (lv, parent) in enumerate(((6, None), (4, m.sub_to_head), (2, m.sub_to_chap))):
        rows, cols, w = votes[lv]
        if len(rows) == 0:
            continue
        n = s if parent is None else int(parent.max()) + 1
        v = torch.zeros(q, n)
        v.index_put_((torch.from_numpy(rows), torch.from_numpy(cols)), torch.from_numpy(w), accumulate=True)
        out[j] = v if parent is None else v[:, parent]
    return out


def review(log_p6: torch.Tensor, golds: list[str], clf: Classifier) -> dict:
    """The review route at the model's threshold (heading confidence): share answered, accuracy when answered, ECE."""
    from hs_train.evaluate import expected_calibration_error

    p4 = level_probs(log_p6, clf)[4].exp()
    conf, top = p4.max(1)
    codes = clf.space.codes(4)
    hit = np.array([codes[int(t)] == g[:4] for t, g in zip(top, golds, strict=True)], dtype=float)
    answered = (conf >= float(clf.model.review_threshold)).numpy()
    return {
        "coverage": float(answered.mean()),
        "accuracy_when_answered": float(hit[answered].mean()) if answered.any() else None,
        "ece_hs4": expected_calibration_error(conf.numpy(), hit),
    }


def evaluate_cond(index, cond: Cond, nb: Neighbours, cfg: VoteConfig, tables, clf) -> dict:
    votes, *_ = index.vote(nb, tables, cfg)
    fused = fuse_cond(index, cond, nb, cfg, tables, clf)
    voted = int(voted_rows(votes, len(cond.golds)).sum())
    return {
        "rows": len(cond.golds),
        "rows_with_votes": voted,
        "review": {"codes-only": review(cond.log_p6, cond.golds, clf), "fused": review(fused, cond.golds, clf)},
        "codes-only": accuracy(level_probs(cond.log_p6, clf), cond.golds, clf),
        "precedents-only": accuracy(
            *vote_only_scores(index, nb, cfg, tables, len(cond.golds), clf)[:1],
            cond.golds,
            clf,
            vote_only_scores(index, nb, cfg, tables, len(cond.golds), clf)[1],
        ),
        "fused": accuracy(level_probs(fused, clf), cond.golds, clf),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", type=Path, default=Path("assets/model"))
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--weak-min-score", type=float, default=None, help="also index HMRC weak labels at/above it")
    ap.add_argument("--schemes", nargs="+", default=["bm25", "tfidf"], help="lexical scores to try")
    ap.add_argument("--spaces", nargs="+", default=["raw", "joint"], help="text tower vectors, or the model's adapted")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="lexical weights")
    ap.add_argument("--floors", type=float, nargs="+", default=[0.0, 0.2], help="hybrid similarity floors")
    ap.add_argument("--ks", type=int, nargs="+", default=[5], help="neighbours that vote")
    ap.add_argument(
        "--long-words", type=int, nargs="+", default=[0, 40, 64], help="long-description thresholds (0: none)"
    )
    ap.add_argument("--long-lams", type=float, nargs="+", default=[0.5, 0.75, 1.0], help="lexical weights, long")
    ap.add_argument("--long-model-weights", type=float, nargs="+", default=[1.0, 0.6, 0.3], help="model term, long")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.time()
    data = args.data_dir
    clf = Classifier(args.model)
    tables = code_tables(clf.space.subheadings)

    rulings = load_rulings(data)
    early, may = split_rulings(rulings)
    base = training_entries(data, ("train",), ("train",), args.weak_min_score)
    entries = ruling_entries(early) + base
    tag = f"heldout-w{args.weak_min_score}"

    # --- conditions -------------------------------------------------------------------------------------
    uk = load_uk_parcels(data)
    uk_val = [e for e in uk if split_of(e.text or e.id) == "val"]
    uk_test = [e for e in uk if split_of(e.text or e.id) == "test"]
    tune = [
        make_cond(clf, "May rulings, long", [" ".join(r["description"].split()) for r in may], [r["hs6"] for r in may]),
        make_cond(clf, "May rulings, short", [r["short"] for r in may], [r["hs6"] for r in may]),
        make_cond(clf, "UK parcels, val", [e.text or "" for e in uk_val], [e.hs for e in uk_val]),
    ]
    myntra_val = [e for e in load_myntra(data, "val") if e.images]
    val_img = cached_image_features(clf.image_tower, [e.images[0] for e in myntra_val], "myntra-val")
    val_photo = (val_img["pooled"], val_img["probs"], val_img["ok"])
    vg = [e.hs for e in myntra_val]
    val_brand = [(e.text or "").split()[0] if (e.text or "").split() else "" for e in myntra_val]
    tune += [
        make_cond(clf, "Myntra val, title only", [e.text or "" for e in myntra_val], vg, None, "myntra-val-title"),
        make_cond(clf, "Myntra val, brand word + photo", val_brand, vg, val_photo, "myntra-val-brand"),
    ]
    hcc = convert_hscodecomp(data / "eval" / "hscodecomp.jsonl")
    atlas = convert_atlas(data / "eval" / "atlas_validation.jsonl")
    myntra = [e for e in load_myntra(data, "test") if e.images]
    img = cached_image_features(clf.image_tower, [e.images[0] for e in myntra], "myntra-test")
    photo = (img["pooled"], img["probs"], img["ok"])
    no_photo = None
    brand = [(e.text or "").split()[0] if (e.text or "").split() else "" for e in myntra]
    mg = [e.hs for e in myntra]
    report = [
        make_cond(clf, "HSCodeComp, text", [r["text"] for r in hcc], [r["hs"] for r in hcc]),
        make_cond(clf, "ATLAS validation, text", [r["text"] for r in atlas], [r["hs"] for r in atlas]),
        tune[0],
        tune[1],
        make_cond(clf, "UK parcels, test", [e.text or "" for e in uk_test], [e.hs for e in uk_test]),
        make_cond(clf, "Myntra test, title only", [e.text or "" for e in myntra], mg, no_photo, "myntra-title"),
        make_cond(clf, "Myntra test, title + photo", [e.text or "" for e in myntra], mg, photo, "myntra-title"),
        make_cond(clf, "Myntra test, brand word + photo", brand, mg, photo, "myntra-brand"),
        make_cond(clf, "Myntra test, photo only", [""] * len(myntra), mg, photo, "myntra-none"),
    ]

    # --- retrieval grid ---------------------------------------------------------------------------------
    results: dict = {"index_rows": {}, "grid": [], "conditions": {}}
    best = None
    schemes, spaces, lams, floors, ks = args.schemes, args.spaces, args.lams, args.floors, args.ks
    conds = {c.name: c for c in tune + report}
    nbs: dict = {}
    indexes = {}
    for scheme in schemes:
        index = build_index(clf, entries, tag, scheme)
        indexes[scheme] = index
        results["index_rows"] = {
            ds: sum(1 for p in index.provenance if p[0] == ds) for ds in {p[0] for p in index.provenance}
        }
        for name, cond in conds.items():
            hits = index.lexical.search(cond.texts, 50)
            for space in spaces:
                emb = cond.raw if space == "raw" else cond.joint_text
                idx = index if space == "raw" else _joint_view(index, clf)
                nbs[scheme, space, name] = idx.neighbours(emb, cond.texts, VoteConfig(candidates=50), lexical_hits=hits)
        log.info("neighbours for %s done (%.0f s)", scheme, time.time() - t0)
    for scheme, space, lam, floor, k in itertools.product(schemes, spaces, lams, floors, ks):
        cfg = VoteConfig(k=k, lexical_weight=lam, lexical_scheme=scheme, min_similarity=floor, space=space)  # type: ignore[arg-type]
        index = indexes[scheme]
        parts = [(c, nbs[scheme, space, c.name]) for c in tune]
        fitted = fit_combiner(index, parts, cfg, tables, clf)
        accs = [tune_hs4(index, c, nb, fitted, tables, clf) for c, nb in parts]
        row = {**asdict(fitted), "tune_hs4": accs, "tune_mean_hs4": float(np.mean(accs))}
        results["grid"].append(row)
        if best is None or row["tune_mean_hs4"] > best[0]["tune_mean_hs4"]:
            best = (row, fitted, space)
        log.info("%s %s lam=%.2f floor=%.2f k=%d -> %s", scheme, space, lam, floor, k, [round(a, 3) for a in accs])
    assert best is not None  # every grid option takes one value at least (nargs="+")
    row, cfg, space = best
    base = cfg
    # second stage: how long descriptions (a ruling's full text) are read, everything else kept as fitted (the
    # combiner is not refitted, so a description under the threshold is scored bit for bit as before)
    index = indexes[cfg.lexical_scheme]
    results["long_grid"] = []
    longs = long_regimes(args.long_words, args.long_lams, args.long_model_weights)
    for regime in longs:
        choice = replace(base, **regime)
        accs = [tune_hs4(index, c, nbs[choice.lexical_scheme, space, c.name], choice, tables, clf) for c in tune]
        long_row = {**asdict(choice), "tune_hs4": accs, "tune_mean_hs4": float(np.mean(accs))}
        results["long_grid"].append(long_row)
        log.info("long %s -> %s", regime, [round(a, 3) for a in accs])
        if long_row["tune_mean_hs4"] > row["tune_mean_hs4"]:
            row, cfg = long_row, choice
    results["chosen"] = row
    log.info("chosen: %s", row)
    for name, cond in conds.items():
        results["conditions"][name] = evaluate_cond(index, cond, nbs[cfg.lexical_scheme, space, name], cfg, tables, clf)
        log.info("%s: %s", name, results["conditions"][name])
    # May scored with what was chosen without it: the combiner only (base settings), then the long regime too
    results["crossfit_may_base"] = crossfit(index, tune, nbs, base, [], space, tables, clf)
    results["crossfit_may"] = crossfit(index, tune, nbs, base, longs, space, tables, clf)
    results["seconds"] = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    results["weak_min_score"] = args.weak_min_score
    (args.out / "precedents.json").write_text(json.dumps(results, indent=2))
    (args.out / "precedents_table.md").write_text(to_markdown(results))
    print(to_markdown(results))


def _joint_view(index: PrecedentIndex, clf: Classifier) -> PrecedentIndex:
    """The same index with its vectors moved through the model's text adapter (the 'joint' variant)."""
    view = index.subset(range(len(index)))
    with torch.inference_mode():
        view.emb = clf.model.embed_text(index.matrix.float()).to(torch.float16)
    return view


def tune_hs4(index: PrecedentIndex, cond: Cond, nb: Neighbours, cfg: VoteConfig, tables, clf: Classifier) -> float:
    return accuracy(level_probs(fuse_cond(index, cond, nb, cfg, tables, clf), clf), cond.golds, clf)["hs4_top1"]


def long_regimes(words: list[int], lams: list[float], model_weights: list[float]) -> list[dict]:
    """The long-description regimes a grid tries (thresholds of 0 words mean no regime and are left out)."""
    return [
        {"long_words": w, "long_lexical_weight": lam, "long_model_weight": a}
        for w, lam, a in itertools.product(words, lams, model_weights)
        if w > 0
    ]


def crossfit(
    index, tune: list[Cond], nbs, base: VoteConfig, regimes: list[dict], space: str, tables, clf, folds: int = 5
) -> dict:
    """May rulings scored with settings chosen without them. On each of `folds` folds of the May rulings, the
    combiner is fitted on the other folds (+ the other tuning conditions), then the long-description regime (none,
    or one of `regimes`) with the best mean HS4 there is kept, and the fold is scored with it."""
    fold_of = np.random.default_rng(0).integers(0, folds, len(tune[0].golds))
    fused_all = {target: torch.zeros_like(tune[target].log_p6) for target in (0, 1)}
    picked = []
    for f in range(folds):
        tr, te = np.nonzero(fold_of != f)[0], np.nonzero(fold_of == f)[0]
        parts = []
        for i, c in enumerate(tune):
            rows = tr if i < 2 else np.arange(len(c.golds))  # May long and short share the rulings' order
            parts.append((_rows(c, rows), _rows_nb(nbs[base.lexical_scheme, space, c.name], rows)))
        fitted = fit_combiner(index, parts, base, tables, clf)
        best: tuple[float, VoteConfig] | None = None
        for cfg in [fitted, *(replace(fitted, **r) for r in regimes)]:
            mean = float(np.mean([tune_hs4(index, c, nb, cfg, tables, clf) for c, nb in parts]))
            if best is None or mean > best[0]:
                best = (mean, cfg)
        assert best is not None  # `fitted` at least
        chosen = best[1]
        picked.append({k: getattr(chosen, k) for k in ("long_words", "long_lexical_weight", "long_model_weight")})
        for target in (0, 1):
            nb = _rows_nb(nbs[chosen.lexical_scheme, space, tune[target].name], te)
            fused_all[target][torch.from_numpy(te)] = fuse_cond(index, _rows(tune[target], te), nb, chosen, tables, clf)
    out: dict = {tune[t].name: accuracy(level_probs(fused_all[t], clf), tune[t].golds, clf) for t in (0, 1)}
    out["picked"] = picked
    return out


def _rows(c: Cond, rows: np.ndarray) -> Cond:
    r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    return Cond(
        c.name,
        [c.golds[i] for i in rows],
        [c.texts[i] for i in rows],
        c.raw[r],
        c.log_p6[r],
        c.joint_text[r],
        c.gate[r],
    )


def _rows_nb(nb: Neighbours, rows) -> Neighbours:
    if rows is None:
        return nb
    return Neighbours(nb.idx[rows], nb.cos[rows], nb.lex[rows], None if nb.words is None else nb.words[rows])


def to_markdown(results: dict) -> str:
    lines = [
        "| condition | rows (with votes) | codes only HS2 / HS4 / HS6 | precedents only HS2 / HS4 / HS6 "
        "| fused HS2 / HS4 / HS6 | fused − best single, HS4 |",
        "|---|---|---|---|---|---|",
    ]

    def f(m, lv):
        v = m.get(f"hs{lv}_top1")
        return "–" if v is None else f"{100 * v:.1f}"

    for name, r in results["conditions"].items():
        c, p, fu = r["codes-only"], r["precedents-only"], r["fused"]
        delta = 100 * (fu["hs4_top1"] - max(c["hs4_top1"], p["hs4_top1"]))
        lines.append(
            f"| {name} | {r['rows']} ({r['rows_with_votes']}) | {f(c, 2)} / {f(c, 4)} / {f(c, 6)} "
            f"| {f(p, 2)} / {f(p, 4)} / {f(p, 6)} | {f(fu, 2)} / {f(fu, 4)} / {f(fu, 6)} | {delta:+.1f} |"
        )
    for key, how in (
        ("crossfit_may_base", "combiner cross-fitted (5 folds), one regime"),
        ("crossfit_may", "combiner and long-description regime chosen on the other folds"),
    ):
        for name, m in results.get(key, {}).items():
            if name != "picked":
                lines.append(f"| {name}, {how} | | | | {f(m, 2)} / {f(m, 4)} / {f(m, 6)} | |")
    lines += [
        "",
        "| condition | coverage / acc. when answered / ECE (HS4), codes only | same, fused |",
        "|---|---|---|",
    ]
    for name, r in results["conditions"].items():
        cells = []
        for key in ("codes-only", "fused"):
            v = r["review"][key]
            acc = "–" if v["accuracy_when_answered"] is None else f"{100 * v['accuracy_when_answered']:.1f}"
            cells.append(f"{100 * v['coverage']:.0f} % / {acc} / {v['ece_hs4']:.3f}")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
