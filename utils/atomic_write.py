"""Writing a file whole: a temporary file in the same folder, fsynced, then os.replace, so that a reader, or a process
killed half-way, finds the old file or the new one and never a part of one. The text, JSON and JSON-lines writers
are thin wrappers of `write_bytes_atomic`."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"  # .<name>.<hex>.tmp beside the target while it is written


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` whole, creating its folder. A replaced file keeps its permission bits; a new one gets
    0o666 less the umask, as open() gives. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")  # unique: concurrent writers
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """`text` encoded, written whole (no newline translation)."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | Path, payload: Any, **dumps_kwargs) -> Path:
    """`payload` as indented JSON with sorted keys (or as `dumps_kwargs` say) and a final newline, written whole."""
    options = {"indent": 2, "sort_keys": True} | dumps_kwargs
    return write_text_atomic(path, json.dumps(payload, **options) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[Any]) -> Path:
    """One JSON document per line, written whole."""
    return write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
