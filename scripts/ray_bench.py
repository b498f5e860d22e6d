"""Lines per second: the local batch, Ray with 1 actor and with 2 actors, on N text lines; JSON on stdout.

    .venv/bin/python scripts/ray_bench.py --lines 10000 [--model assets/model] [--skip-local] > ray_bench.json

Every engine runs the same generated CSV of text-only lines with the same model. "local" is `classify_rows` in this
process (what `predict --batch` runs), timed from the first line to the last, plus the model load once; a Ray run is
timed end to end from the dataset's start to OUT written, which includes its actors' model load; the overhead ratio
compares both end to end (run + one model load). The driver's input check (`read_lines`) is timed on its own. Ray is a
local instance started in this process (no --address), with as many CPUs as the machine has. Load average before and
after is recorded: on a shared machine the numbers are only as good as it was quiet.

`projection` turns the measured overhead ratio into hours for 1 M and 10 M lines on N single-GPU nodes, from one GPU's
rate on the local batch path (`--gpu-lines-per-s`, 376 on an H100) and a fixed startup (`--startup-s`).
`--from-json FILE` adds it to an earlier report without running anything.
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


def run_ray(src: Path, out: Path, model_dir: Path | None, actors: int, threads: int | None) -> dict:
    from hs_model.ray_batch import RayBatchConfig, run_file

    t0 = time.perf_counter()
    config = RayBatchConfig(actors=actors, cpus_per_actor=threads)
    result = run_file(src, out, model_dir=model_dir, config=config)
    wall = time.perf_counter() - t0
    return {
        "actors": actors,
        "lines": result.ran,
        "run_s": round(result.seconds, 2),  # dataset start to last result: includes the actors' model load
        "lines_per_s": result.lines_per_s,
        "wall_s": round(wall, 2),  # plus the driver's input check, the parts and the output file
    }


def projection(ratio: float, driver_s_per_line: float, gpu_lines_per_s: float, startup_s: float) -> list[dict]:
    """Hours for 1 M and 10 M lines on N single-GPU nodes.

    startup (actors start, load the model) + the driver's serial work (input check, parts merged into OUT) per line
    + lines / (N x one GPU's local-batch rate / Ray's overhead ratio).
    """
    rows = []
    for nodes in (1, 2, 4, 8, 16, 32):
        rate = nodes * gpu_lines_per_s / ratio
        row: dict = {"nodes": nodes, "lines_per_s": round(rate)}
        for lines in (1_000_000, 10_000_000):
            seconds = startup_s + lines * driver_s_per_line + lines / rate
            row[f"hours_{lines // 1_000_000}M"] = round(seconds / 3600, 2)
        rows.append(row)
    return rows


def add_projection(report: dict, ratio: float | None, gpu_lines_per_s: float, startup_s: float) -> None:
    """The projection with its assumptions; `ratio` None: the measured 1-actor ratio, never below 1."""
    ray1, lines = report["ray_1"], report["lines"]
    driver = (report["driver_check"]["seconds"] + ray1["wall_s"] - ray1["run_s"]) / lines
    used = ratio if ratio is not None else max(1.0, report["overhead_ratio_1_actor"])
    report["projection"] = {
        "assumptions": {
            "one_gpu_per_node": True,
            "gpu_lines_per_s": gpu_lines_per_s,
            "ray_overhead_ratio": used,
            "startup_s": startup_s,
            "driver_s_per_million_lines": round(driver * 1e6, 1),
        },
        "rows": projection(used, driver, gpu_lines_per_s, startup_s),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--model", default="assets/model", help="model folder, or 'zero-shot'")
    parser.add_argument("--actors", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per engine process / actor "
                        "(default: as the app: the usable cores, shared out between the actors)")  # fmt: skip
    parser.add_argument("--gpu-lines-per-s", type=float, default=376.0, help="one GPU on the local batch path")
    parser.add_argument("--startup-s", type=float, default=60.0, help="actors start and load the model, once")
    parser.add_argument("--ratio", type=float, default=None, help="projection: Ray's overhead ratio (default: the "
                        "measured one, at least 1)")  # fmt: skip
    parser.add_argument("--from-json", default=None, metavar="FILE", help="only add the projection to a report")
    args = parser.parse_args()
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        add_projection(report, args.ratio, args.gpu_lines_per_s, args.startup_s)
        print(json.dumps(report, indent=2))
        return 0
    model_dir = None if args.model == "zero-shot" else Path(args.model).resolve()
    report: dict = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_before": os.getloadavg()},
        "lines": args.lines,
        "model": str(model_dir or "zero-shot"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.threads:
        os.environ["HS_TORCH_THREADS"] = str(args.threads)  # the local engine; actors get cpus_per_actor threads
        report["threads"] = args.threads
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
            report[f"ray_{n}"] = run_ray(src, Path(tmp) / f"out{n}.parquet", model_dir, n, args.threads)
            print(json.dumps({f"ray_{n}": report[f"ray_{n}"]}), file=sys.stderr, flush=True)
        ray.shutdown()
    if "local" in report and "ray_1" in report:
        local = report["local"]
        report["overhead_ratio_1_actor"] = round(report["ray_1"]["run_s"] / local["end_to_end_s"], 3)
        report["overhead_ratio_1_actor_wall"] = round(report["ray_1"]["wall_s"] / local["end_to_end_s"], 3)
        add_projection(report, args.ratio, args.gpu_lines_per_s, args.startup_s)
    report["machine"]["loadavg_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
