"""Which checkpoint-N of a run directory to resume from: the newest complete one.

transformers (5.x) writes a checkpoint in place, into <output_dir>/checkpoint-N: weights, optimizer, scheduler,
RNG state, and trainer_state.json last (Trainer._save_checkpoint), with no temporary folder or rename. Its own
resume (`get_last_checkpoint`) takes the highest N whatever it holds, so a run killed while saving resumes from a
half-written folder and dies on it; and checkpoint rotation, which keeps the highest numbers, can later delete the
complete checkpoints in favour of that stale one. Here a checkpoint is complete when its trainer_state.json
parses and names step N; incomplete ones newer than it are renamed aside (never deleted).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
STATE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME, written last


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-N folder, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return sorted(found)


def is_complete(step: int, folder: Path) -> bool:
    """trainer_state.json (the last file the Trainer writes) is there, parses, and is for this step."""
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("global_step") == step


def last_complete_checkpoint(output_dir: str | Path, set_aside: bool = False) -> Path | None:
    """The newest complete checkpoint-N in output_dir, or None. With set_aside, incomplete checkpoints newer than
    it are renamed to checkpoint-N.incomplete[-k] so the Trainer's rotation and resume no longer see them."""
    found = checkpoints(output_dir)
    complete = [(step, folder) for step, folder in found if is_complete(step, folder)]
    chosen = complete[-1][1] if complete else None
    for step, folder in found:
        if (step, folder) in complete or (chosen is not None and step < complete[-1][0]):
            continue
        logger.warning("%s: incomplete checkpoint (no valid %s; a killed save?), not resumed from", folder, STATE)
        if set_aside:
            target, k = folder.with_name(f"{folder.name}.incomplete"), 1
            while target.exists():
                target, k = folder.with_name(f"{folder.name}.incomplete-{k}"), k + 1
            os.rename(folder, target)
    return chosen
