"""Content-addressed photo store: idempotent atomic writes, and no path escapes the root."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from db.photos import PhotoPathError, default_photo_root, resolve_photo, store_photo


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 20), (10, 200, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def test_store_is_content_addressed_and_idempotent(tmp_path: Path):
    data = jpeg_bytes()
    first = store_photo(data, tmp_path)
    sha = hashlib.sha256(data).hexdigest()
    assert first.sha256 == sha
    assert first.rel_path == f"{sha[:2]}/{sha}.jpg"
    assert (first.mime, first.width, first.height, first.size_bytes) == ("image/jpeg", 10, 20, len(data))
    path = resolve_photo(tmp_path, first.rel_path)
    assert path.read_bytes() == data
    mtime = path.stat().st_mtime_ns
    second = store_photo(data, tmp_path)
    assert second == first
    assert path.stat().st_mtime_ns == mtime  # not rewritten
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind


def test_store_refuses_non_images_and_empty(tmp_path: Path):
    with pytest.raises(ValueError, match="not a supported image"):
        store_photo(b"#!/bin/sh\nrm -rf /\n", tmp_path)
    with pytest.raises(ValueError, match="empty"):
        store_photo(b"", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "rel",
    ["../etc/passwd", "ab/../../secret", "/etc/passwd", "ab\\..\\..\\x", "", "a\x00b", "C:/windows", ".", "ab/.."],
)
def test_resolve_refuses_traversal(tmp_path: Path, rel: str):
    with pytest.raises(PhotoPathError):
        resolve_photo(tmp_path / "store", rel)


def test_resolve_refuses_symlink_out_of_root(tmp_path: Path):
    root = tmp_path / "store"
    (root / "ab").mkdir(parents=True)
    (tmp_path / "outside.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "outside.jpg", root / "ab" / "link.jpg")
    with pytest.raises(PhotoPathError):
        resolve_photo(root, "ab/link.jpg")


def test_default_root_from_env(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HS_PHOTO_DIR", str(tmp_path))
    assert default_photo_root() == tmp_path
    monkeypatch.delenv("HS_PHOTO_DIR")
    assert default_photo_root().parts[-2:] == ("var", "photos")
