"""Speed benchmark on synthetic inputs: latency per modality against the raw towers, batch throughput, explanation
time, cold start (a fresh process, from its start to its first prediction) and that process's peak memory.

Needs no data folder: the texts and photos are made here. Run as ``python -m hs_model bench --json``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from PIL import Image, ImageDraw, ImageFilter

if TYPE_CHECKING:
    from hs_core.settings import DeviceChoice

log = logging.getLogger(__name__)

_ADJECTIVES = ("men's", "women's", "children's", "blue", "black", "waterproof", "stainless", "wireless", "printed")
_MATERIALS = ("cotton", "polyester", "leather", "steel", "plastic", "glass", "ceramic", "wooden", "silk", "rubber")
_PRODUCTS = (
    "T-shirt",
    "handbag",
    "kitchen knife",
    "running shoes",
    "coffee mug",
    "wrist watch",
    "laptop sleeve",
    "dining chair",
    "bluetooth headphones",
    "sunglasses",
    "table lamp",
    "backpack",
)


@dataclass(frozen=True)
class BenchConfig:
    """How many runs of each measurement."""

    warmup: int = 5
    iterations: int = 50
    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    batch_repeats: int = 3
    explain_iterations: int = 3
    slow_warmup: int = 1  # warm-up runs of batches and explanations
    cold_start: bool = True

    @classmethod
    def quick(cls) -> BenchConfig:
        """A smoke run: every number is produced, none is worth quoting."""
        return cls(warmup=1, iterations=3, batch_repeats=1, explain_iterations=1, slow_warmup=0)


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Product-like descriptions of 3 to 12 words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(_ADJECTIVES), rng.choice(_MATERIALS), rng.choice(_PRODUCTS)]
        if i % 3 == 0:
            words += ["with", rng.choice(_MATERIALS), "lining,", "size", str(rng.randint(1, 48)), "for retail sale"]
        out.append(" ".join(words))
    return out


def synthetic_images(n: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[Image.Image]:
    """Distinct photo-sized RGB images: a coloured object on a light background, slightly blurred."""
    rng = random.Random(seed)
    images = []
    for _ in range(n):
        im = Image.new("RGB", size, tuple(rng.randint(200, 255) for _ in range(3)))
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = rng.randint(0, size[0] // 2), rng.randint(0, size[1] // 2)
            box = (x0, y0, x0 + rng.randint(80, size[0] // 2), y0 + rng.randint(80, size[1] // 2))
            colour = tuple(rng.randint(0, 200) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        images.append(im.filter(ImageFilter.GaussianBlur(1.5)))
    return images


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    """{"p50", "p95"} of a list of milliseconds (nearest rank)."""
    xs = sorted(ms)
    p95 = xs[min(len(xs) - 1, max(0, round(0.95 * len(xs)) - 1))]
    return {"p50": round(statistics.median(xs), 2), "p95": round(p95, 2)}


def _timed(fn: Callable[[int], object], warmup: int, iterations: int, sync: Callable[[], None]) -> list[float]:
    for i in range(warmup):
        fn(i)
    sync()
    out = []
    for i in range(iterations):
        t0 = time.perf_counter()
        fn(i)
        sync()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def machine() -> dict[str, Any]:
    """CPU model, usable cores, load average, torch and Python versions."""
    import torch

    from hs_model.towers import usable_cores

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def run_bench(
    config: BenchConfig = BenchConfig(), model_dir: Path | None = None, device: DeviceChoice = "auto"
) -> dict:
    """Every measurement of the DESIGN.md `bench` shape, plus the overhead ratio and context (machine, load).

    Args:
        config: iterations.
        model_dir: trained model folder, None for the zero-shot model.
        device: ``auto``, ``cpu`` or ``cuda``.
    """
    import torch

    from hs_model.config import TowerConfig
    from hs_model.predict import Classifier, Query

    result: dict[str, Any] = {"machine_before": machine()}
    cold = cold_start(model_dir, device) if config.cold_start else {}
    t0 = time.perf_counter()
    clf = Classifier(model_dir, dataclasses.replace(TowerConfig.from_env(), device=device))
    load_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if clf.device.type == "cuda" else (lambda: None)
    texts = synthetic_texts(64)
    images = synthetic_images(32)

    def text(i: int) -> str:
        return texts[i % len(texts)]

    def image(i: int) -> Image.Image:
        return images[i % len(images)]

    w, n = config.warmup, config.iterations
    predict = {
        "text": _timed(lambda i: clf.predict(text(i)), w, n, sync),
        "image": _timed(lambda i: clf.predict(None, [image(i)]), w, n, sync),
        "both": _timed(lambda i: clf.predict(text(i), [image(i)]), w, n, sync),
    }
    raw = {
        "text": _timed(lambda i: clf.text_tower.encode_text([text(i)]), w, n, sync),
        "image": _timed(lambda i: clf.image_tower.encode_image([image(i)]), w, n, sync),
    }
    predict_ms = {k: percentiles(v) for k, v in predict.items()}
    raw_ms = {k: percentiles(v) for k, v in raw.items()}
    raw_both = raw_ms["text"]["p50"] + raw_ms["image"]["p50"]

    batch: dict[str, float] = {}
    for size in config.batch_sizes:
        queries = [Query(text(i), (image(i).copy(),)) for i in range(size)]  # distinct photos: no sharing shortcut

        def run(_i: int, q: list[Query] = queries) -> object:
            return clf.predict_batch(q)

        times = _timed(run, config.slow_warmup, config.batch_repeats, sync)
        batch[str(size)] = round(size / (statistics.median(times) / 1000), 2)
        del queries

    result.update(
        {
            "predict_ms": predict_ms,
            "raw_towers_ms": raw_ms,
            "explain_ms": explain_ms(clf, text(0), image(0), config, sync),
            "batch_items_per_s": batch,
            "cold_start_s": cold.get("cold_start_s"),
            "peak_rss_mb": cold.get("peak_rss_mb"),
            "device": clf.device.type,
            "device_name": torch.cuda.get_device_name(clf.device)
            if clf.device.type == "cuda"
            else machine()["cpu_model"],
            "overhead_ratio": round(predict_ms["both"]["p50"] / raw_both, 3) if raw_both else None,
            "overhead_ms": round(predict_ms["both"]["p50"] - raw_both, 2),
            "batch_pipeline_items_per_s": pipeline_items_per_s(clf, texts, images, 128 if n > 3 else 32),
            "model_version": clf.version,
            "load_s_warm_process": round(load_s, 2),
            "cold_start": cold,
            "bench_process_peak_rss_mb": round(_peak_rss_mb(), 1),
            "iterations": n,
            "machine": machine(),
        }
    )
    return result


def explain_ms(clf, text: str, image: Image.Image, config: BenchConfig, sync) -> dict | None:
    """Time to explain the top candidate (photo + words), or None when there is no `hs_model.explain.Explainer`."""
    try:
        from hs_model.explain import Explainer
    except ImportError:
        log.warning("no hs_model.explain.Explainer: explain_ms is null")
        return None
    from hs_model.predict import Query

    explainer = Explainer(clf)
    query = Query(text, (image,))
    try:
        times = _timed(lambda _i: explainer.explain(query), config.slow_warmup, config.explain_iterations, sync)
    except ImportError as exc:  # captum is imported when the first explanation runs
        log.warning("explanations unavailable (%s): explain_ms is null", exc)
        return None
    return percentiles(times)


class _MemoryPhotos:
    """A PhotoSource over in-memory JPEG bytes (the batch pipeline without a zip)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def problem(self, name: str) -> str | None:
        return None if name in self.files else f"photo {name!r} is missing"

    def read(self, name: str) -> bytes:
        return self.files[name]


