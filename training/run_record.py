"""What a run directory records so it can be reproduced: resolved config, seed, prompt, data manifest, versions."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "trl",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "pillow",
)
_SECRET = re.compile(r"token|secret|password|api_key", re.IGNORECASE)
# Values that look like credentials whatever their key: Hugging Face tokens, and user:password@ in URLs.
_SECRET_VALUE = re.compile(r"hf_[A-Za-z0-9]{20,}|(?<=://)[^/@\s]+:[^/@\s]+(?=@)")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not _SECRET.search(str(k))}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub("<redacted>", value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return _SECRET_VALUE.sub("<redacted>", str(value))


def config_dict(*args_objects) -> dict[str, Any]:
    """Merge dataclass args into one JSON-safe dict; keys that look like secrets (tokens, passwords) are dropped and
    values that look like one (an hf_ token, user:password@ in a URL) are redacted."""
    merged: dict[str, Any] = {}
    for obj in args_objects:
        d = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        merged[type(obj).__name__] = _jsonable(d)
    return merged


def token_to_environment(training_args) -> None:
    """A hub token given as an argument moves to HF_TOKEN: the Trainer pickles its arguments, token included, into
    training_args.bin in every checkpoint and in the run directory."""
    if training_args.hub_token:
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None


def write_json_atomic(path: Path, payload: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def write_run_record(
    output_dir: str | Path,
    args_objects: tuple,
    template,
    dataset_manifest: dict[str, Any],
    seed: int,
    kind: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write <output_dir>/run_record.json (resolved config, seed, template name + text, data, library versions, and
    `extra`'s entries, e.g. the vision feature cache's counters)."""
    record = {
        "kind": kind,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "prompt_template": dataclasses.asdict(template),  # name, text, answers and layout
        "dataset": _jsonable(dataset_manifest),
        "config": config_dict(*args_objects),
        "versions": library_versions(),
        **_jsonable(extra or {}),
    }
    return write_json_atomic(Path(output_dir) / "run_record.json", record)
