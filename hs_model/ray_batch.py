"""Catalogue-scale batch classification on Ray Data: the local batch's row checks and model code, spread over actors.

The driver reads and checks the input with the local batch's own code (`read_batch_csv` / `check_rows`: encodings,
header aliases, duplicate references, photo names), then Ray Data runs ``from_blocks -> map_batches`` over a pool of
actors, each loading the `Classifier` once (one actor per GPU when the cluster has GPUs: float16 towers, as locally)
and running `classify_rows`, the local batch's model loop. Results stream back to the driver, which stores them in
``OUT.parts/`` (one Parquet file per block, written atomically), and at the end writes OUT (Parquet or CSV, in input
order) and removes the parts.

Resumable by line id: an interrupted run leaves ``OUT.parts/``; the same command again skips every line already
there (the manifest ties the parts to the input's SHA-256, the model and top-k, so another input is refused).

Ray is imported only inside the functions that run it: the app never loads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from hs_model.batch import (
    BATCH_LIMITS,
    RESULT_COLUMNS,
    BatchFile,
    BatchFileError,
    BatchLimits,
    BatchRow,
    DirPhotos,
    check_rows,
    classify_rows,
    column_index,
    read_batch_csv,
    result_record,
    results_csv,
    split_photo_names,
)
from hs_model.errors import InputError

if TYPE_CHECKING:
    import ray

    from hs_model.predict import Classifier

log = logging.getLogger(__name__)

# One catalogue run takes what one driver can check and hold; the per-row limits are the local batch's.
CATALOGUE_LIMITS = replace(BATCH_LIMITS, max_rows=20_000_000, max_csv_bytes=16 * 1024**3)
OUTPUT_SUFFIXES = (".parquet", ".csv")
INPUT_SUFFIXES = (".csv", ".parquet")

_TEXT = pa.string()
_TYPES = {"line": pa.int64(), "needs_review": pa.bool_()}
RESULT_SCHEMA = pa.schema(  # by column name: the local batch adds columns as features come
    [
        (c, _TYPES.get(c) or (pa.float64() if c.endswith("score") or c.startswith("score_") else _TEXT))
        for c in RESULT_COLUMNS
    ]
)
# The lines that go to the actors: what `BatchRow` needs, nothing else.
LINE_SCHEMA = pa.schema([("line", pa.int64()), ("line_ref", _TEXT), ("description", _TEXT), ("photos", _TEXT)])


class PathPhotos:
    """Photos named by path in the photos column: absolute, or relative to the input file's folder.

    On a cluster the path must resolve on every node (a shared or identically mounted folder).
    """

    def __init__(self, base: Path, limits: BatchLimits = BATCH_LIMITS) -> None:
        self.base, self.limits = base, limits

    def _path(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.base / path

    def problem(self, name: str) -> str | None:
        path = self._path(name)
        try:
            size = path.stat().st_size
        except OSError:
            return f"photo {name!r} is not a file ({path})"
        if not path.is_file():
            return f"photo {name!r} is not a file ({path})"
        if size > self.limits.max_photo_bytes:
            return f"photo {name!r} is {size / 1e6:.1f} MB, over the {self.limits.max_photo_bytes / 1e6:.0f} MB limit"
        return None

    def read(self, name: str) -> bytes:
        reason = self.problem(name)
        if reason is not None:
            raise InputError(reason)
        with self._path(name).open("rb") as fh:
            return fh.read(self.limits.max_photo_bytes + 1)


@dataclass(frozen=True)
class PhotoSpec:
    """Where the actors find the photos: a folder (``--images-dir``, matched by file name) or paths in the CSV."""

    folder: Path | None = None
    base: Path | None = None

    def source(self, limits: BatchLimits = BATCH_LIMITS) -> DirPhotos | PathPhotos:
        if self.folder is not None:
            return DirPhotos(self.folder, limits)
        return PathPhotos(self.base or Path.cwd(), limits)


@dataclass(frozen=True)
class RayBatchConfig:
    """How a catalogue run is spread: cluster address (None: a local Ray in this process), actors, block size."""

    address: str | None = None
    actors: int | None = None  # default: one per GPU, else 1
    top_k: int = 3
    chunk_size: int = 32  # lines per model call inside an actor (as the local batch)
    block_lines: int = 512  # most lines per Ray block (the unit of scheduling, retry and resume)
    max_retries: int = 3  # actor restarts and block retries Ray may spend before the run fails
    cpus_per_actor: float | None = None  # default: the cluster's CPUs shared out between the CPU actors


@dataclass(frozen=True)
class RayBatchResult:
    rows: int
    ran: int
    resumed: int
    errors: int
    seconds: float
    actors: int
    gpus_per_actor: float
    out: Path

    @property
    def lines_per_s(self) -> float | None:
        return round(self.ran / self.seconds, 2) if self.seconds > 0 and self.ran else None

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": "ray",
            "rows": self.rows,
            "ran": self.ran,
            "resumed": self.resumed,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "lines_per_s": self.lines_per_s,
            "actors": self.actors,
            "gpus_per_actor": self.gpus_per_actor,
            "out": str(self.out),
        }


# -- input --------------------------------------------------------------------------------------------------------


def read_lines(path: Path, photos: DirPhotos | PathPhotos, limits: BatchLimits = CATALOGUE_LIMITS) -> BatchFile:
    """Read and check a CSV or Parquet input with the local batch's row checks.

    A Parquet file's line id is its row number plus one, as if it were a CSV with a header on line 1.

    Raises:
        BatchFileError: not a CSV or Parquet file, missing columns, or too large for one run.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_batch_csv(path.read_bytes(), photos, limits, name=path.name)
    if suffix != ".parquet":
        raise BatchFileError(f"{path.name}: the input must end in .csv or .parquet.")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise BatchFileError(f"{path.name} is not a readable Parquet file ({exc}).") from None
    if table.num_rows == 0:
        raise BatchFileError(f"{path.name} has no line items.")
    if table.num_rows > limits.max_rows:
        raise BatchFileError(
            f"{path.name} has {table.num_rows:,} line items; one run takes at most {limits.max_rows:,}."
        )
    index = column_index(table.column_names)

    def column(name: str) -> list[str]:
        if name not in index:
            return [""] * table.num_rows
        return ["" if v is None else str(v) for v in table.column(index[name]).to_pylist()]

    refs, texts, cells = column("line_ref"), column("description"), column("photos")
    records = ((i + 2, refs[i], texts[i], cells[i]) for i in range(table.num_rows))
    return BatchFile(tuple(check_rows(records, photos, limits)), "parquet", "", tuple(table.column_names))


