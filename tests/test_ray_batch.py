"""Catalogue runs on Ray Data: same answers as the local batch, a real local cluster, bad lines reported, resume by id.

The tests marked slow start a real Ray head (`ray start --head --block` on 127.0.0.1, 2 CPUs, its own temp folder)
and submit to its address; the fixture kills that process group and anything else left running from its temp
folder, so no cluster outlives the module.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hs_model.batch import BatchFileError, DirPhotos
from hs_model.ray_batch import PartStore, PathPhotos, RayBatchConfig, read_lines, records_table

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (96, 72)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# -- no Ray needed --------------------------------------------------------------------------------------------------


def test_the_module_does_not_load_ray():
    code = "import sys, hs_model.ray_batch, hs_model.cli; print('ray' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_parquet_input_gets_the_local_row_checks(tmp_path: Path):
    (tmp_path / "a.jpg").write_bytes(jpeg((10, 20, 30)))
    table = pa.table(
        {
            "Line Reference": ["A1", "A2", "A1", "", "A4"],
            "Product Description": ["cotton shirt", "", "again", "no ref", "x" * 20_001],
            "photos": ["a.jpg", "missing.jpg", None, "", ""],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    rows = read_lines(tmp_path / "in.parquet", PathPhotos(tmp_path)).rows
    assert [r.line for r in rows] == [2, 3, 4, 5, 6]
    assert rows[0].ok and rows[0].photos == ("a.jpg",)
    assert rows[1].problems == (f"photo 'missing.jpg' is not a file ({tmp_path / 'missing.jpg'})",)
    assert rows[2].problems == ("line reference 'A1' is also on line 2",)
    assert rows[3].problems == ("no line reference",)
    assert rows[4].problems == ("description has 20,001 characters; the limit is 20,000",)


def test_catalogue_limits_take_more_than_one_local_run(tmp_path: Path):
    data = b"line_ref,description\n" + b"".join(b"L%d,cotton shirt\n" % i for i in range(6_000))
    (tmp_path / "big.csv").write_bytes(data)
    assert len(read_lines(tmp_path / "big.csv", DirPhotos(tmp_path)).rows) == 6_000  # the local batch stops at 5,000


def test_parts_belong_to_one_run(tmp_path: Path):
    out = tmp_path / "out.parquet"
    store = PartStore(out)
    assert store.open({"input_sha256": "a"}) == set()
    store.add(records_table([{"line": 2, "line_ref": "A"}, {"line": 3, "line_ref": "B"}]))
    (store.folder / "part-x-000009.parquet.tmp").write_bytes(b"half a file")  # a write cut short
    again = PartStore(out)
    assert again.open({"input_sha256": "a"}) == {2, 3}
    assert not list(store.folder.glob("*.tmp"))
    with pytest.raises(BatchFileError, match="holds the parts of another run"):
        PartStore(out).open({"input_sha256": "b"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--engine", "ray", "--out", "out.xlsx"], "--engine ray needs --out FILE.parquet or --out FILE.csv."),
        (["--engine", "ray", "--out", "o.csv", "--photos-zip", "p.zip"], "reads photos from a folder (--images-dir)"),
        (["--engine", "ray", "--out", "o.csv", "--actors", "0"], "--actors must be at least 1."),
        (["--address", "127.0.0.1:1", "--out", "o.csv"], "--address and --actors go with --engine ray."),
    ],
)
def test_cli_refuses_what_a_ray_run_cannot_do(tmp_path: Path, capsys, extra, message):
    from hs_model.__main__ import main

    (tmp_path / "in.csv").write_text("line_ref,description\nA1,shirt\n", encoding="utf-8")
    extra = [str(tmp_path / a) if a.endswith((".xlsx", ".csv", ".zip")) else a for a in extra]
    assert main(["predict", "--batch", str(tmp_path / "in.csv"), *extra]) == 2
    assert message in capsys.readouterr().err


# -- a real local cluster -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_using(folder: Path) -> list[int]:
    """Processes whose command line names `folder` (this cluster's temp folder): ours, nobody else's."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(folder).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs, started with `ray start --head --block`; stopped and checked after."""
    temp = Path(tempfile.mkdtemp(prefix="hsray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = _free_port()
    token = uuid.uuid4().hex
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env = {**os.environ, **auth, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port)]
    cmd += ["--num-cpus", "2", "--num-gpus", "0", "--temp-dir", str(temp), "--include-dashboard", "false"]
    cmd += ["--object-store-memory", str(300 * 1024**2), "--disable-usage-stats"]
    log = (temp / "ray-start.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)  # the test process is a driver of this cluster too
    try:
        deadline = time.monotonic() + 180
        while b"Ray runtime started" not in (temp / "ray-start.log").read_bytes():
            assert proc.poll() is None, (temp / "ray-start.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "ray start did not come up in 180 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` and the processes it started
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        for pid in _pids_using(temp):  # whatever left the process group, found by this cluster's own folder
            with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                os.kill(pid, signal.SIGKILL)
        gone = time.monotonic() + 30  # SIGKILL is asynchronous: wait for the processes to disappear
        while _pids_using(temp) and time.monotonic() < gone:
            time.sleep(0.2)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        assert not _pids_using(temp), "a Ray process of the test cluster survived"
        shutil.rmtree(temp, ignore_errors=True)


def _catalogue(folder: Path, n: int) -> Path:
    """`n` good lines (one in eight with a photo from --images-dir) followed by five malformed ones."""
    photos = folder / "photos"
    photos.mkdir()
    colours = [(200, 30, 30), (30, 160, 60), (30, 60, 160), (220, 200, 40)]
    for i, colour in enumerate(colours):
        (photos / f"p{i}.jpg").write_bytes(jpeg(colour))
    (photos / "broken.jpg").write_bytes(b"<html>not a photo</html>")
    goods = ["men's knitted cotton T-shirt", "leather handbag", "stainless steel kitchen knife", "wooden toy train",
             "laptop computer 14 inch", "frozen shrimp", "ceramic coffee mug", "running shoes with rubber soles"]  # fmt: skip
    lines = ["line_ref,description,photos"]
    for i in range(n):
        photo = f"p{i % len(colours)}.jpg" if i % 8 == 0 else ""
        lines.append(f"L{i:05d},{goods[i % len(goods)]} model {i},{photo}")
    lines += ["L00003,duplicate reference,", ",no reference,", "BAD1,,", "BAD2,mug,missing.jpg", "BAD3,mug,broken.jpg"]
    path = folder / "catalogue.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


MALFORMED = {
    "L00003": "line reference 'L00003' is also on line 5",
    "": "no line reference",
    "BAD1": "nothing to classify: no description and no photo",
    "BAD2": "photo 'missing.jpg' is not in",
    "BAD3": "broken.jpg: this is not an image file",
}


def _assert_same_answers(local: list[dict], remote: list[dict]) -> None:
    assert [r["line"] for r in remote] == [r["line"] for r in local]
    for a, b in zip(local, remote, strict=True):
        assert (a["code_1"], a["code_2"], a["code_3"], a["heading"], a["chapter"]) == (
            b["code_1"],
            b["code_2"],
            b["code_3"],
            b["heading"],
            b["chapter"],
        ), a["line_ref"]
        for key in ("score_1", "score_2", "score_3", "heading_score", "chapter_score"):
            assert (a[key] is None) == (b[key] is None)
            if a[key] is not None:
                assert abs(a[key] - b[key]) <= 1e-5, (a["line_ref"], key, a[key], b[key])
        assert a["needs_review"] == b["needs_review"] and a["error"] == b["error"]


@pytest.mark.slow
def test_1000_lines_on_a_real_cluster_match_the_local_batch(ray_cluster: str, tmp_path: Path):
    """The shipped model, through the CLI submitted to the cluster's address, against `classify_rows` in-process."""
    from hs_core.settings import DEFAULT_MODEL_DIR
    from hs_model.batch import classify_rows, read_batch_csv, result_record
    from hs_model.predict import Classifier
    from hs_model.ray_batch import CATALOGUE_LIMITS

    src, out = _catalogue(tmp_path, 1000), tmp_path / "out.parquet"
    cmd = [sys.executable, "-m", "hs_model", "predict", "--batch", str(src), "--engine", "ray", "--json"]
    cmd += ["--address", ray_cluster, "--actors", "1", "--images-dir", str(tmp_path / "photos"), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HS_TORCH_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert '"ran": 1001' in proc.stdout and '"errors": 5' in proc.stdout  # BAD3 runs: its photo fails to decode
    assert "4 of 1005 lines will not run" in proc.stderr
    remote = pq.read_table(out).to_pylist()
    assert not (tmp_path / "out.parquet.parts").exists()

    photos = DirPhotos(tmp_path / "photos")
    batch = read_batch_csv(src.read_bytes(), photos, CATALOGUE_LIMITS)
    clf = Classifier(DEFAULT_MODEL_DIR)
    records = {r.line: result_record(r, None, digits=None) for r in batch.invalid_rows}
    for chunk in classify_rows(clf, batch.valid_rows, photos, top_k=5, chunk_size=32):
        records.update({o.row.line: result_record(o.row, o.prediction, o.error, digits=None) for o in chunk})
    local = [records[r.line] for r in batch.rows]
    _assert_same_answers(local, remote)
    assert sum(1 for r in remote if r["code_1"]) == 1000 and remote[0]["model_version"] == clf.version
    errors = {r["line_ref"]: r["error"] for r in remote if r["error"]}
    assert set(errors) == set(MALFORMED)
    for ref, reason in MALFORMED.items():
        assert errors[ref].startswith(reason), (ref, errors[ref])


class TinyClassifierFactory:
    """Builds tests.test_batch's tiny real `Classifier` inside an actor; `crash_on` makes the actor process die.

    `once_marker`: die only the first time. `after_parts`: first wait until the driver has stored that many parts
    (so the blocks before the crash are on disk, whatever Ray does with outputs in flight when the actor dies).
    """

    def __init__(
        self, crash_on: str | None = None, once_marker: Path | None = None, after_parts: tuple[Path, int] | None = None
    ) -> None:
        self.crash_on, self.once_marker, self.after_parts = crash_on, once_marker, after_parts

    def __call__(self):
        import torch

        from tests.test_batch import tiny_classifier

        torch.manual_seed(0)  # the same tiny model in every actor
        clf = tiny_classifier()
        if self.crash_on is None:
            return clf
        crash_on, marker, after, predict_batch = self.crash_on, self.once_marker, self.after_parts, clf.predict_batch

        def crashing(queries, top_k=5):
            if any(crash_on in (q.text or "") for q in queries) and (marker is None or not marker.exists()):
                if marker is not None:
                    marker.write_text("crashed once")
                deadline = time.monotonic() + 120
                while after and len(list(after[0].glob("*.parquet"))) < after[1] and time.monotonic() < deadline:
                    time.sleep(0.1)  # a condition (the parts on disk), not a fixed wait
                os._exit(3)  # the actor process dies, as on an out-of-memory kill
            return predict_batch(queries, top_k)

        clf.predict_batch = crashing
        return clf


def _tiny_local(src: Path) -> list[dict]:
    import torch

    from hs_model.batch import classify_rows, read_batch_csv, result_record

    torch.manual_seed(0)
    clf = TinyClassifierFactory()()
    photos = DirPhotos(src.parent / "photos")
    batch = read_batch_csv(src.read_bytes(), photos)
    records = {r.line: result_record(r, None, digits=None) for r in batch.invalid_rows}
    for chunk in classify_rows(clf, batch.valid_rows, photos, top_k=3):
        records.update({o.row.line: result_record(o.row, o.prediction, o.error, digits=None) for o in chunk})
    return [records[r.line] for r in batch.rows]


@pytest.mark.slow
def test_an_interrupted_run_resumes_by_line_id(ray_cluster: str, tmp_path: Path):
    from hs_model.ray_batch import run_file

    src, out = _catalogue(tmp_path, 60), tmp_path / "out.parquet"
    photos = tmp_path / "photos"
    config = RayBatchConfig(address=ray_cluster, actors=1, block_lines=10, max_retries=0)
    crash = TinyClassifierFactory("model 45", after_parts=(tmp_path / "out.parquet.parts", 1))  # in the 5th block
    with pytest.raises(Exception):  # noqa: B017 - whatever Ray raises when the actor dies for good
        run_file(src, out, images_dir=photos, config=config, make_classifier=crash)
    assert not out.exists()
    parts = sorted((tmp_path / "out.parquet.parts").glob("*.parquet"))
    done = {line for p in parts for line in pq.read_table(p, columns=["line"]).column("line").to_pylist()}
    # whole blocks from before the crash (the last may still be in flight when the actor dies), never the crashed one
    assert done in [set(range(2, 2 + 10 * k)) for k in (1, 2, 3, 4)]

    result = run_file(src, out, images_dir=photos, config=config, make_classifier=TinyClassifierFactory())
    assert (result.resumed, result.ran, result.rows) == (len(done), 61 - len(done), 65)
    remote = pq.read_table(out).to_pylist()
    assert len({r["line"] for r in remote}) == 65
    _assert_same_answers(_tiny_local(src), remote)
    assert not (tmp_path / "out.parquet.parts").exists()


@pytest.mark.slow
def test_a_block_whose_actor_dies_is_retried_by_ray(ray_cluster: str, tmp_path: Path):
    from hs_model.ray_batch import run_file

    src, out = _catalogue(tmp_path, 30), tmp_path / "out.csv"
    marker = tmp_path / "crashed"
    config = RayBatchConfig(address=ray_cluster, actors=1, block_lines=10, max_retries=2)
    factory = TinyClassifierFactory("model 15", once_marker=marker)
    result = run_file(src, out, images_dir=tmp_path / "photos", config=config, make_classifier=factory)
    assert marker.read_text() == "crashed once"  # the actor did die on that block ...
    assert (result.ran, result.resumed, result.errors) == (31, 0, 5)  # ... and Ray ran it again
    text = out.read_bytes().decode("utf-8-sig")
    assert text.count("\r\n") == 36 and ",L00015,running shoes with rubber soles model 15," in text
