"""Lines per second: the local batch, Ray with 1 actor and with 2 actors, on N text lines; JSON on stdout.

    .venv/bin/python scripts/ray_bench.py --lines 10000 [--model assets/model] [--skip-local] > ray_bench.json

Every engine runs the same generated CSV of text-only lines with the same model. "local" is `classify_rows` in this
process (what `predict --batch` runs), timed from the first line to the last, plus the model load once; a Ray run is
timed end to end from the dataset's start to OUT written, which includes its actors' model load; the overhead ratio
compares both end to end (run + one model load). The driver's input check (`read_lines`) is timed on its own. Ray is a
local instance started in this process (no --address), with as many CPUs as the machine has. Load average before and
after is recorded: on a shared machine the numbers are only as good as it was quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GOODS = [
    "men's knitted cotton T-shirt", "women's woven polyester blouse", "leather handbag with shoulder strap",
    "stainless steel kitchen knife", "wooden toy train set", "laptop computer 14 inch", "frozen peeled shrimp",
    "ceramic coffee mug", "running shoes with rubber soles", "LED light bulb E27", "plastic storage box with lid",
    "glass perfume bottle 50 ml", "cordless electric drill 18 V", "wool blend scarf", "bicycle inner tube",
]  # fmt: skip
MATERIALS = ["", "blue", "for children", "set of 2", "recycled", "premium", "size M", "with gift box"]


def make_csv(path: Path, n: int) -> None:
    lines = ["line_ref,description"]
    for i in range(n):
        lines.append(f"SKU{i:08d},{GOODS[i % len(GOODS)]} {MATERIALS[(i // len(GOODS)) % len(MATERIALS)]} {i}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_local(src: Path, model_dir: Path | None) -> dict:
    from hs_model.batch import DirPhotos, classify_rows
    from hs_model.predict import Classifier
    from hs_model.ray_batch import read_lines

    t0 = time.perf_counter()
    clf = Classifier(model_dir)
    load = time.perf_counter() - t0
    batch = read_lines(src, DirPhotos(src.parent))
    t0 = time.perf_counter()
    done = sum(len(chunk) for chunk in classify_rows(clf, batch.valid_rows, None, top_k=3, chunk_size=32))
    run = time.perf_counter() - t0
    return {
        "lines": done,
        "model_load_s": round(load, 2),
        "run_s": round(run, 2),
        "lines_per_s": round(done / run, 2),
        "end_to_end_s": round(load + run, 2),
        "torch_threads": __import__("torch").get_num_threads(),
    }


def run_ray(src: Path, out: Path, model_dir: Path | None, actors: int) -> dict:
    from hs_model.ray_batch import RayBatchConfig, run_file

    t0 = time.perf_counter()
    result = run_file(src, out, model_dir=model_dir, config=RayBatchConfig(actors=actors))
    wall = time.perf_counter() - t0
    return {
        "actors": actors,
        "lines": result.ran,
        "run_s": round(result.seconds, 2),  # dataset start to last result: includes the actors' model load
        "lines_per_s": result.lines_per_s,
        "wall_s": round(wall, 2),  # plus the driver's input check, the parts and the output file
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--model", default="assets/model", help="model folder, or 'zero-shot'")
    parser.add_argument("--actors", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    model_dir = None if args.model == "zero-shot" else Path(args.model).resolve()
    report: dict = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_before": os.getloadavg()},
        "lines": args.lines,
        "model": str(model_dir or "zero-shot"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="hs-ray-bench-") as tmp:
        src = Path(tmp) / "lines.csv"
        make_csv(src, args.lines)
        from hs_model.batch import DirPhotos
        from hs_model.ray_batch import read_lines

        t0 = time.perf_counter()
        read_lines(src, DirPhotos(Path(tmp)))
        check = time.perf_counter() - t0
        report["driver_check"] = {"seconds": round(check, 3), "lines_per_s": round(args.lines / check)}
        if not args.skip_local:
            report["local"] = run_local(src, model_dir)
            print(json.dumps({"local": report["local"]}), file=sys.stderr, flush=True)
        import ray

        from hs_model.ray_batch import start_ray

        t0 = time.perf_counter()
        start_ray(None)
        report["ray_start_s"] = round(time.perf_counter() - t0, 2)
        for n in args.actors:
            report[f"ray_{n}"] = run_ray(src, Path(tmp) / f"out{n}.parquet", model_dir, n)
            print(json.dumps({f"ray_{n}": report[f"ray_{n}"]}), file=sys.stderr, flush=True)
        ray.shutdown()
    if "local" in report and "ray_1" in report:
        local = report["local"]
        report["overhead_ratio_1_actor"] = round(report["ray_1"]["run_s"] / local["end_to_end_s"], 3)
        report["overhead_ratio_1_actor_wall"] = round(report["ray_1"]["wall_s"] / local["end_to_end_s"], 3)
    report["machine"]["loadavg_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