def fingerprint(input_path: Path, model_dir: Path | None, top_k: int, photos: PhotoSpec) -> dict[str, Any]:
    """What a run's parts belong to: the input's bytes, the model (its card), top-k and the photo folder."""
    h = hashlib.sha256()
    with input_path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    card = model_dir / "card.json" if model_dir is not None else None
    model = hashlib.sha256(card.read_bytes()).hexdigest() if card is not None and card.is_file() else str(model_dir)
    return {
        "input_sha256": h.hexdigest(),
        "model": model,
        "top_k": top_k,
        "photos": str(photos.folder or photos.base),
    }


# -- the parts folder: what makes a run resumable --------------------------------------------------------------


class PartStore:
    """``OUT.parts/``: one Parquet file per finished block, written through a temporary name, plus a manifest."""

    def __init__(self, out: Path) -> None:
        self.folder = out.with_name(out.name + ".parts")
        self.run = uuid.uuid4().hex[:8]
        self.count = 0

    def open(self, manifest: dict[str, Any]) -> set[int]:
        """Create the folder, or check an existing one belongs to this run; returns the line ids already done."""
        path = self.folder / "manifest.json"
        if self.folder.exists():
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                found = None
            if found != manifest:
                raise BatchFileError(
                    f"{self.folder} holds the parts of another run (another input, model, top-k or photo folder). "
                    "Delete it to start over, or choose another --out."
                )
        else:
            self.folder.mkdir(parents=True)
            path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        done: set[int] = set()
        for part in sorted(self.folder.glob("*.parquet.tmp")):  # an interrupted write: its lines run again
            part.unlink()
        for part in sorted(self.folder.glob("*.parquet")):
            done.update(pq.read_table(part, columns=["line"]).column("line").to_pylist())
        return done

    def add(self, table: pa.Table) -> None:
        final = self.folder / f"part-{self.run}-{self.count:06d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self.count += 1

    def read(self) -> pa.Table:
        parts = sorted(self.folder.glob("*.parquet"))
        if not parts:
            return RESULT_SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(p, schema=RESULT_SCHEMA) for p in parts])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# -- the actor ----------------------------------------------------------------------------------------------------


