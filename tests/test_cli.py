"""Command-line contracts: user errors give one clear line on stderr and exit 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hs_model", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def assert_user_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), proc.stderr


def test_not_an_image(tmp_path):
    fake = tmp_path / "photo.jpg"
    fake.write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    assert_user_error(run("predict", "--text", "shoe", "--image", str(fake)), "not an image")


def test_corrupt_jpeg(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), "red").save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:200])
    assert_user_error(run("predict", "--image", str(bad)), "corrupt")


def test_empty_description_and_no_photo():
    assert_user_error(run("predict", "--text", "   "), "description")


def test_one_megabyte_description(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("cotton t-shirt " * 70_000)  # about 1 MB
    assert_user_error(run("predict", "--text-file", str(big)), "limit")


def test_missing_file():
    assert_user_error(run("evaluate", "--data", "/nonexistent/x.jsonl"), "no such file")


@pytest.mark.slow
def test_predict_json_contract():
    proc = run("predict", "--text", "men's knitted cotton T-shirt", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= {"model_version", "levels", "needs_review"}
    for level in ("2", "4", "6"):
        cands = out["levels"][level]
        assert cands and all(len(c["code"]) == int(level) and c["description"] for c in cands)
        scores = [c["score"] for c in cands]
        assert scores == sorted(scores, reverse=True)
    assert out["levels"]["2"][0]["code"] == "61"
