"""The cross-encoder reranker measured: first stage alone vs first stage + reranker, per held-out condition.

Three steps, each saving what the next reads (the slow parts run once):
1. `first-stage`: the first stage's log P(subheading) on every condition. Held-out conditions use
   `hs_train.heldout_compare`'s setup (the shipped model with its own precedent index over the training rows
   only: rulings of January-April 2026, UK parcels and Myntra train splits, UK brands, HMRC weak >= 500);
   HSCodeComp and ATLAS use the model as served (head + shipped precedents vote; the guided questions' step
   `hs_model.questions.guide` is not applied: it only reorders within a near tie and needs no reranker).
2. `score`: the reranker's score for the first stage's top `--top` candidates of every row.
3. `report`: w and the temperature fitted by NLL (6 digits) on UK parcels val + May 2026 rulings (long and
   one-line, equal weights) for each N; May also 5-fold cross-fitted (w fitted without the fold); top-1 at 2, 4, 6
   digits per condition; the reranker's CPU time for one prediction (N pairs, 1 and 2 threads).

    python -m hs_train.rerank_eval first-stage --out /work/runs/rerank/eval --shared
    python -m hs_train.rerank_eval score --reranker /work/runs/rerank/model --out /work/runs/rerank/eval --top 20
    python -m hs_train.rerank_eval report --reranker /work/runs/rerank/model --out /work/runs/rerank/eval \
        --results docs/results
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hs_train.rerank import CONFIG_FILE, CrossEncoder, RerankConfig, code_side_texts, combine

log = logging.getLogger(__name__)
LEVELS = (2, 4, 6)
TUNE = ("UK parcels, val", "May 2026 rulings, full description", "May 2026 rulings, one-line")
HELDOUT = (*TUNE, "UK parcels, test", "Myntra test, title only (500-row sample)")
SHARED = ("HSCodeComp, text", "ATLAS validation, text")
FIRST_STAGE_FILE = "first_stage.safetensors"


# -- 1. first stage ----------------------------------------------------------------------------------------------
def first_stage(model_dir: Path, data: Path, results_file: Path, shared: bool) -> dict:
    """{condition: {texts, golds, log_p6 [N, S]}} for the held-out conditions (and the shared eval files)."""
    from hs_model.precedents import VoteConfig, code_tables
    from hs_model.predict import Classifier, Query
    from hs_train.heldout_compare import heldout_conditions
    from hs_train.precedents_eval import (
        _joint_view,
        build_index,
        fuse_cond,
        load_rulings,
        make_cond,
        ruling_entries,
        split_rulings,
        training_entries,
    )

    chosen = json.loads(results_file.read_text())
    cfg = VoteConfig.from_dict(chosen["chosen"])
    weak = chosen.get("weak_min_score")
    clf = Classifier(model_dir)
    early = split_rulings(load_rulings(data))[0]
    entries = ruling_entries(early) + training_entries(data, ("train",), ("train",), weak)
    index = build_index(clf, entries, f"heldout-w{weak}", cfg.lexical_scheme)
    if cfg.space == "joint":
        index = _joint_view(index, clf)
    tables = code_tables(clf.space.subheadings)
    m = clf.model
    out: dict = {"version": clf.version, "index_rows": len(entries)}
    for name, (texts, golds) in heldout_conditions(data, myntra_rows=500).items():
        cond = make_cond(clf, name, texts, golds)
        nb = index.neighbours(cond.raw if cfg.space == "raw" else cond.joint_text, cond.texts, cfg)
        fused = fuse_cond(index, cond, nb, cfg, tables, clf)
        out[name] = {"texts": texts, "golds": golds, "log_p6": fused.float()}
        log.info("first stage: %s (%d rows)", name, len(texts))
    if shared:
        from hs_train.datasets import convert_atlas, convert_hscodecomp

        for name, rows in (
            ("HSCodeComp, text", convert_hscodecomp(data / "eval" / "hscodecomp.jsonl")),
            ("ATLAS validation, text", convert_atlas(data / "eval" / "atlas_validation.jsonl")),
        ):
            texts, golds = [r["text"] for r in rows], [r["hs"] for r in rows]
            parts = []
            with torch.inference_mode():
                for s in range(0, len(texts), 64):
                    feats = clf.encode([Query(t) for t in texts[s : s + 64]])
                    res = m(*feats.as_inputs(clf.device))
                    lp = m.level_log_probs(res.logits, 6)
                    lp, _, _ = clf._vote(lp, feats, res.text_joint, res.gates[:, 0])  # as served
                    parts.append(lp.float().cpu())
            out[name] = {"texts": texts, "golds": golds, "log_p6": torch.cat(parts)}
            log.info("first stage (served): %s (%d rows)", name, len(texts))
    out["subheadings"] = list(clf.space.subheadings)
    return out


# -- 2. reranker scores ------------------------------------------------------------------------------------------
def load_reranker(folder: Path, data: Path) -> CrossEncoder:
    cfg = RerankConfig(**json.loads((folder / CONFIG_FILE).read_text())["config"])
    model = CrossEncoder.packaged(cfg)
    model.load_trained(folder)
    model.set_code_texts(code_side_texts(data, cfg.national_lines))
    return model.eval()


@torch.inference_mode()
def score_top(model: CrossEncoder, fs: dict, names: list[str], top: int, start: int = 0) -> dict:
    """The reranker's scores for ranks start..top-1 of the first stage (a later run can add deeper ranks)."""
    codes = fs["subheadings"]
    out = {}
    for name in names:
        c = fs[name]
        idx = c["log_p6"].topk(top, dim=1).indices[:, start:]  # [Q, top - start]
        scores = torch.zeros(idx.shape)
        t0 = time.perf_counter()
        for q, text in enumerate(c["texts"]):
            scores[q] = model.score_candidates(text, [codes[j] for j in idx[q].tolist()])
        out[name] = {"top": idx, "scores": scores, "start": start, "seconds": time.perf_counter() - t0}
        log.info("scored %s: %d x %d pairs in %.0f s", name, len(c["texts"]), top - start, out[name]["seconds"])
    return out


