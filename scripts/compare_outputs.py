"""Same answers before and after a change: predictions, explanations, batch results, exports and evaluation.

Run it in two checkouts (e.g. the commit before a restructuring and the one after), then compare:

    (cd /path/to/old && python /path/to/new/scripts/compare_outputs.py dump --out /tmp/old.json)
    python scripts/compare_outputs.py dump --out /tmp/new.json
    python scripts/compare_outputs.py compare /tmp/old.json /tmp/new.json     # exit 1 on any difference

The inputs are fixed (texts, two synthetic photos made from a seeded generator, a batch CSV, a tiny labelled
set); it uses the shipped model of the checkout it runs in. It imports whichever module layout that checkout
has (before the split the training modules lived in ``hs_model``, after it in ``hs_train``).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = [
    "men's knitted cotton T-shirt",
    "Turtle Check Men Navy Blue Shirt",
    "9.6mm Stainless Steel Gold Color Cuban Link Chain Necklace",
    "leather lace-up shoes for men",
    "plastic storage box with lid",
    "bicycle helmet",
    "lithium-ion battery pack for laptops",
    "wooden dining chair",
    "frozen shrimp, peeled",
    "=HYPERLINK('x') formula-looking description",
    "",
]
TOLERANCE = 1e-6


def _module(*names: str) -> Any:
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(names[0])


def _photos() -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(7)
    out = []
    for size in ((224, 224), (320, 200)):
        pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        pixels[40:120, 60:160] = (200, 30, 30)  # a block of colour the towers can react to
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _prediction(pred: Any) -> dict[str, Any]:
    return {
        "levels": {str(lv): [[c.code, float(c.score)] for c in cs] for lv, cs in sorted(pred.levels.items())},
        "needs_review": bool(pred.needs_review),
        "notes": list(pred.notes),
    }


def dump(out: Path) -> None:
    """Compute every output for the fixed inputs with the checkout in the current directory."""
    sys.path.insert(0, os.getcwd())
    predict = _module("hs_model.predict")
    images = _module("hs_model.images")
    batch = _module("hs_model.batch")
    explain = _module("hs_model.explain")
    datasets = _module("hs_train.datasets", "hs_model.datasets")
    evaluate = _module("hs_train.evaluate", "hs_model.evaluate")
    export_cells = _module("hs_core.text", "db.export")

    classifier = predict.Classifier()
    photos = [images.load_image(p, f"photo{i}") for i, p in enumerate(_photos())]
    result: dict[str, Any] = {"model_version": classifier.card.version, "predict": [], "explain": []}
    for text in TEXTS:
        for imgs in ([], photos[:1], photos):
            if not text and not imgs:
                continue
            pred = classifier.predict(text or None, imgs, top_k=5)
            result["predict"].append({"text": text, "photos": len(imgs), **_prediction(pred)})

    explainer = explain.Explainer(classifier)
    for text, imgs in ((TEXTS[3], photos[:1]), (TEXTS[2], [])):
        ex = explainer.explain(predict.Query(text, imgs))
        result["explain"].append(
            {
                "code": ex.code,
                "words": [[w.word, float(w.score)] for w in ex.words],
                "heatmaps": [float(np.asarray(h, dtype=np.float64).sum()) for h in ex.image_heatmaps],
                "delta": ex.convergence_delta,
            }
        )

    csv = "line_ref,description\n" + "".join(f'L{i},"{t}"\n' for i, t in enumerate(TEXTS) if t)
    parsed = batch.read_batch_csv(csv.encode("utf-8"))
    records = {}
    for chunk in batch.classify_rows(classifier, parsed.valid_rows, None, top_k=3, chunk_size=4):
        for outcome in chunk:
            records[outcome.row.line] = batch.result_record(outcome.row, outcome.prediction, outcome.error)
    rows = [records[r.line] for r in parsed.valid_rows]
    result["batch"] = [
        {k: (round(v, 9) if isinstance(v, float) else v) for k, v in rec.items() if k != "seconds"} for rec in rows
    ]
    result["batch_csv"] = batch.results_csv(rows).decode("utf-8-sig")
    neutralise = getattr(export_cells, "neutralise_formula", None) or export_cells.neutralise_cell
    result["export_cells"] = [neutralise(t) for t in TEXTS]

    examples = [
        datasets.Example(text=TEXTS[i], images=[], hs=hs, source="fixed", id=str(i))
        for i, hs in ((0, "610910"), (3, "6403"), (5, "650610"), (7, "94"), (2, "711719"))
    ]
    metrics = evaluate.evaluate(classifier, examples, "text")
    result["evaluate"] = {k: v for k, v in metrics.items() if k not in ("seconds", "data")}
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote {out}")


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{path}.{key}: only in {'new' if key in b else 'old'}")
            else:
                _diff(a[key], b[key], f"{path}.{key}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} items vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _diff(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, int | float) and isinstance(b, int | float)) or not math.isclose(
            a, b, rel_tol=0, abs_tol=TOLERANCE
        ):
            out.append(f"{path}: {a!r} vs {b!r}")
    elif a != b:
        out.append(f"{path}: {a!r} vs {b!r}")


def compare(old: Path, new: Path) -> int:
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    problems: list[str] = []
    _diff(a, b, "", problems)
    counts = {k: len(a.get(k, [])) for k in ("predict", "explain", "batch")}
    if problems:
        print(f"{len(problems)} difference(s) (tolerance {TOLERANCE}):")
        print("\n".join(problems[:50]))
        return 1
    print(f"identical within {TOLERANCE}: {counts}, batch CSV, export cells and evaluation metrics")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dump")
    p.add_argument("--out", required=True, type=Path)
    p = sub.add_parser("compare")
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.out)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
