"""Command line, inference half: ``predict`` (one product or a batch CSV) and ``explain``.

The training commands live in `hs_train.cli` and the fine-tune command in `services.cli`; `hs_model.__main__`
puts the three together into ``python -m hs_model`` (contracts in DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hs_core.settings import get_settings

if TYPE_CHECKING:
    from hs_model.batch import BatchFile, PhotoSource
    from hs_model.predict import Classifier
    from hs_model.questions import Guidance

MODEL_HELP = "model folder (default: HS_MODEL_DIR or assets/model); 'zero-shot' for the untrained model"


class UserError(Exception):
    """A problem with what the user asked for: one line on stderr, exit status 2."""


def model_dir(arg: str | None) -> Path | None:
    """The model folder a ``--model`` argument names (None: the zero-shot model)."""
    if arg == "zero-shot":
        return None
    return Path(arg) if arg else get_settings().model_dir


def load_classifier(args: argparse.Namespace) -> Classifier:
    """The classifier of the ``--model`` argument."""
    from hs_model.predict import Classifier

    return Classifier(model_dir(args.model))


def existing(path: str | Path) -> Path:
    """A path that must be an existing file, else a `UserError`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"No such file: {p}")
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    from hs_model.predict import decode_images, validate_query

    if args.batch:
        if args.history_db:
            raise UserError("--history-db answers one product; Batch runs in the app ask the record for every line")
        return cmd_predict_batch(args)
    if args.text_file:
        args.text = existing(args.text_file).read_text(encoding="utf-8", errors="replace")
    images = decode_images([existing(p) for p in args.image])
    validate_query(args.text, images)  # before the model loads: bad input fails fast
    answers = _answers(args.answer)
    lookup: Callable[..., Any] | None = getattr(args, "record_lookup", None)
    if args.history_db and lookup is None:
        raise UserError("--history-db needs the app's services: run it as python -m hs_model predict")
    classifier = load_classifier(args)
    pred = classifier.predict(args.text, images, top_k=args.top_k)
    if answers:
        from hs_model.questions import apply_answers

        pred = apply_answers(pred, answers)
    # the record (approved, corrected, imported decisions of a database): a service the entry point hands in
    record = None
    if args.history_db and lookup is not None:
        record = lookup(args.history_db, classifier, args.text, args.sku, args.importer)
    if args.json:
        out = pred.to_json() | ({"record": record} if args.history_db else {})
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    if record is not None:
        print(f"record: {record['summary']}")
    print(f"model {pred.model_version} ({pred.modality}); {'NEEDS REVIEW' if pred.needs_review else 'confident'}")
    for note in pred.notes:
        print(f"note: {note}")
    _print_guidance(pred.guidance)
    for level in (2, 4, 6):
        print(f"-- {level} digits")
        for c in pred.levels[level]:
            print(f"  {c.code:>6}  {c.score:6.1%}  {c.description[:90]}")
            if level == 6 and (line := pred.precedent_summary(c.code)):
                print(f"          {line}")
    for p in [p for p in pred.precedents if p.weight > 0][:5]:
        source = " ".join(x for x in (p.dataset, p.id, p.date) if x)  # catalogue photos have no date
        print(f"precedent {p.code} ({source}, similarity {p.similarity:.2f}): {p.text[:100]}")
    return 0


def _answers(items: list[str]) -> dict[str, str]:
    """`--answer KEY=VALUE` pairs, checked against the questions' criteria and options before the model loads."""
    from hs_model.questions import check_answer

    answers = {}
    for item in items:
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        try:
            check_answer(key, value)
        except ValueError as exc:
            raise UserError(f"--answer {item!r}: {exc}") from None
        answers[key] = value
    return answers


def _print_guidance(guidance: Guidance | None) -> None:
    if guidance is None:
        return
    for ev in guidance.evidence:
        print(f"evidence: “{ev.words}” ({ev.source}) -> {ev.criterion}: {ev.label}")
    for q in guidance.questions:
        given = guidance.answers.get(q.key) or (f"{q.evidence} (from the evidence)" if q.evidence else None)
        options = ", ".join(k for k, _ in q.options)
        print(f"question {q.key}: {q.text} [{options}]" + (f" answered: {given}" if given else ""))


