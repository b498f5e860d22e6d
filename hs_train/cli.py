"""Command line, training half: ``evaluate``, ``convert-eval``, ``train``, ``tune-text``, ``report`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hs_core.settings import DEFAULT_DATA_DIR
from hs_model.cli import MODEL_HELP, UserError, existing, load_classifier, model_dir


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hs_train.datasets import load_eval_jsonl
    from hs_train.evaluate import evaluate

    examples = load_eval_jsonl(existing(args.data))
    result = evaluate(load_classifier(args), examples, args.modality)
    result["data"] = str(args.data)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.data}: {result['rows']} rows, modality {args.modality}, model {result['model_version']}")
    for level, m in result["levels"].items():
        print(
            f"  HS{level}: n={m['rows']}  top1 {m['top1']:.1%}  top5 {m['top5']:.1%}  "
            f"macro-F1 {m['macro_f1']:.3f}  ECE {m['ece']:.3f}"
        )
    return 0


def cmd_convert_eval(args: argparse.Namespace) -> int:
    from hs_train.datasets import convert_atlas, convert_hscodecomp, write_eval_jsonl

    src = existing(args.src)
    rows = convert_hscodecomp(src) if args.set == "hscodecomp" else convert_atlas(src)
    write_eval_jsonl(rows, Path(args.out))
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from hs_train.train import TrainConfig, train_default

    data_dir = Path(args.data_dir)
    if not (data_dir / "products" / "styles.csv").is_file():
        raise UserError(f"{data_dir} does not look like the shared data folder (no products/styles.csv).")
    cfg = dataclasses.replace(
        TrainConfig(), epochs=args.epochs, use_contrastive=not args.no_contrastive, use_images=not args.no_images
    )
    adapter = Path(args.text_adapter) if args.text_adapter else None
    if adapter is not None and not adapter.is_file():
        raise UserError(f"No text adapter at {adapter} (make one with `python -m hs_model tune-text`).")
    card = train_default(data_dir, Path(args.out), cfg, version=args.version, text_adapter=adapter, parent=args.parent)
    print(json.dumps({"version": card.version, "out": args.out, "metrics": card.metrics}, indent=2))
    return 0


def cmd_tune_text(args: argparse.Namespace) -> int:
    from hs_train.text_tune import TuneConfig, tune

    data_dir = Path(args.data_dir)
    if not (data_dir / "train" / "uk_parcel_descriptions.csv").is_file():
        raise UserError(f"{data_dir} does not look like the shared data folder (no train/uk_parcel_descriptions.csv).")
    if args.steps < 1 or args.rank < 1 or args.batch_size < 2:
        raise UserError("--steps and --rank must be at least 1, --batch-size at least 2.")
    cfg = TuneConfig(
        steps=args.steps, rank=args.rank, alpha=2.0 * args.rank, lr=args.lr, batch_size=args.batch_size,
        eval_every=args.eval_every, max_minutes=args.max_minutes,
    )  # fmt: skip
    report = tune(data_dir, Path(args.out), cfg)
    print(json.dumps({k: report[k] for k in ("tuned_tower", "pools", "train_seconds", "heldout")}, indent=2))
    return 0


def cmd_ship_label_bank(args: argparse.Namespace) -> int:
    from hs_model.bank import SHIPPED_DIR, ship_official_bank
    from hs_model.predict import Classifier

    classifier = Classifier(None)  # the default towers (zero-shot): the official bank is theirs
    folder = Path(args.out) if args.out else SHIPPED_DIR
    for path in ship_official_bank(classifier.base_text_tower, classifier.space, classifier.edition, folder):
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hs_train.report import build_report

    variants: dict[str, Path | None] = {"trained": model_dir(args.model)}
    for item in args.variant:
        name, _, folder = item.partition("=")
        if not name or not folder:
            raise UserError(f"--variant wants NAME=FOLDER (or NAME=zero-shot), not {item!r}")
        variants[name] = model_dir(folder)
    variants.setdefault("zero-shot", None)
    results = build_report(model_dir(args.model), variants, Path(args.data_dir), Path(args.out), Path(args.work))
    print((Path(args.out) / "results.md").read_text())
    del results
    return 0


def cmd_speed_bench(args: argparse.Namespace) -> int:
    """`bench --json`: latency, throughput, cold start and memory on synthetic inputs (DESIGN.md shape)."""
    from hs_train.bench import BenchConfig, render_markdown, run_bench

    folder = model_dir(args.model)
    if folder is not None and not (folder / "card.json").is_file():
        print(f"note: no model in {folder}; benchmarking the zero-shot model", file=sys.stderr)
        folder = None
    result = run_bench(BenchConfig.quick() if args.quick else BenchConfig(), model_dir=folder, device=args.device)
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(result))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(render_markdown(result))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if not args.learning_curve:
        return cmd_speed_bench(args)
    from hs_model.predict import Classifier
    from hs_train.learning_curve import run_learning_curve

    data_dir = Path(args.data_dir)
    if not (data_dir / "train" / "uk_parcel_descriptions.csv").is_file():
        raise UserError(
            f"{data_dir} has no train/uk_parcel_descriptions.csv: the learning curve needs the shared data."
        )
    folder = model_dir(args.model)
    if folder is not None and not (folder / "card.json").is_file():
        print(f"note: no model in {folder}; starting from the zero-shot model", file=sys.stderr)
        folder = None
    classifier = Classifier(None)
    result = run_learning_curve(classifier, folder, data_dir, plot=Path(args.plot) if args.plot else None)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for row in result["learning_curve"]:
        print(
            f"N={row['n']:>5}  HS4 top-1 {row['accuracy']:.1%}  HS6 {row['accuracy_hs6']:.1%}  {row['seconds']:.1f} s"
        )
    print(f"poisoned: activated={result['poisoned']['activated']}: {result['poisoned']['reason']}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the training and evaluation commands."""
    p = sub.add_parser("evaluate", help="accuracy on an evaluation JSONL file")
    p.add_argument("--data", required=True, help='JSONL: {"text": ..., "images": [...], "hs": "610910"} per line')
    p.add_argument("--modality", choices=["text", "image", "both"], default="both")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("convert-eval", help="turn a public benchmark file into the evaluation JSONL format")
    p.add_argument("--set", choices=["hscodecomp", "atlas"], required=True)
    p.add_argument("--src", required=True, help=f"e.g. {DEFAULT_DATA_DIR}/eval/hscodecomp.jsonl")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_convert_eval)

    p = sub.add_parser("train", help="train the joint model on ../shared/data (never on eval/)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--out", required=True, help="folder for weights.safetensors + card.json")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--no-contrastive", action="store_true", help="ablation: no InfoNCE term")
    p.add_argument("--no-images", action="store_true", help="ablation: text views only")
    p.add_argument("--version", default=None)
    p.add_argument("--parent", default=None, help="the version this one succeeds (recorded in the card)")
    p.add_argument("--text-adapter", default=None, metavar="FILE",
                   help="start from a tuned text tower: adapter.safetensors from `tune-text`")  # fmt: skip
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune-text", help="fine-tune the text tower (LoRA) on ../shared/data's training splits")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--out", required=True, help="folder for adapter.safetensors + tune.json")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=0, help="held-out measurement every N steps (0: at the end only)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock budget (the schedule decays over it)")
    p.set_defaults(func=cmd_tune_text)

    p = sub.add_parser("ship-label-bank", help="write the official label bank of the default text tower into "
                       "assets/label_bank (so a fresh install's first start embeds nothing)")  # fmt: skip
    p.add_argument("--out", default=None, help="folder (default: assets/label_bank)")
    p.set_defaults(func=cmd_ship_label_bank)

    p = sub.add_parser("report", help="evaluation report over Myntra test, HSCodeComp and ATLAS, with ablations")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FOLDER", help="another model to compare")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--out", default="docs/results")
    p.add_argument("--work", default="var/eval", help="where converted evaluation files are written")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="speed benchmark (latency, batch throughput, cold start, memory); "
                       "--learning-curve: fine-tuning on simulated reviewed decisions")  # fmt: skip
    p.add_argument("--learning-curve", action="store_true", help="accuracy after fine-tuning on N = 0 … 1000 decisions")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="speed benchmark: where to run")
    p.add_argument("--quick", action="store_true", help="speed benchmark: few iterations (a smoke test)")
    p.add_argument("--markdown", default=None, metavar="FILE", help="speed benchmark: also write a Markdown report")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--plot", default="docs/learning_curve.png", help="PNG of the learning curve ('' for none)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
