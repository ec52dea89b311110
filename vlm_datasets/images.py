"""Opening images by content (NLVR2 has ".png" files that are JPEGs) with errors naming the file."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from vlm_datasets.errors import DataError


def open_image(source: str | Path | bytes, where: str | None = None) -> Image.Image:
    """Open a path or bytes as a fully loaded RGB image (EXIF orientation applied)."""
    name = where or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except FileNotFoundError:
        raise DataError(name, "image file not found") from None
    try:
        with fh, Image.open(fh) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(name, f"unreadable or corrupt image ({e})") from None