def pipeline_items_per_s(clf, texts: list[str], images: list[Image.Image], rows: int) -> float:
    """The batch screen's path: JPEG bytes decoded in threads, chunks of 32, text + one photo per line."""
    from hs_model.batch import BatchRow, classify_rows

    files = {}
    for i, im in enumerate(images):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        files[f"p{i}.jpg"] = buf.getvalue()
    batch = [BatchRow(i + 2, f"L{i}", texts[i % len(texts)], (f"p{i % len(images)}.jpg",)) for i in range(rows)]
    t0 = time.perf_counter()
    done = sum(len(chunk) for chunk in classify_rows(clf, batch, _MemoryPhotos(files)))
    return round(done / (time.perf_counter() - t0), 2)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cold_start(model_dir: Path | None, device: DeviceChoice) -> dict[str, Any]:
    """A fresh Python process: start -> imports -> model loaded -> first text+photo prediction; then a batch of 32.

    Returns its timings and its peak RSS (getrusage, after the batch).
    """
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "hs_train.bench", "--cold-child", str(model_dir or "zero-shot"), device]
    t0 = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start process failed ({proc.returncode}): {proc.stderr[-2000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "cold_start_s": round(child["first_prediction_at"] - t0, 3),
        "peak_rss_mb": child["peak_rss_mb"],
        "rss_at_first_prediction_mb": child["rss_first_mb"],
        "import_s": child["import_s"],
        "load_s": child["load_s"],
        "first_prediction_s": child["first_prediction_s"],
    }


def _cold_child(model: str, device: str) -> None:
    t0 = time.perf_counter()
    from hs_model.config import TowerConfig
    from hs_model.predict import Classifier, Query

    t1 = time.perf_counter()
    towers = dataclasses.replace(TowerConfig.from_env(), device=cast("DeviceChoice", device))  # TowerConfig checks it
    clf = Classifier(None if model == "zero-shot" else Path(model), towers)
    t2 = time.perf_counter()
    image = synthetic_images(1)[0]
    clf.predict("men's knitted cotton T-shirt", [image])
    first_at, t3 = time.time(), time.perf_counter()
    rss_first = _peak_rss_mb()
    texts, images = synthetic_texts(32, seed=1), synthetic_images(32, seed=1)
    clf.predict_batch([Query(t, (im,)) for t, im in zip(texts, images, strict=True)])
    out = {
        "first_prediction_at": first_at,
        "import_s": round(t1 - t0, 3),
        "load_s": round(t2 - t1, 3),
        "first_prediction_s": round(t3 - t2, 3),
        "rss_first_mb": round(rss_first, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    print(json.dumps(out))


def render_markdown(r: dict) -> str:
    """A results table for docs/bench.md."""
    m = r["machine"]

    def p(x: dict | None) -> str:
        return "n/a" if x is None else f"{x['p50']:.1f} / {x['p95']:.1f}"

    lines = [
        f"Device: **{r['device']}** ({r['device_name']}); CPU {m['cpu_model']}, {m['usable_cores']} usable cores, "
        f"{m['torch_threads']} torch threads, torch {m['torch_version']}, Python {m['python']}; "
        f"load average before {r['machine_before']['load_average']}, after {m['load_average']}; "
        f"model {r['model_version']}; {r['iterations']} iterations.",
        "",
        "| measurement | p50 / p95 ms |",
        "| --- | --- |",
        f"| predict, text | {p(r['predict_ms']['text'])} |",
        f"| predict, photo | {p(r['predict_ms']['image'])} |",
        f"| predict, text + photo | {p(r['predict_ms']['both'])} |",
        f"| raw text tower | {p(r['raw_towers_ms']['text'])} |",
        f"| raw image tower | {p(r['raw_towers_ms']['image'])} |",
        f"| explain top candidate (photo + words) | {p(r['explain_ms'])} |",
        "",
        f"Overhead ratio (predict text + photo p50 / (raw text p50 + raw image p50)): **{r['overhead_ratio']}** "
        f"({r['overhead_ms']} ms above the towers).",
        "",
        "| batch size | items/s (text + photo each) |",
        "| --- | --- |",
        *[f"| {k} | {v:.1f} |" for k, v in r["batch_items_per_s"].items()],
        f"| batch pipeline (JPEG decode in threads, chunks of 32) | {r['batch_pipeline_items_per_s']:.1f} |",
        "",
        f"Cold start (fresh process to first prediction): **{r['cold_start_s']} s** "
        f"(imports {r['cold_start'].get('import_s')} s, load {r['cold_start'].get('load_s')} s, "
        f"first prediction {r['cold_start'].get('first_prediction_s')} s); peak RSS of that process after a batch "
        f"of 32: **{r['peak_rss_mb']} MB** ({r['cold_start'].get('rss_at_first_prediction_mb')} MB at the first "
        "prediction).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__" and sys.argv[1:2] == ["--cold-child"]:
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _cold_child(sys.argv[2], sys.argv[3])
