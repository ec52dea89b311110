"""Pretraining of the embedded base on synthetic tasks other than NLVR-style True/False, so it has useful features.

Stage 1 trains the vision tower alone: every merged vision token (one 28-px grid cell) classifies the colour, shape
and size of the object in its cell through a linear probe that is thrown away afterwards.
Stage 2 trains the whole model (TRL's SFTTrainer, through training/trainer.py's LabSFTTrainer) on questions about
one of the two images: descriptions, counts, yes/no existence and single-image existence statements
(`vlm_datasets.synthetic.pretraining_rows`), each image after its label ("Left image:", "Right image:").
The NLVR-style task the demo fine-tunes on (two-image statements across eight categories) is not among them.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from trl import SFTConfig

from training.collators import PromptCompletionCollator
from training.models import LabModelArguments
from training.shared_prefix import uninstall, use_shared_prefix
from training.trainer import LabSFTTrainer
from vlm_datasets.prompts import user_message
from vlm_datasets.synthetic import (
    COLORS,
    SHAPES,
    SIZES,
    SyntheticConfig,
    pretraining_rows,
    random_scene,
    render,
)

logger = logging.getLogger(__name__)


@dataclass
class PretrainSettings:
    vision_steps: int = 100
    vision_batch_size: int = 64
    vision_learning_rate: float = 3e-3
    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    seed: int = 0
    label_images: bool = True  # "Left image:" / "Right image:" before each image, as the nlvr2_labeled_images template
    shared_prefix: bool = False  # the rows' common first tokens once per batch (training/shared_prefix.py)


def _cell_targets(scenes, grid: int) -> torch.Tensor:
    """[3, B, grid*grid] class ids per cell: colour, shape, size (0 = empty cell)."""
    y = torch.zeros(3, len(scenes), grid * grid, dtype=torch.long)
    colors = list(COLORS)
    for i, scene in enumerate(scenes):
        for o in scene:
            j = o.row * grid + o.col
            y[0, i, j] = colors.index(o.color) + 1
            y[1, i, j] = SHAPES.index(o.shape) + 1
            y[2, i, j] = SIZES.index(o.size) + 1
    return y


def train_vision_tower(model, processor, settings: PretrainSettings, synth: SyntheticConfig) -> dict:
    """Stage 1: per-cell attribute classification on the merged vision tokens; returns final loss and accuracy."""
    visual = model.model.visual
    sizes = (len(COLORS) + 1, len(SHAPES) + 1, len(SIZES) + 1)
    probe = torch.nn.Linear(model.config.vision_config.hidden_size, sum(sizes))
    params = list(visual.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=settings.vision_learning_rate)
    rng = random.Random(f"vision-{settings.seed}")
    cells = synth.grid * synth.grid
    visual.train()
    stats, feats = {}, None
    for _ in tqdm(range(settings.vision_steps), desc="stage 1: vision tower", unit="step"):
        scenes = [random_scene(rng, synth.grid, synth.max_objects) for _ in range(settings.vision_batch_size)]
        inputs = processor.image_processor([render(s, synth.grid, rng) for s in scenes], return_tensors="pt")
        feats = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output  # [B*cells, D]
        if feats.shape[0] != len(scenes) * cells:
            raise ValueError(f"expected {cells} vision tokens per image, got {feats.shape[0] // len(scenes)}")
        logits = probe(feats).view(len(scenes), cells, -1).split(sizes, dim=-1)
        targets = _cell_targets(scenes, synth.grid)
        loss = sum(
            F.cross_entropy(lg.reshape(-1, lg.shape[-1]), t.reshape(-1)) for lg, t in zip(logits, targets, strict=True)
        )
        loss.backward()
        opt.step()
        opt.zero_grad()
        stats = {
            "loss": loss.item(),
            "cell_accuracy": float(
                torch.stack([(lg.argmax(-1) == t).float().mean() for lg, t in zip(logits, targets, strict=True)]).mean()
            ),
        }
    # Bring the vision tokens to the text embeddings' scale: the probe leaves them ~100x larger, and a token whose
    # residual stream is that large cannot be changed by attention to the statement in the layers above.
    if feats is None:
        return stats
    with torch.no_grad():
        text_norm = model.get_input_embeddings().weight.norm(dim=-1).mean()
        factor = text_norm / feats.detach().norm(dim=-1).mean()
        last = visual.merger.mlp[-1]
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    stats["feature_rescale"] = float(factor)
    return stats


def _conversation(row: dict, label_images: bool = True) -> dict:
    return {
        "images": row["images"],
        "prompt": [user_message(len(row["images"]), row["question"], label_images=label_images)],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": row["answer"]}]}],
    }


def pretraining_dataset(
    num_rows: int, seed: int, synth: SyntheticConfig, label_images: bool = True
) -> datasets.IterableDataset:
    """Conversation rows of the stage-2 tasks, generated lazily (deterministic by seed)."""

    def gen():
        for row in pretraining_rows(num_rows, seed, synth):
            yield _conversation(row, label_images)

    return datasets.IterableDataset.from_generator(gen)


def train_language_model(model, processor, settings: PretrainSettings, synth: SyntheticConfig, output_dir) -> dict:
    """Stage 2: the whole model on the pretraining tasks with SFTTrainer; returns its log history."""
    args = SFTConfig(
        output_dir=str(output_dir),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type="constant_with_warmup",
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=max(1, settings.steps // 20),
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,  # the collator needs images/prompt/completion
        dataset_kwargs={"skip_prepare_dataset": True},
        bf16=False,
        gradient_checkpointing=False,
        seed=settings.seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    dataset = pretraining_dataset(settings.steps * settings.batch_size, settings.seed, synth, settings.label_images)
    trainer = LabSFTTrainer(  # TRL's SFTTrainer; only labelled positions through the LM head on the CPU too
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PromptCompletionCollator(processor),
        processing_class=processor,
    )
    # "true" refuses a model with dropout or gradient checkpointing instead of turning itself off
    prefix = use_shared_prefix(trainer, LabModelArguments(shared_prefix="true" if settings.shared_prefix else "false"))
    try:
        trainer.train()
    finally:
        if prefix.enabled:
            uninstall(trainer.model)
    return {"log_history": trainer.state.log_history} | ({"shared_prefix": prefix.record()} if prefix.enabled else {})


@torch.inference_mode()
def pretraining_accuracy(
    model, processor, synth: SyntheticConfig, num_rows: int = 256, seed: int = 12345, label_images: bool = True
) -> dict:
    """Held-out exact-match accuracy per pretraining task (teacher-forced: every answer token argmax-correct)."""
    rows = list(pretraining_rows(num_rows, seed, synth))
    collate = PromptCompletionCollator(processor)
    hits: dict[str, list[bool]] = {}
    was_training = model.training
    model.eval()
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        batch = collate([_conversation(r, label_images) for r in chunk])
        pred = model(**batch).logits[:, :-1].argmax(-1)  # [B, T-1], predicts position t+1
        target = batch["labels"][:, 1:]
        for i, row in enumerate(chunk):
            keep = target[i] != -100
            task = row["question"].split()[0].lower()
            hits.setdefault(task, []).append(bool((pred[i][keep] == target[i][keep]).all()))
    model.train(was_training)
    return {task: round(sum(v) / len(v), 3) for task, v in sorted(hits.items())}
