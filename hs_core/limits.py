"""Input limits that protect the process, and the one list of photo formats; every refusal names the limit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Input limits (the model, the photo store and the screens all use these)."""

    max_text_chars: int = 20_000
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    min_image_side: int = 16
    max_aspect_ratio: float = 20.0
    max_images: int = 8


LIMITS = Limits()


@dataclass(frozen=True)
class ImageFormat:
    """A photo format the product accepts: its Pillow name, file extension, MIME type and magic bytes."""

    pillow: str
    extension: str
    mime: str
    magic: tuple[bytes, ...]


IMAGE_FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("JPEG", "jpg", "image/jpeg", (b"\xff\xd8\xff",)),
    ImageFormat("PNG", "png", "image/png", (b"\x89PNG\r\n\x1a\n",)),
    ImageFormat("WEBP", "webp", "image/webp", ()),  # RIFF....WEBP, checked below
    ImageFormat("GIF", "gif", "image/gif", (b"GIF87a", b"GIF89a")),
    ImageFormat("BMP", "bmp", "image/bmp", (b"BM",)),
    ImageFormat("TIFF", "tif", "image/tiff", (b"II*\x00", b"MM\x00*")),
)
PILLOW_FORMATS = frozenset(f.pillow for f in IMAGE_FORMATS)
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"


def sniff_image(data: bytes) -> tuple[str, str]:
    """Return ``(extension, mime)`` from the file's magic bytes.

    Raises:
        ValueError: The bytes are not one of `IMAGE_FORMATS`.
    """
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    for fmt in IMAGE_FORMATS:
        if any(data.startswith(magic) for magic in fmt.magic):
            return fmt.extension, fmt.mime
    raise ValueError(f"not a supported image (expected {FORMAT_NAMES})")