def records_table(records: Iterable[dict[str, Any]]) -> pa.Table:
    """Result records (as `result_record` builds them) -> an Arrow table with the fixed result schema."""
    return pa.Table.from_pylist(list(records), schema=RESULT_SCHEMA)


class LinePredictor:
    """The Ray actor: loads the classifier once, then turns blocks of lines into result rows with `classify_rows`."""

    def __init__(
        self,
        make_classifier: Callable[[], Classifier],
        photos: PhotoSpec,
        top_k: int,
        chunk_size: int,
        env: dict[str, str] | None = None,
        limits: BatchLimits = CATALOGUE_LIMITS,
    ) -> None:
        os.environ.update(env or {})  # before the towers load: offline hub, device, torch threads
        self.classifier = make_classifier()
        self.photos = photos.source(limits)
        self.top_k, self.chunk_size = top_k, chunk_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        lines = batch.to_pylist()
        rows = [BatchRow(r["line"], r["line_ref"], r["description"], split_photo_names(r["photos"])) for r in lines]
        records = {}
        for chunk in classify_rows(self.classifier, rows, self.photos, top_k=self.top_k, chunk_size=self.chunk_size):
            for o in chunk:
                records[o.row.line] = result_record(o.row, o.prediction, o.error, digits=None)
        return records_table(records[r.line] for r in rows)


class ClassifierFactory:
    """Builds the shipped `Classifier` inside an actor (picklable; the actor's device decides CPU or GPU)."""

    def __init__(self, model_dir: Path | None) -> None:
        self.model_dir = model_dir

    def __call__(self) -> Classifier:
        from hs_model.predict import Classifier

        return Classifier(self.model_dir)


# -- the run ------------------------------------------------------------------------------------------------------


def start_ray(address: str | None, **init_args: Any) -> None:
    """Connect to a cluster at `address`, or start a local Ray inside this process (no address)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, **init_args)
    else:
        ray.init(address="local", include_dashboard=False, **init_args)


def actor_env(threads: int) -> dict[str, str]:
    """The environment an actor sets before loading the towers: offline hub, this run's device, torch threads."""
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HS_TORCH_THREADS": str(max(1, threads))}
    if "HS_DEVICE" in os.environ:
        env["HS_DEVICE"] = os.environ["HS_DEVICE"]
    return env


def _lines_table(rows: Sequence[BatchRow]) -> pa.Table:
    return pa.table(
        {
            "line": [r.line for r in rows],
            "line_ref": [r.line_ref for r in rows],
            "description": [r.description for r in rows],
            "photos": [";".join(r.photos) for r in rows],
        },
        schema=LINE_SCHEMA,
    )


