"""Safe photo decoding: every refusal is an `ImageError` with a message a broker can act on."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from hs_core.limits import LIMITS, PILLOW_FORMATS, Limits
from hs_model.errors import InputError

# Pillow refuses images above this many pixels with DecompressionBombError; we honour it, never disable it.
Image.MAX_IMAGE_PIXELS = LIMITS.max_image_pixels


class ImageError(InputError):
    """A photo that cannot be used, with the reason in plain words."""


def load_image(source: bytes | Path, name: str = "photo", limits: Limits = LIMITS) -> Image.Image:
    """Decode a photo into an RGB PIL image, or raise ImageError.

    Handles: size limit before decoding, decompression bombs (Pillow's MAX_IMAGE_PIXELS), non-images
    (SVG/HTML renamed to .jpg), truncated or corrupt files, animated images (first frame), EXIF rotation,
    CMYK / 16-bit / palette modes (converted to RGB), tiny or extremely elongated images.

    Args:
        source: raw bytes or a file path.
        name: what to call the photo in messages (its file name).
        limits: size limits.
    """
    data = source.read_bytes() if isinstance(source, Path) else source
    if not data:
        raise ImageError(f"{name}: the file is empty (0 bytes).")
    if len(data) > limits.max_image_bytes:
        size, limit = _megabytes(len(data), limits.max_image_bytes)
        raise ImageError(f"{name}: {size} MB is over the {limit} MB limit for one photo.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            fmt = image.format
            if fmt not in PILLOW_FORMATS:
                raise ImageError(f"{name}: {fmt or 'unknown'} files are not supported; use JPEG, PNG or WebP.")
            w, h = image.size
            if w * h > limits.max_image_pixels:
                raise ImageError(
                    f"{name}: {w}x{h} pixels is over the limit of {limits.max_image_pixels / 1e6:.0f} megapixels."
                )
            image.seek(0)  # first frame of an animated GIF/WebP
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: the image is too large to decode safely (decompression bomb guard).") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: this is not an image file (use JPEG, PNG or WebP).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: the image is corrupt or truncated ({exc.__class__.__name__}).") from None
    w, h = image.size
    if min(w, h) < limits.min_image_side:
        raise ImageError(
            f"{name}: {w}x{h} pixels is too small; photos need at least {limits.min_image_side} pixels a side."
        )
    if max(w, h) / min(w, h) > limits.max_aspect_ratio:
        raise ImageError(f"{name}: {w}x{h} is too elongated (aspect ratio over {limits.max_aspect_ratio:.0f}:1).")
    return image


def _megabytes(size: int, limit: int) -> tuple[str, str]:
    """Both sizes in MB with as many decimals as it takes for them to read differently."""
    for decimals in range(1, 8):
        a, b = f"{size / 1e6:.{decimals}f}", f"{limit / 1e6:.{decimals}f}"
        if a != b:
            return a, b
    return f"{size / 1e6:.7f}", f"{limit / 1e6:.7f}"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (16-bit greyscale is rescaled, alpha composited on white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
