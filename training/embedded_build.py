"""Build the embedded default: a small Qwen2-VL-architecture model + processor, pretrained on synthetic tasks, saved in
HF format so the lab loads it through the same from_pretrained path as Qwen/Qwen2-VL-2B-Instruct. No network.
Every build records the SHA-256 of its files in build_info.json; the default build ships in training/embedded_base/,
and `provide_shipped_model` puts a checked copy of it where the configs look (artifacts/models/embedded-qwen2vl).
The command line: scripts/build_embedded_model.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from training.embedded import EMBEDDED_MODEL_DIR, build_model, build_processor, build_tokenizer
from utils.atomic_write import write_json_atomic
from utils.run_record import library_versions
from vlm_datasets.synthetic import CELL, SyntheticConfig

logger = logging.getLogger(__name__)

# The default build, committed with its build_info.json (settings, command, date, machine, versions, SHA-256 of every
# file): the demo starts from a checked copy of it instead of pretraining for minutes.
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "embedded_base"


@dataclass
class BuildArguments:
    output_dir: str = field(default=str(EMBEDDED_MODEL_DIR), metadata={"help": "Where the model is saved."})
    seed: int = field(default=0, metadata={"help": "Seed of the tokenizer corpus, weights and pretraining data."})
    synthetic_grid: int = field(default=2, metadata={"help": "Cells per image side (28 px, one vision token each)."})
    vision_steps: int = field(default=100, metadata={"help": "Stage 1 steps: vision tower, per-cell attributes."})
    vision_batch_size: int = field(default=64, metadata={"help": "Stage 1 images per step."})
    vision_learning_rate: float = field(default=3e-3, metadata={"help": "Stage 1 learning rate."})
    steps: int = field(default=2100, metadata={"help": "Stage 2 steps: whole model on count/QA tasks."})
    batch_size: int = field(default=32, metadata={"help": "Stage 2 examples per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Stage 2 learning rate (constant after warmup)."})
    label_images: bool = field(
        default=True,
        metadata={
            "help": "Stage 2 prompts put 'Left image:' / 'Right image:' before each image (the embedded "
            "configs' template nlvr2_labeled_images does the same)."
        },
    )
    shared_prefix: bool = field(
        default=False,
        metadata={
            "help": "Stage 2 runs the rows' common first tokens once per batch (training/shared_prefix.py): the same "
            "math in another summation order, ~10% shorter stage 2, but another base; the demo's figures are "
            "measured on the base built without it (docs/training.md)."
        },
    )
    force: bool = field(default=False, metadata={"help": "Rebuild even if output_dir holds a matching build."})
    refresh_shipped: bool = field(
        default=False,
        metadata={
            "help": "Then copy the build over the shipped base (training/embedded_base: what make demo starts from), "
            "its build_info.json with it; default settings only."
        },
    )

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("output_dir", "force", "refresh_shipped")}


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_build_info(folder: str | Path) -> dict | None:
    """A build folder's build_info.json, or None when it has none."""
    path = Path(folder) / "build_info.json"
    return json.loads(path.read_text()) if path.is_file() else None


def verify_build(folder: str | Path) -> dict:
    """A build's build_info.json, after checking every file it lists against the SHA-256 recorded there; a missing
    record, a missing file or one that differs raises ValueError naming the file."""
    folder = Path(folder)
    info, record = read_build_info(folder), folder / "build_info.json"
    if info is None:
        raise ValueError(f"{record}: no such file: {folder} holds no embedded build")
    if not info.get("sha256"):
        raise ValueError(f"{record}: records no SHA-256 of the build's files, so they cannot be checked")
    for name, expected in info["sha256"].items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path}: missing (listed in {record})")
        if (actual := file_sha256(path)) != expected:
            raise ValueError(
                f"{path}: changed or corrupted: SHA-256 {actual}, but {record} records {expected}. Restore it "
                "(git restore for the shipped base) or rebuild: python scripts/build_embedded_model.py --force true"
            )
    return info