def cmd_explain(args: argparse.Namespace) -> int:
    from hs_core.nomenclature import HsCode, InvalidCode
    from hs_model.explain import Explainer
    from hs_model.predict import Query, decode_images, validate_query
    from hs_model.render import write_explanation_set

    try:
        code = HsCode.parse(args.code) if args.code else None
    except InvalidCode as exc:
        raise UserError(str(exc)) from None
    if code is not None and args.level is not None and args.level != code.level:
        raise UserError(f"--code {code.formatted} is a {code.level}-digit code, not a {args.level}-digit one.")
    images = decode_images([existing(p) for p in args.image])
    validate_query(args.text, images)  # before the model loads: bad input fails fast
    explainer = Explainer(load_classifier(args))
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
    if args.engine == "ray":
        return cmd_predict_ray(args)
    if args.address or args.actors:
        raise UserError("--address and --actors go with --engine ray.")
    out = Path(args.out or "")
    if not args.out or out.suffix.lower() not in (".csv", ".xlsx"):
        raise UserError("--batch needs --out FILE.csv or --out FILE.xlsx (--engine ray: .parquet or .csv).")
    if not out.parent.is_dir():
        raise UserError(f"No such folder for --out: {out.parent}")
    if args.images_dir and args.photos_zip:
        raise UserError("Give --images-dir or --photos-zip, not both.")
    photos: PhotoSource | None = None
    if args.images_dir:
        photos = DirPhotos(Path(args.images_dir))
    elif args.photos_zip:
        photos = ZipPhotos(existing(args.photos_zip).read_bytes(), Path(args.photos_zip).name)
    batch = read_batch_csv(existing(args.batch).read_bytes(), photos, name=Path(args.batch).name)
    for notice in batch.notices:
        print(f"note: {notice}", file=sys.stderr)
    bad = batch.invalid_rows
    if bad:
        print(f"{len(bad)} of {len(batch.rows)} lines will not run (see the error column), e.g.:", file=sys.stderr)
        for row in bad[:5]:
            print(f"  line {row.line} ({row.line_ref or 'no ref'}): {'; '.join(row.problems)}", file=sys.stderr)
    classifier = load_classifier(args)  # after validation: a bad file fails before the model loads
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


def cmd_predict_ray(args: argparse.Namespace) -> int:
    """`predict --batch FILE --engine ray --out FILE.parquet|.csv`: a catalogue on Ray Data (hs_model.ray_batch)."""
    from hs_model.ray_batch import INPUT_SUFFIXES, OUTPUT_SUFFIXES, RayBatchConfig, run_file

    src, out = existing(args.batch), Path(args.out or "")
    if src.suffix.lower() not in INPUT_SUFFIXES:
        raise UserError(f"--engine ray reads .csv or .parquet, not {src.name}.")
    if not args.out or out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError("--engine ray needs --out FILE.parquet or --out FILE.csv.")
    if args.photos_zip:
        raise UserError("--engine ray reads photos from a folder (--images-dir) or by path in the photos column.")
    if args.actors is not None and args.actors < 1:
        raise UserError("--actors must be at least 1.")

    def report(batch: BatchFile) -> None:
        for notice in batch.notices:
            print(f"note: {notice}", file=sys.stderr)
        bad = batch.invalid_rows
        if bad:
            print(f"{len(bad)} of {len(batch.rows)} lines will not run (see the error column), e.g.:", file=sys.stderr)
            for row in bad[:5]:
                print(f"  line {row.line} ({row.line_ref or 'no ref'}): {'; '.join(row.problems)}", file=sys.stderr)

    config = RayBatchConfig(
        address=args.address, actors=args.actors, top_k=max(args.top_k, 3), chunk_size=args.chunk_size
    )
    images = Path(args.images_dir) if args.images_dir else None
    result = run_file(src, out, images_dir=images, model_dir=model_dir(args.model), config=config, on_problems=report)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(
            f"wrote {result.rows} lines to {out} ({result.errors} with an error; {result.resumed} resumed from an "
            f"earlier run) in {result.seconds:.1f} s on {result.actors} actor(s)",
            file=sys.stderr,
        )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``predict`` and ``explain``."""
    p = sub.add_parser("predict", help="rank HS codes for one product")
    p.add_argument("--text", default=None, help="product description")
    p.add_argument("--text-file", default=None, metavar="PATH", help="read the description from a UTF-8 file")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="photo (repeatable)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--history-db",
        default=None,
        metavar="URL",
        help="also ask this database's classification record (same product approved or imported before)",
    )
    p.add_argument("--sku", default=None, help="with --history-db: the article number, matched with --importer")
    p.add_argument("--importer", default=None, help="with --history-db: the importer of the SKU")
    p.add_argument("--answer", action="append", default=[], metavar="KEY=VALUE",
                   help="answer a guided question, e.g. textile=cotton (repeatable; see the questions printed)")  # fmt: skip
    p.add_argument("--batch", default=None, metavar="FILE.csv", help="classify every line of a CSV (line_ref, "
                   "description, photos separated by ';'); needs --out")  # fmt: skip
    p.add_argument("--images-dir", default=None, metavar="DIR", help="with --batch: folder holding the photos")
    p.add_argument("--photos-zip", default=None, metavar="ZIP", help="with --batch: zip holding the photos")
    p.add_argument("--out", default=None, metavar="FILE", help="with --batch: results as .csv or .xlsx")
    p.add_argument("--chunk-size", type=int, default=32, help="with --batch: lines per model call")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="with --batch: this process, or Ray "
                   "Data (CSV or Parquet in, .parquet or .csv out, any size, resumable)")  # fmt: skip
    p.add_argument("--address", default=None, help="with --engine ray: a running cluster (HOST:PORT); default: a "
                   "local Ray started in this process")  # fmt: skip
    p.add_argument("--actors", type=int, default=None, help="with --engine ray: model actors (default: one per GPU, "
                   "else 1)")  # fmt: skip
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="why the model scores a code: photo heatmaps (PNG) and word attributions")
    p.add_argument("--text", default=None, help="product description")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="photo (repeatable)")
    p.add_argument("--code", default=None, help="HS code to explain (default: the top prediction)")
    p.add_argument("--level", type=int, choices=[2, 4, 6], default=None, help="default: the code's own level, else 6")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="folder for the overlay PNGs and words.html")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)
