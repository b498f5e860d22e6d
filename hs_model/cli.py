"""Command line: predict, evaluate, convert-eval, train, explain, finetune, bench (contracts in DESIGN.md)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from hs_model.config import DEFAULT_DATA_DIR, DEFAULT_MODEL_DIR

log = logging.getLogger("hs_model")


class UserError(Exception):
    """A problem with what the user asked for: one line on stderr, exit status 2."""


def _model_dir(arg: str | None) -> Path | None:
    if arg == "zero-shot":
        return None
    return Path(arg) if arg else Path(os.environ.get("HS_MODEL_DIR", DEFAULT_MODEL_DIR))


def _classifier(args: argparse.Namespace):
    from hs_model.predict import Classifier

    return Classifier(_model_dir(args.model))


def cmd_predict(args: argparse.Namespace) -> int:
    from hs_model.predict import decode_images, validate_query

    if args.batch:
        return cmd_predict_batch(args)
    if args.text_file:
        args.text = _existing(args.text_file).read_text(encoding="utf-8", errors="replace")
    images = decode_images([_existing(p) for p in args.image])
    validate_query(args.text, images)  # before the model loads: bad input fails fast
    pred = _classifier(args).predict(args.text, images, top_k=args.top_k)
    if args.json:
        print(json.dumps(pred.to_json(), ensure_ascii=False, indent=2))
        return 0
    print(f"model {pred.model_version} ({pred.modality}); {'NEEDS REVIEW' if pred.needs_review else 'confident'}")
    for note in pred.notes:
        print(f"note: {note}")
    for level in (2, 4, 6):
        print(f"-- {level} digits")
        for c in pred.levels[level]:
            print(f"  {c.code:>6}  {c.score:6.1%}  {c.description[:90]}")
            if level == 6 and (line := pred.precedent_summary(c.code)):
                print(f"          {line}")
    for p in [p for p in pred.precedents if p.weight > 0][:5]:
        print(f"precedent {p.code} ({p.dataset} {p.id} {p.date}, similarity {p.similarity:.2f}): {p.text[:100]}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from hs_model.explain import Explainer
    from hs_model.nomenclature import HsCode, InvalidCode
    from hs_model.predict import Query, decode_images, validate_query
    from hs_model.render import write_explanation_set

    try:
        code = HsCode.parse(args.code) if args.code else None
    except InvalidCode as exc:
        raise UserError(str(exc)) from None
    if code is not None and args.level is not None and args.level != code.level:
        raise UserError(f"--code {code.formatted} is a {code.level}-digit code, not a {args.level}-digit one.")
    images = decode_images([_existing(p) for p in args.image])
    validate_query(args.text, images)  # before the model loads: bad input fails fast
    explainer = Explainer(_classifier(args))
    result = explainer.explain_all(Query(args.text, images), code.digits if code else None, args.level)
    summary = write_explanation_set(result, images, Path(args.out))
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return 0
    ig = result.integrated_gradients
    print(f"{ig.code} at {ig.level} digits, log p = {ig.target:.3f}; explained in {result.seconds:.1f} s")
    print("words: " + "  ".join(f"{w['word']} {w['score']:+.3f}" for w in summary["words"]))
    for part in (summary, summary["grad_cam"] or {}, summary["contrast"] or {}):
        for path in part.get("image_heatmaps", []):
            print(f"wrote {path}")
    for note in ig.notes:
        print(f"note: {note}")
    return 0


def cmd_predict_batch(args: argparse.Namespace) -> int:
    """`predict --batch FILE.csv --out FILE`: every line of a CSV; a bad line gets an error, never stops the run."""
    import time

    from tqdm import tqdm

    from hs_model.batch import DirPhotos, ZipPhotos, classify_rows, read_batch_csv, result_record, write_results

    if args.text or args.text_file or args.image:
        raise UserError("--batch reads descriptions and photos from the CSV: drop --text, --text-file and --image.")
    out = Path(args.out or "")
    if not args.out or out.suffix.lower() not in (".csv", ".xlsx"):
        raise UserError("--batch needs --out FILE.csv or --out FILE.xlsx.")
    if not out.parent.is_dir():
        raise UserError(f"No such folder for --out: {out.parent}")
    if args.images_dir and args.photos_zip:
        raise UserError("Give --images-dir or --photos-zip, not both.")
    photos = None
    if args.images_dir:
        photos = DirPhotos(Path(args.images_dir))
    elif args.photos_zip:
        photos = ZipPhotos(_existing(args.photos_zip).read_bytes(), Path(args.photos_zip).name)
    batch = read_batch_csv(_existing(args.batch).read_bytes(), photos, name=Path(args.batch).name)
    for notice in batch.notices:
        print(f"note: {notice}", file=sys.stderr)
    bad = batch.invalid_rows
    if bad:
        print(f"{len(bad)} of {len(batch.rows)} lines will not run (see the error column), e.g.:", file=sys.stderr)
        for row in bad[:5]:
            print(f"  line {row.line} ({row.line_ref or 'no ref'}): {'; '.join(row.problems)}", file=sys.stderr)
    classifier = _classifier(args)  # after validation: a bad file fails before the model loads
    records = {row.line: result_record(row, None) for row in bad}
    t0 = time.perf_counter()
    todo = batch.valid_rows
    with tqdm(total=len(todo), unit="line", file=sys.stderr, desc="classifying") as bar:
        for chunk in classify_rows(classifier, todo, photos, top_k=max(args.top_k, 3), chunk_size=args.chunk_size):
            for outcome in chunk:
                records[outcome.row.line] = result_record(outcome.row, outcome.prediction, outcome.error)
            bar.update(len(chunk))
    seconds = time.perf_counter() - t0
    ordered = [records[row.line] for row in batch.rows]
    write_results(ordered, out)
    errors = sum(1 for r in ordered if r["error"])
    summary = {"rows": len(ordered), "errors": errors, "out": str(out), "seconds": round(seconds, 2)}
    summary["lines_per_s"] = round(len(todo) / seconds, 2) if seconds > 0 else None
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {len(ordered)} lines to {out} ({errors} with an error) in {seconds:.1f} s", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hs_model.datasets import load_eval_jsonl
    from hs_model.evaluate import evaluate

    examples = load_eval_jsonl(_existing(args.data))
    result = evaluate(_classifier(args), examples, args.modality)
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
    from hs_model.datasets import convert_atlas, convert_hscodecomp, write_eval_jsonl

    src = _existing(args.src)
    rows = convert_hscodecomp(src) if args.set == "hscodecomp" else convert_atlas(src)
    write_eval_jsonl(rows, Path(args.out))
    print(f"wrote {len(rows)} rows to {args.out}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from hs_model.train import TrainConfig, train_default

    data_dir = Path(args.data_dir)
    if not (data_dir / "products" / "styles.csv").is_file():
        raise UserError(f"{data_dir} does not look like the shared data folder (no products/styles.csv).")
    cfg = dataclasses.replace(
        TrainConfig(), epochs=args.epochs, use_contrastive=not args.no_contrastive, use_images=not args.no_images
    )
    card = train_default(data_dir, Path(args.out), cfg, version=args.version)
    print(json.dumps({"version": card.version, "out": args.out, "metrics": card.metrics}, indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hs_model.report import build_report

    variants: dict[str, Path | None] = {"trained": _model_dir(args.model)}
    for item in args.variant:
        name, _, folder = item.partition("=")
        if not name or not folder:
            raise UserError(f"--variant wants NAME=FOLDER (or NAME=zero-shot), not {item!r}")
        variants[name] = _model_dir(folder)
    variants.setdefault("zero-shot", None)
    results = build_report(_model_dir(args.model), variants, Path(args.data_dir), Path(args.out), Path(args.work))
    print((Path(args.out) / "results.md").read_text())
    del results
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    import getpass

    from db.engine import make_engine, make_session_factory, upgrade
    from db.queries import find_user
    from hs_model.finetune import FinetuneError, run
    from hs_model.predict import Classifier

    engine = make_engine(args.db)
    try:
        upgrade(engine)
        factory = make_session_factory(engine)
        started_by, user_id = f"cli:{getpass.getuser()}", None
        if args.started_by:
            with factory() as session:
                user = find_user(session, args.started_by)
            if user is None or not user.active or user.role != "admin":
                raise UserError(f"--started-by {args.started_by!r}: there is no active admin by that name.")
            started_by, user_id = user.username, user.id

        def progress(row: dict) -> None:
            print(f"epoch {row['epoch']}/{row['epochs']}: loss {row['loss']:.3f}, accuracy {row['val_top1']:.3f}",
                  file=sys.stderr)  # fmt: skip

        try:
            result = run(
                factory,
                Classifier(None),  # the towers; the base version's head is loaded from the registry
                started_by=started_by,
                user_id=user_id,
                base_id=args.base,
                data_dir=Path(args.data_dir),
                on_epoch=progress,
            )
        except FinetuneError as exc:
            raise UserError(str(exc)) from None
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(f"{result.version_id} (from {result.parent_id}, {result.decisions} decisions): {result.reason}")
    return 0


def cmd_speed_bench(args: argparse.Namespace) -> int:
    """`bench --json`: latency, throughput, cold start and memory on synthetic inputs (DESIGN.md shape)."""
    from hs_model.bench import BenchConfig, render_markdown, run_bench

    folder = _model_dir(args.model)
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
    from hs_model.learning_curve import run_learning_curve
    from hs_model.predict import Classifier

    data_dir = Path(args.data_dir)
    if not (data_dir / "train" / "uk_parcel_descriptions.csv").is_file():
        raise UserError(
            f"{data_dir} has no train/uk_parcel_descriptions.csv: the learning curve needs the shared data."
        )
    folder = _model_dir(args.model)
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


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"No such file: {p}")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hs_model", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    model_help = "model folder (default: HS_MODEL_DIR or assets/model); 'zero-shot' for the untrained model"

    p = sub.add_parser("predict", help="rank HS codes for one product")
    p.add_argument("--text", default=None, help="product description")
    p.add_argument("--text-file", default=None, metavar="PATH", help="read the description from a UTF-8 file")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="photo (repeatable)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--json", action="store_true")
    p.add_argument("--batch", default=None, metavar="FILE.csv", help="classify every line of a CSV (line_ref, "
                   "description, photos separated by ';'); needs --out")  # fmt: skip
    p.add_argument("--images-dir", default=None, metavar="DIR", help="with --batch: folder holding the photos")
    p.add_argument("--photos-zip", default=None, metavar="ZIP", help="with --batch: zip holding the photos")
    p.add_argument("--out", default=None, metavar="FILE", help="with --batch: results as .csv or .xlsx")
    p.add_argument("--chunk-size", type=int, default=32, help="with --batch: lines per model call")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="why the model scores a code: photo heatmaps (PNG) and word attributions")
    p.add_argument("--text", default=None, help="product description")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="photo (repeatable)")
    p.add_argument("--code", default=None, help="HS code to explain (default: the top prediction)")
    p.add_argument("--level", type=int, choices=[2, 4, 6], default=None, help="default: the code's own level, else 6")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--out", required=True, help="folder for the overlay PNGs and words.html")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("evaluate", help="accuracy on an evaluation JSONL file")
    p.add_argument("--data", required=True, help='JSONL: {"text": ..., "images": [...], "hs": "610910"} per line')
    p.add_argument("--modality", choices=["text", "image", "both"], default="both")
    p.add_argument("--model", default=None, help=model_help)
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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="evaluation report over Myntra test, HSCodeComp and ATLAS, with ablations")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FOLDER", help="another model to compare")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--out", default="docs/results")
    p.add_argument("--work", default="var/eval", help="where converted evaluation files are written")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("finetune", help="fine-tune the active model on reviewed decisions; the evaluation gate decides")
    p.add_argument("--db", required=True, help="database URL, e.g. sqlite:///var/hs_desk.sqlite3")
    p.add_argument("--base", default=None, metavar="VERSION", help="registered version to start from (default: active)")
    p.add_argument("--started-by", default=None, metavar="NAME", help="admin recorded as having started it")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="its eval/ files are the gate's fixed benchmark")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("bench", help="speed benchmark (latency, batch throughput, cold start, memory); "
                       "--learning-curve: fine-tuning on simulated reviewed decisions")  # fmt: skip
    p.add_argument("--learning-curve", action="store_true", help="accuracy after fine-tuning on N = 0 … 1000 decisions")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="speed benchmark: where to run")
    p.add_argument("--quick", action="store_true", help="speed benchmark: few iterations (a smoke test)")
    p.add_argument("--markdown", default=None, metavar="FILE", help="speed benchmark: also write a Markdown report")
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--plot", default="docs/learning_curve.png", help="PNG of the learning curve ('' for none)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from hs_model.checkpoint import CheckpointError
    from hs_model.errors import InputError

    try:
        return args.func(args)
    except (UserError, InputError, CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