def run_ray_batch(
    batch: BatchFile,
    out: Path,
    manifest: dict[str, Any],
    photos: PhotoSpec,
    config: RayBatchConfig,
    make_classifier: Callable[[], Classifier],
) -> RayBatchResult:
    """Classify the valid lines of `batch` on Ray, resuming from ``OUT.parts/``; writes OUT (sorted by line).

    Lines with problems are written with their reason and never reach the model; a line the model cannot take
    (a photo that does not decode) gets its error in the output; neither stops the run.
    """
    import ray

    start_ray(config.address)
    store = PartStore(out)
    done = store.open(manifest)
    todo = [r for r in batch.valid_rows if r.line not in done]
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
    gpus = int(resources.get("GPU", 0))
    actors = config.actors or max(gpus, 1)
    gpus_per_actor = 1.0 if gpus >= actors else (gpus / actors if gpus else 0.0)
    cpus = config.cpus_per_actor or (1.0 if gpus else max(1.0, float(int(resources.get("CPU", 1)) // actors)))
    log.info("%d lines to run (%d already done), %d actors, %.2f GPU each", len(todo), len(done), actors, gpus)
    t0 = time.perf_counter()
    ran = 0
    if todo:
        size = max(1, min(config.block_lines, math.ceil(len(todo) / (4 * actors))))  # at least 4 blocks per actor
        blocks = [_lines_table(todo[i : i + size]) for i in range(0, len(todo), size)]
        ctx = ray.data.DataContext.get_current()
        # a flaky shared folder: Ray retries the block (Ray annotates List[BaseException]; it takes exception classes)
        ctx.actor_task_retry_on_errors = [OSError]  # type: ignore[list-item]
        with warnings.catch_warnings():
            # max_restarts / max_task_retries still go through **ray_remote_args in Ray 2.60 (deprecated for 2.64);
            # without them Ray Data restarts a crashing actor forever.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            ds = _map(blocks, config, make_classifier, photos, actors, gpus_per_actor, cpus)
        for part in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            store.add(part)
            ran += part.num_rows  # type: ignore[union-attr]  # Ray's iter_batches is not overloaded on batch_format
    seconds = time.perf_counter() - t0
    invalid = records_table(result_record(r, None, digits=None) for r in batch.invalid_rows)
    results = pa.concat_tables([store.read(), invalid])
    position = {line: i for i, line in enumerate(results.column("line").to_pylist())}
    table = results.take([position[r.line] for r in batch.rows if r.line in position])  # input order
    missing = len(batch.rows) - table.num_rows
    if missing:  # every line is either in the parts or invalid; anything else is a bug, never a silent loss
        raise RuntimeError(f"{missing} lines have no result; {store.folder} is kept: rerun to resume")
    write_output(table, out)
    store.remove()
    errors = sum(1 for e in table.column("error").to_pylist() if e)
    return RayBatchResult(len(batch.rows), ran, len(done), errors, seconds, actors, gpus_per_actor, out)


def _map(
    blocks: list[pa.Table],
    config: RayBatchConfig,
    make_classifier: Callable[[], Classifier],
    photos: PhotoSpec,
    actors: int,
    gpus_per_actor: float,
    cpus: float,
) -> ray.data.Dataset:
    """from_blocks -> map_batches over a fixed pool of `LinePredictor` actors; Ray retries a failed block.

    `from_blocks` keeps one block per `block_lines` lines (never re-split) and, unlike `from_arrow`, computes the
    blocks' metadata here instead of in remote tasks.
    """
    import ray

    return ray.data.from_blocks(blocks).map_batches(  # type: ignore[no-any-return]  # Ray: from_blocks has no return type
        LinePredictor,
        batch_size=None,  # one call per block: a block is the unit of retry and resume
        batch_format="pyarrow",
        fn_constructor_kwargs={
            "make_classifier": make_classifier,
            "photos": photos,
            "top_k": config.top_k,
            "chunk_size": config.chunk_size,
            "env": actor_env(int(cpus)),
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor or None,
        num_cpus=cpus,
        max_restarts=config.max_retries,  # an actor that dies (OOM, segfault) is restarted ...
        max_task_retries=config.max_retries,  # ... and its block run again
    )


def write_output(table: pa.Table, out: Path) -> None:
    """Results to ``.parquet`` or ``.csv`` (the local batch's CSV writer: BOM, formula-safe), via a temporary file."""
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"{out}: a catalogue run writes .parquet or .csv.")
    tmp = out.with_name(f".{out.name}.tmp")
    if suffix == ".parquet":
        pq.write_table(table, tmp)
    else:
        tmp.write_bytes(results_csv(table.to_pylist()))
    tmp.replace(out)


def run_file(
    input_path: Path,
    out: Path,
    *,
    images_dir: Path | None = None,
    model_dir: Path | None = None,
    config: RayBatchConfig = RayBatchConfig(),
    make_classifier: Callable[[], Classifier] | None = None,
    limits: BatchLimits = CATALOGUE_LIMITS,
    on_problems: Callable[[BatchFile], None] | None = None,
) -> RayBatchResult:
    """Check `input_path` (CSV or Parquet) on the driver, then classify it on Ray into `out` (see `run_ray_batch`)."""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"{out}: a catalogue run writes .parquet or .csv.")
    if not out.parent.is_dir():
        raise InputError(f"No such folder for the output: {out.parent}")
    photos = PhotoSpec(folder=images_dir.resolve()) if images_dir else PhotoSpec(base=input_path.resolve().parent)
    batch = read_lines(input_path, photos.source(limits), limits)
    if on_problems is not None:
        on_problems(batch)
    manifest = fingerprint(input_path, model_dir, config.top_k, photos)
    factory = make_classifier or ClassifierFactory(model_dir.resolve() if model_dir else None)
    return run_ray_batch(batch, out, manifest, photos, config, factory)