def save_parts(obj: dict, path: Path) -> None:
    """A nest of dicts holding tensors, strings and numbers, as safetensors (the tensors) + JSON in its metadata
    (the rest): no pickle, so nothing in the file can run code when it is read back."""
    tensors: dict[str, torch.Tensor] = {}

    def strip(x: object, key: str) -> object:
        if isinstance(x, torch.Tensor):
            tensors[key] = x.contiguous()
            return {"__tensor__": key}
        if isinstance(x, dict):
            return {k: strip(v, f"{key}/{k}") for k, v in x.items()}
        return x

    meta = strip(obj, "")
    save_file(tensors, str(path), metadata={"json": json.dumps(meta)})


def load_parts(path: Path) -> dict:
    """What `save_parts` wrote."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["json"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys(), no iteration

    def fill(x: object) -> object:
        if isinstance(x, dict):
            return tensors[x["__tensor__"]] if set(x) == {"__tensor__"} else {k: fill(v) for k, v in x.items()}
        return x

    out = fill(meta)
    assert isinstance(out, dict)
    return out


def merge_scores(files: list[Path]) -> dict:
    """Score files -> one {condition: top, scores, seconds}, rank ranges joined in order (they must be contiguous)."""
    parts: dict[str, list[dict]] = {}
    for file in files:
        for name, part in load_parts(file).items():
            parts.setdefault(name, []).append(part)
    out = {}
    for name, ps in parts.items():
        ps.sort(key=lambda p: p.get("start", 0))
        width = 0
        for p in ps:
            if p.get("start", 0) != width:
                raise ValueError(f"{name}: scored ranks are not contiguous at {width}")
            width += p["top"].shape[1]
        out[name] = {
            "top": torch.cat([p["top"] for p in ps], dim=1),
            "scores": torch.cat([p["scores"] for p in ps], dim=1),
            "seconds": sum(p["seconds"] for p in ps),
        }
    return out


# -- 3. fit and report -------------------------------------------------------------------------------------------
def level_log_probs(log_p6: torch.Tensor, subheadings: list[str], level: int) -> tuple[torch.Tensor, list[str]]:
    """Sum the subheadings' probabilities into their heading or chapter. [Q, S] -> [Q, n_level]"""
    if level == 6:
        return log_p6, subheadings
    parents = sorted({c[:level] for c in subheadings})
    pos = {p: i for i, p in enumerate(parents)}
    parent = torch.tensor([pos[c[:level]] for c in subheadings])
    p = torch.zeros(log_p6.shape[0], len(parents)).index_add_(1, parent, log_p6.exp())
    return p.clamp_min(1e-30).log(), parents


