"""What a run directory records so it can be reproduced: resolved config, seed, prompt, data manifest, versions."""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from utils.atomic_write import write_json_atomic

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


def redacted(value: Any) -> Any:
    """`value` made JSON-safe (dataclasses as dicts, other objects as text) with credentials left out: keys that look
    like secrets (tokens, passwords) are dropped and values that look like one (an hf_ token, user:password@ in a URL)
    are redacted."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): redacted(v) for k, v in value.items() if not _SECRET.search(str(k))}
    if isinstance(value, list | tuple | set):
        return [redacted(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub("<redacted>", value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return _SECRET_VALUE.sub("<redacted>", str(value))


def config_dict(*args_objects) -> dict[str, Any]:
    """Dataclass args as one dict, {class name: fields}, each `redacted`."""
    merged: dict[str, Any] = {}
    for obj in args_objects:
        d = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        merged[type(obj).__name__] = redacted(d)
    return merged


def token_to_environment(training_args) -> None:
    """A hub token given as an argument moves to HF_TOKEN: the Trainer pickles its arguments, token included, into
    training_args.bin in every checkpoint and in the run directory."""
    if training_args.hub_token:
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None


def write_run_record(output_dir: str | Path, kind: str, seed: int, config: dict[str, Any], **entries: Any) -> Path:
    """Write <output_dir>/run_record.json: kind, created (UTC), seed, the resolved config ({dataclass name: fields},
    e.g. `config_dict`'s), library versions, and `entries` as given, a dataclass as its fields (pass what may hold
    credentials, such as a data manifest, through `redacted`)."""
    entries = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in entries.items()}
    record = {
        "kind": kind,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "config": config,
        "versions": library_versions(),
        **entries,
    }
    return write_json_atomic(Path(output_dir) / "run_record.json", record)
