"""Build the embedded default: a small Qwen2-VL-architecture model + processor, pretrained on synthetic tasks, saved in
HF format so the lab loads it through the same from_pretrained path as Qwen/Qwen2-VL-2B-Instruct. No network.
The command line: scripts/build_embedded_model.py.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import set_seed

from training.embedded import EMBEDDED_MODEL_DIR, build_model, build_processor, build_tokenizer
from training.pretrain_embedded import (
    PretrainSettings,
    pretraining_accuracy,
    train_language_model,
    train_vision_tower,
)
from utils.atomic_write import write_json_atomic
from utils.run_record import library_versions
from vlm_datasets.synthetic import CELL, SyntheticConfig

logger = logging.getLogger(__name__)


@dataclass
class BuildArguments:
    output_dir: str = field(default=str(EMBEDDED_MODEL_DIR), metadata={"help": "Where the model is saved."})
    seed: int = field(default=0, metadata={"help": "Seed of the tokenizer corpus, weights and pretraining data."})
    synthetic_grid: int = field(default=2, metadata={"help": "Cells per image side (28 px, one vision token each)."})
    vision_steps: int = field(default=100, metadata={"help": "Stage 1 steps: vision tower, per-cell attributes."})
    vision_batch_size: int = field(default=64, metadata={"help": "Stage 1 images per step."})
    vision_learning_rate: float = field(default=3e-3, metadata={"help": "Stage 1 learning rate."})
    steps: int = field(default=700, metadata={"help": "Stage 2 steps: whole model on count/QA tasks."})
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

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("output_dir", "force")}


def build_embedded_model(args: BuildArguments) -> Path:
    """Build (or reuse, when output_dir holds a build with the same settings) the embedded default; its folder."""
    out = Path(args.output_dir)
    info_path = out / "build_info.json"
    if info_path.exists() and not args.force:
        import json

        stored = json.loads(info_path.read_text())
        if stored.get("settings") == args.settings():
            logger.info("embedded model at %s already built with these settings (reusing it)", out)
            return out
        logger.info("embedded model at %s was built with other settings: rebuilding", out)

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
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    if args.vision_steps:
        stats["vision_tower"] = train_vision_tower(model, processor, pretrain, synth)
    if args.steps:
        stats["language_model"] = train_language_model(model, processor, pretrain, synth, tmp / "trainer")
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
    stats["held_out_task_accuracy"] = pretraining_accuracy(model, processor, synth, label_images=args.label_images)
    logger.info("held-out accuracy on the pretraining tasks: %s", stats["held_out_task_accuracy"])
    model.save_pretrained(tmp)  # safetensors
    processor.save_pretrained(tmp)
    write_json_atomic(
        tmp / "build_info.json",
        {
            "what": "embedded default: small Qwen2-VL-architecture model built locally (not Qwen/Qwen2-VL-2B-Instruct)",
            "settings": args.settings(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "image_side_pixels": side,
            "pretraining": stats,
            "wall_seconds": round(time.time() - start, 1),
            "versions": library_versions(),
        },
    )
    # Swap in whole: a killed build never leaves a half-written model in output_dir.
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    logger.info("embedded model saved to %s (%.0f s)", out, time.time() - start)
    return out