def copy_build(source: str | Path, dest: str | Path) -> Path:
    """Copy a checked build (`verify_build`) to `dest`, replacing what is there, and check the copy; `dest`."""
    info, dest = verify_build(source), Path(dest)
    tmp = dest.with_name(dest.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in [*info["sha256"], "build_info.json"]:
        shutil.copyfile(Path(source) / name, tmp / name)
    verify_build(tmp)
    _swap_in(tmp, dest)
    return dest


def provide_shipped_model(model_dir: str | Path, shipped: str | Path = SHIPPED_MODEL_DIR) -> str:
    """Make `model_dir` hold the shipped base, checked file by file; what was done, in words. A checked copy of it
    already there is kept; a build with other settings, or that records no checksums, is replaced."""
    model_dir, reference = Path(model_dir), verify_build(shipped)
    present = read_build_info(model_dir)
    if present is None and model_dir.exists() and any(model_dir.iterdir()):
        raise ValueError(f"{model_dir}: not empty and holds no build_info.json: not an embedded build, left as it is")
    if present and present.get("sha256") and present.get("settings") == reference["settings"]:
        verify_build(model_dir)
        return f"{model_dir}: a checked copy of the shipped base {shipped} (SHA-256 of every file matches)"
    why = "absent" if present is None else "held another build: replaced"
    copy_build(shipped, model_dir)
    return f"{model_dir}: {why}, copied from the shipped base {shipped} (SHA-256 of every file checked)"


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` whole: a killed build or copy never leaves a half-written model in `out`."""
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)


def build_embedded_model(args: BuildArguments, command: str | None = None) -> Path:
    """Build (or reuse, when output_dir holds a build with the same settings) the embedded default; its folder.
    `command`, the command line that asked for it, goes into build_info.json; `refresh_shipped` then copies it over
    the shipped base."""
    if args.refresh_shipped and args.settings() != BuildArguments().settings():
        raise ValueError("refresh_shipped: the shipped base is the default build; drop the other settings")
    out = Path(args.output_dir)
    stored = read_build_info(out)
    if stored and stored.get("settings") == args.settings() and not args.force:
        logger.info("embedded model at %s already built with these settings (reusing it)", out)
    else:
        if stored:
            logger.info("embedded model at %s was built with other settings: rebuilding", out)
        tmp = out.with_name(out.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        _build_into(tmp, args, command)
        _swap_in(tmp, out)
    if args.refresh_shipped:
        copy_build(out, SHIPPED_MODEL_DIR)
        logger.info("shipped base %s refreshed from %s", SHIPPED_MODEL_DIR, out)
    return out


def _build_into(tmp: Path, args: BuildArguments, command: str | None) -> None:
    """Pretrain a fresh model and save it, its processor and build_info.json (with each file's SHA-256) in `tmp`."""
    # The training stack (transformers' set_seed imports peft) loads for a build, not for the parser (--help).
    import torch
    from transformers import set_seed

    from training.pretrain_embedded import (
        PretrainSettings,
        pretraining_accuracy,
        train_language_model,
        train_vision_tower,
    )
    from training.rehearsal_report import machine

    start = time.time()
    set_seed(args.seed)
    synth = SyntheticConfig(grid=args.synthetic_grid)
    side = args.synthetic_grid * CELL
    tokenizer = build_tokenizer(seed=args.seed)
    processor = build_processor(tokenizer, min_pixels=min(side * side, 56 * 56), max_pixels=side * side)
    model = build_model(tokenizer, seed=args.seed)
    pretrain = PretrainSettings(
        vision_steps=args.vision_steps,
        vision_batch_size=args.vision_batch_size,
        vision_learning_rate=args.vision_learning_rate,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        label_images=args.label_images,
        shared_prefix=args.shared_prefix,
    )
    stats = {}
    if args.vision_steps:
        stats["vision_tower"] = train_vision_tower(model, processor, pretrain, synth)
    if args.steps:
        stats["language_model"] = train_language_model(model, processor, pretrain, synth, tmp / "trainer")
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
    stats["held_out_task_accuracy"] = pretraining_accuracy(model, processor, synth, label_images=args.label_images)
    logger.info("held-out accuracy on the pretraining tasks: %s", stats["held_out_task_accuracy"])
    model.save_pretrained(tmp)  # safetensors
    processor.save_pretrained(tmp)
    trained = args.vision_steps or args.steps
    write_json_atomic(
        tmp / "build_info.json",
        {
            "what": "embedded default: small Qwen2-VL-architecture model built locally (not Qwen/Qwen2-VL-2B-Instruct)",
            "weights": "pretrained on synthetic tasks by scripts/build_embedded_model.py"
            if trained
            else f"random (seed {args.seed}): built without pretraining by scripts/build_embedded_model.py",
            "command": command,
            "built": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine() | {"torch_threads": torch.get_num_threads()},
            "settings": args.settings(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "image_side_pixels": side,
            "pretraining": stats,
            "wall_seconds": round(time.time() - start, 1),
            "versions": library_versions(),
            "sha256": {path.name: file_sha256(path) for path in sorted(tmp.iterdir()) if path.is_file()},
        },
    )
    logger.info("embedded model built in %s (%.0f s)", tmp, time.time() - start)
