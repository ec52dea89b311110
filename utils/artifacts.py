"""Where the lab writes its artifacts: $VLM_STUDIES_ROOT (default ./artifacts), one folder per kind."""

from __future__ import annotations

import os
from pathlib import Path

ARTIFACT_KINDS = ("checkpoints", "logs", "datasets", "analysis", "models")


def artifact_root() -> Path:
    """The artifact root, absolute: env VLM_STUDIES_ROOT, else ./artifacts in the working directory."""
    return Path(os.environ.get("VLM_STUDIES_ROOT") or "artifacts").expanduser().resolve()


def artifact_dir(kind: str) -> Path:
    """<artifact root>/<kind> for kind in ARTIFACT_KINDS (not created here)."""
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; choose one of {list(ARTIFACT_KINDS)}")
    return artifact_root() / kind
