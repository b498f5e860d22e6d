"""Content-addressed photo store: ``<root>/<sha[:2]>/<sha>.<ext>``, written atomically, read safely."""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hs_core.files import atomic_write_bytes
from hs_core.limits import LIMITS, sniff_image
from hs_core.settings import get_settings

log = logging.getLogger(__name__)


class PhotoPathError(ValueError):
    """A stored photo path that is malformed or points outside the store root."""


@dataclass(frozen=True)
class StoredPhoto:
    """A photo saved in the store; ``rel_path`` is relative to the store root, with ``/`` separators."""

    sha256: str
    rel_path: str
    size_bytes: int
    mime: str
    width: int | None = None
    height: int | None = None


def default_photo_root() -> Path:
    """Return the photo store root: env ``HS_PHOTO_DIR`` or ``<repo>/var/photos``."""
    return get_settings().photo_dir


def _image_size(data: bytes) -> tuple[int | None, int | None]:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except Exception:  # noqa: BLE001 - size is informative only; a corrupt header must not block storing
        log.debug("could not read image size", exc_info=True)
        return None, None


def store_photo(data: bytes, root: Path | None = None) -> StoredPhoto:
    """Save ``data`` under its SHA-256; storing the same bytes again is a no-op.

    The file is written to a temporary name in the target directory and moved into place with
    ``os.replace``, so readers never see a partial file.

    Args:
        data: The image bytes.
        root: Store root; :func:`default_photo_root` when omitted.

    Returns:
        Where the photo lives and what it is.

    Raises:
        ValueError: Empty, too large, or not a supported image.
    """
    if not data:
        raise ValueError("empty photo")
    if len(data) > LIMITS.max_image_bytes:
        raise ValueError(f"photo larger than {LIMITS.max_image_bytes / 1e6:.1f} MB")
    ext, mime = sniff_image(data)
    root = Path(root) if root is not None else default_photo_root()
    sha = hashlib.sha256(data).hexdigest()
    rel = f"{sha[:2]}/{sha}.{ext}"
    target = root / sha[:2] / f"{sha}.{ext}"
    if not (target.is_file() and target.stat().st_size == len(data)):
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        log.debug("stored photo %s", rel)
    width, height = _image_size(data)
    return StoredPhoto(sha256=sha, rel_path=rel, size_bytes=len(data), mime=mime, width=width, height=height)


def resolve_photo(root: Path | None, rel_path: str) -> Path:
    """Turn a stored relative path into an absolute path inside ``root``.

    Args:
        root: Store root; :func:`default_photo_root` when ``None``.
        rel_path: The ``Photo.path`` value.

    Returns:
        The absolute, resolved path (it may not exist).

    Raises:
        PhotoPathError: Absolute paths, ``..`` components, backslashes, NUL bytes, or anything that
            resolves (symlinks included) outside ``root``.
    """
    if not rel_path or "\x00" in rel_path or "\\" in rel_path:
        raise PhotoPathError(f"invalid photo path: {rel_path!r}")
    pure = PurePosixPath(rel_path)
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise PhotoPathError(f"photo path escapes the store: {rel_path!r}")
    base = (Path(root) if root is not None else default_photo_root()).resolve()
    full = (base / pure).resolve()
    if not full.is_relative_to(base) or full == base:
        raise PhotoPathError(f"photo path escapes the store: {rel_path!r}")
    return full
