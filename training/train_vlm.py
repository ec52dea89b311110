"""Train a composed VLM (scripts/compose_vlm.py) in stages with TRL's SFTTrainer: stage 1 aligns the projector on
captions (vision and LM frozen), stage 2 tunes on instructions with the LM under LoRA or full. Each run evaluates
before and after (captions: BLEU-4 / CIDEr / ROUGE-L, questions: exact match, the LM alone: held-out perplexity)
and writes summary.json, predictions.jsonl and run_record.json beside the model.

# CLIP ViT-B/16 + GPT-2 (one GPU): compose, stage 1 on COCO captions, stage 2 on LLaVA-Instruct-150K
python scripts/compose_vlm.py --config training/configs/compose/clip_gpt2.yaml
accelerate launch training/train_vlm.py --config training/configs/compose/clip_gpt2_stage1.yaml
accelerate launch training/train_vlm.py --config training/configs/compose/clip_gpt2_stage2.yaml

# SigLIP + SmolLM2-135M-Instruct, and SigLIP + OLMoE-1B-7B (MoE): the same with siglip_smollm2_* / siglip_olmoe_*

# Embedded defaults: small parts at random init, synthetic scenes, 2-core CPU, no network, a few minutes each
python scripts/compose_vlm.py --config training/configs/compose/gpt2v_embedded.yaml
python training/train_vlm.py --config training/configs/compose/gpt2v_embedded_stage1.yaml
python training/train_vlm.py --config training/configs/compose/gpt2v_embedded_stage2.yaml
python scripts/compose_vlm.py --config training/configs/compose/tinyvlm_embedded.yaml
python training/train_vlm.py --config training/configs/compose/tinyvlm_embedded_stage1.yaml
python training/train_vlm.py --config training/configs/compose/tinyvlm_embedded_stage2.yaml
python scripts/compose_vlm.py --config training/configs/compose/vit_moe_embedded.yaml
python training/train_vlm.py --config training/configs/compose/vit_moe_embedded_train.yaml

# Any field can be overridden, e.g.
python training/train_vlm.py --config training/configs/compose/gpt2v_embedded_stage1.yaml --max_steps 50 \
    --projector_learning_rate 1e-3

# Resume from the newest complete checkpoint of output_dir; skip and count unreadable images instead of stopping
python training/train_vlm.py --config training/configs/compose/clip_gpt2_stage1.yaml --resume_from_checkpoint true \
    --bad_examples skip

tensorboard --logdir artifacts/logs   # loss, per-group learning rates, MoE aux loss and expert load
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed
from trl import ModelConfig, SFTConfig, TrlParser

from evals.prediction_files import write_generated
from evals.vlm_eval import VLMEvalArguments, constant_baseline, evaluate, held_out_texts
from training.callbacks import LabTrainingArguments, add_lab_callbacks, resume_checkpoint, resume_source
from training.collators import CaptionCollator
from training.run_record import config_dict, library_versions, token_to_environment, write_json_atomic
from training.stages import StageArguments, VLMTrainer, lora_config, set_trainable
from vlm_datasets.captions import CaptionDataArguments, caption_skip_report, load_caption_split

logger = logging.getLogger(__name__)


def load(model_args: ModelConfig):
    """The composed model and its processor, from a folder or hub id (AutoModelForImageTextToText / AutoProcessor)."""
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    path = model_args.model_name_or_path
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype, revision=model_args.model_revision, use_safetensors=True
    )
    return model, AutoProcessor.from_pretrained(path, revision=model_args.model_revision)


def loss_curve(log_history: list[dict]) -> dict:
    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    if not losses:
        return {}
    tail = [v for _, v in losses[-3:]]
    return {"first": losses[0][1], "last": losses[-1][1], "last3_mean": sum(tail) / len(tail), "logged": losses}


def main(
    data_args: CaptionDataArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    stage: StageArguments,
    eval_args: VLMEvalArguments,
    lab_args: LabTrainingArguments | None = None,
):
    start = time.time()
    lab_args = lab_args or LabTrainingArguments()
    set_seed(training_args.seed)
    token_to_environment(training_args)
    out = Path(training_args.output_dir)

    # Model: components frozen or trained as the stage says; LoRA (when asked) is applied by the trainer
    model, processor = load(model_args)
    trainable = set_trainable(model, stage)
    peft_config = lora_config(model_args, stage)

    # Data: caption / instruction rows; the collator renders the chat and masks all but the answer
    train_dataset = load_caption_split(data_args, train=True)
    eval_rows = list(load_caption_split(data_args, train=False))
    texts = held_out_texts(eval_args, eval_rows, training_args.seed)
    training_args.remove_unused_columns = False  # the collator needs the raw columns
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}

    results: dict = {}
    if eval_args.vlm_eval_before:
        results["before"], _ = evaluate(model, processor, eval_rows, eval_args, texts)
        logger.info("before: %s", json.dumps(results["before"]))
    if isinstance(train_dataset, datasets.Dataset):  # a blind floor: the most common training answer per task
        answers = list(zip(train_dataset["task"], train_dataset["answer"], strict=True))
        results["constant_answer_baseline"] = constant_baseline(answers, eval_rows)

    trainer = VLMTrainer(
        model=model,
        args=training_args,
        data_collator=CaptionCollator(processor, max_length=training_args.max_length),
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
        stage=stage,
    )
    mirror = add_lab_callbacks(trainer, lab_args, training_args)  # TensorBoard folder, checkpoint mirror
    main_process = trainer.accelerator.is_main_process
    resume = resume_source(  # the mirror's newest complete copy when it is newer than output_dir's
        training_args.resume_from_checkpoint, training_args.output_dir, mirror and mirror.dest, main_process
    )
    resume = resume_checkpoint(resume, training_args.output_dir, main_process)  # a half-written one is set aside
    trainer.train(resume_from_checkpoint=resume or None)

    results["after"], predictions = evaluate(trainer.model, processor, eval_rows, eval_args, texts)
    logger.info("after: %s", json.dumps(results["after"]))
    if not trainer.accelerator.is_main_process:
        return trainer

    lora = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n and p.requires_grad)
    # Save: the model (or adapter) + processor; with LoRA also the merged model, a plain folder the next stage loads
    trainer.save_model(out)
    processor.save_pretrained(out)
    if peft_config is not None:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        processor.save_pretrained(out / "merged")
    write_generated(out / "predictions.jsonl", eval_rows, predictions)  # the gallery reads it (read_generated)
    skipped = {"train": caption_skip_report(data_args, train=True), "eval": caption_skip_report(data_args, train=False)}
    summary = {
        "stage": stage.stage_name,
        "model": model_args.model_name_or_path,
        "data": {
            "source": data_args.dataset_source,
            "train_rows": _length(train_dataset),
            "eval_rows": len(eval_rows),
            "eval_tasks": dict(Counter(r["task"] for r in eval_rows)),
            "bad_examples": data_args.bad_examples,
            "skipped_train_rows": skipped["train"]["count"],
            "skipped_eval_rows": skipped["eval"]["count"],
        },
        "trainable_parameters": {**trainable, "lora": lora},
        "train_loss": loss_curve(trainer.state.log_history),
        "steps": trainer.state.global_step,
        "seconds": round(time.time() - start, 1),
        **results,
    }
    write_json_atomic(out / "summary.json", summary)
    record = {
        "kind": "train_vlm",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": training_args.seed,
        "chat_template": processor.chat_template,
        "config": config_dict(data_args, model_args, stage, eval_args, lab_args, training_args),
        "skipped": skipped,  # every row left out under bad_examples=skip: uid, where, reason
        "versions": library_versions(),
    }
    write_json_atomic(out / "run_record.json", record)
    return trainer


def _length(ds) -> int | None:
    return len(ds) if isinstance(ds, datasets.Dataset) else None


def make_parser() -> TrlParser:
    return TrlParser(
        (CaptionDataArguments, SFTConfig, ModelConfig, StageArguments, VLMEvalArguments, LabTrainingArguments)
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(*make_parser().parse_args_and_config())