def top1(log_p6: torch.Tensor, golds: list[str], subheadings: list[str]) -> dict[str, float]:
    out = {}
    for lv in LEVELS:
        rows = [i for i, g in enumerate(golds) if len(g) >= lv]
        if not rows:
            continue
        lp, codes = level_log_probs(log_p6[rows], subheadings, lv)
        pred = lp.argmax(1).tolist()
        out[f"hs{lv}_top1"] = sum(codes[p] == golds[i][:lv] for p, i in zip(pred, rows, strict=True)) / len(rows)
    return out


def flips(before: torch.Tensor, after: torch.Tensor, golds: list[str], subheadings: list[str]) -> dict[str, list[int]]:
    """Paired change per level: [rows wrong before and right after, rows right before and wrong after]."""
    out = {}
    for lv in LEVELS:
        rows = [i for i, g in enumerate(golds) if len(g) >= lv]
        if not rows:
            continue
        hits = []
        for lp in (before, after):
            pred, codes = level_log_probs(lp[rows], subheadings, lv)
            hits.append([codes[p] == golds[i][:lv] for p, i in zip(pred.argmax(1).tolist(), rows, strict=True)])
        pairs = list(zip(*hits, strict=True))
        out[f"hs{lv}"] = [sum(b and not a for a, b in pairs), sum(a and not b for a, b in pairs)]
    return out


def fit(parts: list, fixed_w: float | None = None) -> tuple[float, float]:
    """w and T by the mean 6-digit NLL over conditions (each weighs the same); rows whose gold is outside the top N
    keep the NLL the mass split gives them (the gold's share is untouched), so only rows with it inside count.
    fixed_w: fit T alone (the control: how much of a change is the temperature's)."""
    params = torch.tensor([fixed_w or 0.0, 0.0], requires_grad=True)  # w, log T
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.zeros(())
        for lp, sc, gold_pos, n in parts:
            if len(lp) == 0:
                continue
            z = torch.log_softmax((lp + params[0] * sc) / params[1].exp(), dim=1)
            loss = loss - z.gather(1, gold_pos[:, None]).sum() / n
        loss = loss / len(parts)
        loss.backward()
        return loss

    if fixed_w is not None:
        params.register_hook(lambda g: g * torch.tensor([0.0, 1.0]))
    opt.step(closure)
    w, lt = params.detach().tolist()
    return float(w), float(np.exp(lt))


def fit_parts(fs: dict, sc: dict, names, n: int, rows: dict[str, np.ndarray] | None = None):
    codes = fs["subheadings"]
    pos = {c: i for i, c in enumerate(codes)}
    parts = []
    for name in names:
        keep = rows[name] if rows and name in rows else np.arange(len(fs[name]["golds"]))
        top = sc[name]["top"][keep, :n]
        lp = fs[name]["log_p6"][keep].gather(1, top)
        gold = torch.tensor([pos.get(fs[name]["golds"][i], -1) for i in keep])
        hit = top == gold[:, None]
        inside = hit.any(1)
        parts.append((lp[inside], sc[name]["scores"][keep, :n][inside], hit[inside].float().argmax(1), len(keep)))
    return parts


