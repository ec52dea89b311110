"""Opening images by content (NLVR2 has ".png" files that are JPEGs) with errors naming the file.

Every image the lab reads ends up RGB, 8 bits per channel, upright (EXIF orientation applied), or is refused with
a DataError naming the file and the reason: unreadable, truncated, over PIL's decompression-bomb pixel limit, or of
an aspect ratio the Qwen2-VL image processor refuses.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.errors import DataError

# Qwen2-VL's smart_resize raises for a longer/shorter side ratio above 200 (at the first batch, naming no example).
MAX_ASPECT_RATIO = 200
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def normalize_image(img: Image.Image, where: str) -> Image.Image:
    """A loaded PIL image -> upright RGB (EXIF orientation applied, 16-bit grey scaled to 8 bits, alpha dropped)."""
    w, h = img.size
    if min(w, h) < 1 or max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise DataError(where, f"degenerate image size {w}x{h} (aspect ratio above {MAX_ASPECT_RATIO})")
    img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT:  # convert("RGB") would clip every value above 255 to white
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8), mode="L")
    return img.convert("RGB")  # always a copy, without .format: datasets then stores it losslessly (PNG)


def open_image(source: str | Path | bytes, where: str | None = None) -> Image.Image:
    """Open a path or bytes as a fully loaded RGB image (EXIF orientation applied); DataError when it can't be."""
    name = where or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except FileNotFoundError:
        raise DataError(name, "image file not found") from None
    try:
        with fh, warnings.catch_warnings():
            # Over Image.MAX_IMAGE_PIXELS PIL only warns (it raises above twice that): refuse both before decoding.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as img:
                img.load()
                return normalize_image(img, name)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(name, f"too many pixels, refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise DataError(
            name, "unreadable or corrupt image: not a known image format (empty or damaged file?)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(name, f"unreadable or corrupt image ({e})") from None
