"""File names derived from uids: a uid is data (it may hold `/`, `..` or anything else), never a path as it stands."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")  # "." goes too: no "..", no hidden files, no suffix confusion
MAX_STEM = 80


def safe_stem(uid: str) -> str:
    """A file-name stem for `uid`: itself when it is plain (`dev-850-0-0`), else a sanitized form plus a short hash
    of the original, so two uids that sanitize alike (`a/b`, `a_b`) still get different names."""
    stem = _UNSAFE.sub("_", uid)[:MAX_STEM]
    if stem == uid and stem:
        return stem
    digest = hashlib.sha256(uid.encode("utf-8")).hexdigest()[:10]
    return f"{stem}-{digest}" if stem.strip("_") else f"uid-{digest}"


def image_file_name(uid: str, index: int) -> str:
    """`<safe stem>-img<index>.png`, following NLVR2's image names (dev-850-0-img0.png)."""
    return f"{safe_stem(uid)}-img{index}.png"