def reranked(fs: dict, sc: dict, name: str, n: int, w: float, t: float, rows=None) -> torch.Tensor:
    keep = rows if rows is not None else np.arange(len(fs[name]["golds"]))
    return combine(fs[name]["log_p6"][keep], sc[name]["top"][keep, :n], sc[name]["scores"][keep, :n], w, t)


def crossfit_may(fs: dict, sc: dict, n: int, folds: int = 5) -> dict[str, dict[str, float]]:
    """May rulings with w, T fitted on UK val + the other folds (long and one-line share the rulings' order)."""
    may = TUNE[1:]
    fold_of = np.random.default_rng(0).integers(0, folds, len(fs[may[0]]["golds"]))
    out = {}
    for target in may:
        fused = torch.zeros_like(fs[target]["log_p6"])
        for f in range(folds):
            tr, te = np.nonzero(fold_of != f)[0], np.nonzero(fold_of == f)[0]
            w, t = fit(fit_parts(fs, sc, TUNE, n, {m: tr for m in may}))
            fused[torch.from_numpy(te)] = reranked(fs, sc, target, n, w, t, te)
        out[target] = top1(fused, fs[target]["golds"], fs["subheadings"])
    return out


def served_top1(clf, fs: dict, sc: dict, name: str, n: int, w: float, t: float) -> dict[str, float]:
    """Top-1 through the product path (`Classifier.predict_batch`: head, shipped precedents vote, guidance), the
    reranker combined right after the vote (w = 0, T = 1: the product as served). The reranker's scores are the
    saved ones for the saved first stage's top N; a row whose served top N differs from it is counted and logged."""
    from hs_model.predict import Query

    texts, golds = fs[name]["texts"], fs[name]["golds"]
    original = clf._vote
    preds, mismatched = [], 0
    try:
        for s in range(0, len(texts), 64):
            rows = slice(s, s + 64)

            def patched(log_p6, feats, text_joint, text_gate, rows=rows):
                nonlocal mismatched
                fused, evidence, voted = original(log_p6, feats, text_joint, text_gate)
                top, scores = sc[name]["top"][rows, :n], sc[name]["scores"][rows, :n]
                same = (fused.float().cpu().topk(n, dim=1).indices.sort(1).values == top.sort(1).values).all(1)
                mismatched += int((~same).sum())
                return combine(fused.float().cpu(), top, scores, w, t).to(fused.device), evidence, voted

            clf._vote = patched
            preds += clf.predict_batch([Query(x) for x in texts[rows]], top_k=5)
    finally:
        clf._vote = original
    if mismatched:
        log.warning("%s: %d rows whose served top %d differs from the saved first stage", name, mismatched, n)
    out: dict[str, float] = {"rows_top_n_mismatch": float(mismatched)}
    for lv in LEVELS:
        hits = [p.levels[lv][0].code.digits == g[:lv] for p, g in zip(preds, golds, strict=True)]
        out[f"hs{lv}_top1"] = sum(hits) / len(hits)
    return out


