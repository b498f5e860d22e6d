"""The speed benchmark: its helpers on tiny inputs, and the DESIGN.md JSON shape on a quick real run (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hs_train.bench import BenchConfig, percentiles, render_markdown, synthetic_images, synthetic_texts

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_percentiles_nearest_rank():
    assert percentiles([5.0, 1.0, 3.0]) == {"p50": 3.0, "p95": 5.0}
    assert percentiles(list(range(1, 101))) == {"p50": 50.5, "p95": 95}
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0}


def test_synthetic_inputs_are_distinct_and_repeatable():
    texts = synthetic_texts(12)
    assert len(set(texts)) == 12 and texts == synthetic_texts(12)
    images = synthetic_images(3)
    assert [im.size for im in images] == [(640, 480)] * 3 and images[0].tobytes() != images[1].tobytes()
    assert images[0].tobytes() == synthetic_images(1)[0].tobytes()


def test_quick_config_runs_every_measurement_once():
    quick = BenchConfig.quick()
    assert quick.batch_sizes == (1, 8, 32, 128) and quick.iterations < BenchConfig().iterations
    assert quick.cold_start


def sample_result() -> dict:
    p = {"p50": 10.0, "p95": 12.0}
    machine = {"cpu_model": "Test CPU", "usable_cores": 2, "torch_threads": 2, "torch_version": "2.x", "python": "3.11",
               "load_average": [0.1, 0.2, 0.3]}  # fmt: skip
    return {
        "predict_ms": {"text": p, "image": p, "both": p},
        "raw_towers_ms": {"text": p, "image": p},
        "explain_ms": None,
        "batch_items_per_s": {"1": 10.0, "8": 20.0, "32": 30.0, "128": 31.0},
        "cold_start_s": 4.2,
        "peak_rss_mb": 900.0,
        "device": "cpu",
        "device_name": "Test CPU",
        "overhead_ratio": 0.5,
        "overhead_ms": -10.0,
        "batch_pipeline_items_per_s": 29.0,
        "model_version": "m1",
        "cold_start": {"import_s": 2.0, "load_s": 2.0, "first_prediction_s": 0.2, "rss_at_first_prediction_mb": 800},
        "iterations": 3,
        "machine": machine,
        "machine_before": machine,
    }


def test_markdown_report_names_the_machine_and_every_number():
    text = render_markdown(sample_result())
    assert "Test CPU, 2 usable cores, 2 torch threads, torch 2.x" in text
    assert "| explain top candidate (photo + words) | n/a |" in text
    assert "| 128 | 31.0 |" in text and "**4.2 s**" in text and "**900.0 MB**" in text


@pytest.mark.slow
def test_bench_json_has_the_design_shape(tmp_path: Path):
    md = tmp_path / "bench.md"
    cmd = [sys.executable, "-m", "hs_model", "bench", "--quick", "--json", "--device", "cpu", "--markdown", str(md)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    p_keys = {"p50", "p95"}
    assert set(result["predict_ms"]) == {"text", "image", "both"}
    assert all(set(v) == p_keys and v["p50"] > 0 for v in result["predict_ms"].values())
    assert set(result["raw_towers_ms"]) == {"text", "image"}
    assert all(set(v) == p_keys for v in result["raw_towers_ms"].values())
    assert result["explain_ms"] is None or set(result["explain_ms"]) == p_keys
    assert set(result["batch_items_per_s"]) == {"1", "8", "32", "128"}
    assert all(v > 0 for v in result["batch_items_per_s"].values())
    assert result["cold_start_s"] > 0 and result["peak_rss_mb"] > 0
    assert result["device"] == "cpu" and result["overhead_ratio"] > 0
    assert "usable cores" in md.read_text()
