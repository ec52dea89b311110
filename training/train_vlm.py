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

# First: transformers imports bitsandbytes, which logs a `kernels` notice while imported (utils/cli.py drops it)
from utils.cli import entry_point, parse_args  # isort: split

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
from transformers import set_seed
from trl import ModelConfig, SFTConfig, TrlParser

from evals.prediction_files import write_generated
from evals.vlm_eval import VLMEvalArguments, constant_baseline, evaluate, held_out_texts
from training.callbacks import LabTrainingArguments, add_lab_callbacks, resume_checkpoint, resume_source
from training.collators import CaptionCollator
from training.models import LabModelArguments, load_model, load_processor
from training.stages import StageArguments, VLMTrainer, set_trainable, stage_lora_config
from utils.atomic_write import write_json_atomic
from utils.run_record import config_dict, token_to_environment, write_run_record
from vlm_datasets.captions import CaptionDataArguments, caption_skip_report, load_caption_split

logger = logging.getLogger(__name__)


@dataclass
class CaptionData:
    train: datasets.Dataset | datasets.IterableDataset
    eval_rows: list[dict]
    held_out_texts: list[str]  # the LM's perplexity text


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

    # Model: components frozen or trained as the stage says; LoRA (when asked) is applied by the trainer
    model = load_model(model_args, LabModelArguments(freeze_vision_tower=False))
    processor = load_processor(model_args.model_name_or_path, revision=model_args.model_revision)
    trainable = set_trainable(model, stage)
    peft_config = stage_lora_config(model_args, stage)

    # Data: caption / instruction rows; the collator renders the chat and masks all but the answer
    data = load_data(data_args, eval_args, training_args)
    results = evaluate_before(model, processor, data, eval_args) if training_args.process_index == 0 else {}

    trainer = VLMTrainer(
        model=model,
        args=training_args,
        data_collator=CaptionCollator(processor, max_length=training_args.max_length),
        train_dataset=data.train,
        processing_class=processor,
        peft_config=peft_config,
        stage=stage,
    )
    train(trainer, lab_args)

    if trainer.accelerator.is_main_process:  # evaluation, save and records; the other ranks wait for it
        results["trainable_parameters"] = {**trainable, "lora": lora_parameters(trainer.model)}  # before a merge
        args = (data_args, model_args, stage, eval_args, lab_args, training_args)
        finish(trainer, processor, data, args, results, start)
    if trainer.args.world_size > 1:
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.end_training()  # the Trainer leaves the process group up; a rank exiting with it can abort
    return trainer


def load_data(data_args: CaptionDataArguments, eval_args: VLMEvalArguments, training_args: SFTConfig) -> CaptionData:
    """The training split, the held-out rows and the LM's held-out texts; the trainer is set to pass rows through."""
    train_dataset = load_caption_split(data_args, train=True)
    eval_rows = list(load_caption_split(data_args, train=False))
    training_args.remove_unused_columns = False  # the collator needs the raw columns
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    return CaptionData(train_dataset, eval_rows, held_out_texts(eval_args, eval_rows, training_args.seed))


def evaluate_before(model, processor, data: CaptionData, eval_args: VLMEvalArguments) -> dict:
    """The model before training (when asked), and a blind floor: the most common training answer per task."""
    results: dict = {}
    if eval_args.vlm_eval_before:
        results["before"], _ = evaluate(model, processor, data.eval_rows, eval_args, data.held_out_texts)
        logger.info("before: %s", json.dumps(results["before"]))
    if isinstance(data.train, datasets.Dataset):
        answers = list(zip(data.train["task"], data.train["answer"], strict=True))
        results["constant_answer_baseline"] = constant_baseline(answers, data.eval_rows)
    return results


def train(trainer: VLMTrainer, lab_args: LabTrainingArguments) -> None:
    """Train, resuming as resume_from_checkpoint says: output_dir's newest complete checkpoint, or the mirror's copy
    when newer; a half-written checkpoint is set aside."""
    args = trainer.args
    mirror = add_lab_callbacks(trainer, lab_args, args)  # TensorBoard folder, checkpoint mirror
    main_process = trainer.accelerator.is_main_process
    resume = resume_source(args.resume_from_checkpoint, args.output_dir, mirror and mirror.dest, main_process)
    resume = resume_checkpoint(resume, args.output_dir, main_process)
    trainer.train(resume_from_checkpoint=resume or None)


def lora_parameters(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)


def finish(trainer: VLMTrainer, processor, data: CaptionData, args: tuple, results: dict, start: float) -> None:
    """Evaluate the trained model, save it, and write predictions.jsonl, summary.json and run_record.json."""
    data_args, model_args, stage, eval_args, *_ = args
    out = Path(trainer.args.output_dir)
    results["after"], predictions = evaluate(trainer.model, processor, data.eval_rows, eval_args, data.held_out_texts)
    logger.info("after: %s", json.dumps(results["after"]))
    save(trainer, processor, merged=stage.train_language_model == "lora")
    write_generated(out / "predictions.jsonl", data.eval_rows, predictions)  # the gallery reads it (read_generated)
    skipped = {"train": caption_skip_report(data_args, train=True), "eval": caption_skip_report(data_args, train=False)}
    write_json_atomic(out / "summary.json", summary(trainer, data, args, skipped, start) | results)
    config = config_dict(*args)  # "skipped": every row left out under bad_examples=skip (uid, where, reason)
    write_run_record(
        out, "train_vlm", trainer.args.seed, config, chat_template=processor.chat_template, skipped=skipped
    )


def save(trainer: VLMTrainer, processor, merged: bool) -> None:
    """The model (or adapter) + processor; `merged`: also the LoRA-merged model, a plain folder the next stage loads."""
    out = Path(trainer.args.output_dir)
    trainer.save_model(out)
    processor.save_pretrained(out)
    if merged:
        trainer.model.merge_and_unload().save_pretrained(out / "merged")
        processor.save_pretrained(out / "merged")


def summary(trainer: VLMTrainer, data: CaptionData, args: tuple, skipped: dict, start: float) -> dict:
    """summary.json's run part: stage, model, data, loss curve, steps, seconds since `start`."""
    data_args, model_args, stage, *_ = args
    return {
        "stage": stage.stage_name,
        "model": model_args.model_name_or_path,
        "data": {
            "source": data_args.dataset_source,
            "train_rows": len(data.train) if isinstance(data.train, datasets.Dataset) else None,
            "eval_rows": len(data.eval_rows),
            "eval_tasks": dict(Counter(r["task"] for r in data.eval_rows)),
            "bad_examples": data_args.bad_examples,
            "skipped_train_rows": skipped["train"]["count"],
            "skipped_eval_rows": skipped["eval"]["count"],
        },
        "train_loss": loss_curve(trainer.state.log_history),
        "steps": trainer.state.global_step,
        "seconds": round(time.time() - start, 1),
    }


def make_parser() -> TrlParser:
    return TrlParser(
        (CaptionDataArguments, SFTConfig, ModelConfig, StageArguments, VLMEvalArguments, LabTrainingArguments)
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        main(*parse_args(make_parser()))
