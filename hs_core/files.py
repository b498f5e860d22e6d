"""Atomic file writes: a reader sees the old file or the new one, never half of one, even after a crash."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def is_temporary(path: Path) -> bool:
    """Whether `path` is the temporary file of an atomic write (left behind only by a crash mid-write)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def fsync_file(path: Path) -> None:
    """Flush a file written by another library (e.g. safetensors) to the disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path`: a temporary file in the same folder, flushed to disk, then ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