def cpu_cost(
    model: CrossEncoder, text: str, codes: list[str], ns=(5, 10, 20, 30), reps: int = 15, model_dir: Path | None = None
) -> dict:
    """p50 ms of the reranker alone for one prediction of N candidates (tokenising included), 1 and 2 threads;
    with model_dir, the first stage's `Classifier.predict` on the same text in the same run (the load differs)."""
    out: dict = {"load_average": list(os.getloadavg())}
    before = torch.get_num_threads()
    clf = None
    if model_dir is not None:
        from hs_model.predict import Classifier

        clf = Classifier(model_dir)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        if clf is not None:
            clf.predict(text)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                clf.predict(text)
                times.append(1000 * (time.perf_counter() - t0))
            out[f"threads={threads}, first stage (Classifier.predict)"] = {
                "p50_ms": statistics.median(times),
                "min_ms": min(times),
            }
        for n in ns:
            model.score_candidates(text, codes[:n])  # warm up
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                model.score_candidates(text, codes[:n])
                times.append(1000 * (time.perf_counter() - t0))
            out[f"threads={threads}, N={n}"] = {"p50_ms": statistics.median(times), "min_ms": min(times)}
    torch.set_num_threads(before)
    return out


def report(fs: dict, sc: dict, ns: list[int], model: CrossEncoder | None, model_dir: Path | None = None) -> dict:
    subs = fs["subheadings"]
    res: dict = {"first_stage_version": fs["version"], "heldout_index_rows": fs["index_rows"], "by_n": {}}
    served_clf = None
    if model_dir is not None and any(name in sc for name in SHARED):
        from hs_model.predict import Classifier

        served_clf = Classifier(model_dir)
    names = [n for n in (*HELDOUT, *SHARED) if n in sc]
    for n in ns:
        w, t = fit(fit_parts(fs, sc, TUNE, n))
        _, t0 = fit(fit_parts(fs, sc, TUNE, n), fixed_w=0.0)
        per = {}
        for name in names:
            golds = fs[name]["golds"]
            per[name] = {
                "rows": len(golds),
                "gold_in_top_n": float(  # a 4-digit gold (Myntra): any of its subheadings
                    np.mean(
                        [
                            any(subs[j].startswith(g) for j in r)
                            for g, r in zip(golds, sc[name]["top"][:, :n].tolist(), strict=True)
                        ]
                    )
                ),
                "first_stage": top1(fs[name]["log_p6"], golds, subs),
                "temperature_only": top1(reranked(fs, sc, name, n, 0.0, t0), golds, subs),
                "reranked": top1(reranked(fs, sc, name, n, w, t), golds, subs),
                "gained_lost": flips(fs[name]["log_p6"], reranked(fs, sc, name, n, w, t), golds, subs),
            }
        res["by_n"][str(n)] = {
            "w": w,
            "temperature": t,
            "temperature_only": t0,
            "conditions": per,
            "may_crossfit": crossfit_may(fs, sc, n),
        }
        log.info("N=%d w=%.3f T=%.3f", n, w, t)
    # N chosen on the tuning conditions alone (mean HS4 top-1 with the reranker); the shared files play no part
    res["chosen_n"] = max(
        res["by_n"], key=lambda n: np.mean([res["by_n"][n]["conditions"][c]["reranked"]["hs4_top1"] for c in TUNE])
    )
    if served_clf is not None:  # the shared files through the product path, at the chosen N only
        best = res["by_n"][res["chosen_n"]]
        for name in SHARED:
            if name in sc:
                c = best["conditions"][name]
                c["served"] = served_top1(served_clf, fs, sc, name, int(res["chosen_n"]), 0.0, 1.0)
                c["served_reranked"] = served_top1(
                    served_clf, fs, sc, name, int(res["chosen_n"]), best["w"], best["temperature"]
                )
    if model is not None:  # timed on the UK test description of median length, against its own candidates
        c = fs["UK parcels, test"]
        by_len = sorted(range(len(c["texts"])), key=lambda i: len(c["texts"][i]))
        sample = c["texts"][by_len[len(by_len) // 2]]
        codes = [subs[j] for j in c["log_p6"][by_len[len(by_len) // 2]].topk(30).indices.tolist()]
        res["cpu_ms_one_prediction"] = cpu_cost(model, sample, codes, model_dir=model_dir)
        res["cpu_text"] = sample
        res["cpu_text_words"] = len(sample.split())
    res["scoring_seconds"] = {k: v["seconds"] for k, v in sc.items()}
    return res


def to_markdown(res: dict) -> str:
    def f(m: dict) -> str:
        return " / ".join(f"{100 * m[k]:.1f}" if k in m else "–" for k in ("hs2_top1", "hs4_top1", "hs6_top1"))

    def g(m: dict) -> str:
        return ", ".join(f"+{m[k][0]} −{m[k][1]}" for k in ("hs4", "hs6") if k in m)

    lines = [f"N chosen on the tuning conditions (mean HS4 top-1 with the reranker): **{res['chosen_n']}**", ""]
    for n, r in res["by_n"].items():
        lines += [
            f"**N = {n}** (w = {r['w']:.3f}, T = {r['temperature']:.3f}, fitted on UK val + May long + May one-line)",
            "",
            "| condition | rows | gold in top N | first stage HS2 / HS4 / HS6 | control: T alone (w = 0) "
            "| + reranker HS2 / HS4 / HS6 | rows gained / lost, HS4 and HS6 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, c in r["conditions"].items():
            tag = " (tuning)" if name in TUNE else ""
            lines.append(
                f"| {name}{tag} | {c['rows']} | {100 * c['gold_in_top_n']:.1f} | {f(c['first_stage'])} "
                f"| {f(c['temperature_only'])} | **{f(c['reranked'])}** | {g(c['gained_lost'])} |"
            )
        for name, m in r["may_crossfit"].items():
            lines.append(f"| {name}, w cross-fitted (5 folds) | | | | | {f(m)} | |")
        for name, c in r["conditions"].items():
            if "served" in c:
                lines.append(
                    f"| {name}, product path (vote + guidance) | {c['rows']} | | {f(c['served'])} | "
                    f"| **{f(c['served_reranked'])}** | |"
                )
        lines.append("")
    if "cpu_ms_one_prediction" in res:
        lines += ["| reranker alone, one prediction | p50 ms |", "|---|---|"]
        lines += [
            f"| {k} | {v['p50_ms']:.0f} |" for k, v in res["cpu_ms_one_prediction"].items() if isinstance(v, dict)
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from hs_train.precedents_eval import SHIPPED_VOTE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("first-stage", "score", "report"))
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", type=Path, default=Path("assets/model"))
    ap.add_argument("--vote", type=Path, default=SHIPPED_VOTE, help="the vote settings")
    ap.add_argument("--reranker", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="working folder (first stage, scores)")
    ap.add_argument("--results", type=Path, help="report: where rerank.json and rerank.md go")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--start", type=int, default=0, help="score: first rank scored (deeper ranks in a later run)")
    ap.add_argument("--ns", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--conditions", nargs="+", default=None, help="score: only these conditions")
    ap.add_argument("--shared", action="store_true", help="first-stage / score: also HSCodeComp and ATLAS")
    ap.add_argument("--tag", default="", help="score: suffix of the scores file (to run conditions in parallel)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "first-stage":
        save_parts(first_stage(args.model, args.data_dir, args.vote, args.shared), args.out / FIRST_STAGE_FILE)
        return
    fs = load_parts(args.out / FIRST_STAGE_FILE)
    if args.step == "score":
        model = load_reranker(args.reranker, args.data_dir)
        names = args.conditions or [n for n in (*HELDOUT, *(SHARED if args.shared else ())) if n in fs]
        save_parts(score_top(model, fs, names, args.top, args.start), args.out / f"scores{args.tag}.safetensors")
        return
    sc = merge_scores(sorted(args.out.glob("scores*.safetensors")))
    timed = load_reranker(args.reranker, args.data_dir) if args.reranker else None
    res = report(fs, sc, args.ns, timed, args.model)
    out = args.results or args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "rerank.json").write_text(json.dumps(res, indent=2))
    (out / "rerank.md").write_text(to_markdown(res))
    print(to_markdown(res))


if __name__ == "__main__":
    main()
