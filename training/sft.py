"""Supervised fine-tuning of a VLM on NLVR2-style data with LoRA, Q-LoRA or full fine-tuning (TRL SFTTrainer).

# Qwen2-VL-2B with Q-LoRA on NLVR2 (one GPU)
accelerate launch training/sft.py --config training/configs/qwen2vl_2b_qlora.yaml

# LoRA in bf16
accelerate launch training/sft.py --config training/configs/qwen2vl_2b_lora.yaml

# Embedded default: the small local Qwen2-VL on synthetic NLVR-style data, CPU, no network
python scripts/build_embedded_model.py
python training/sft.py --config training/configs/embedded_lora.yaml

# Any field can be overridden on the command line, e.g.
python training/sft.py --config training/configs/embedded_lora.yaml --max_steps 20 --lora_r 8

# Resume from the last checkpoint of output_dir
python training/sft.py --config training/configs/embedded_lora.yaml --resume_from_checkpoint true
"""

from __future__ import annotations

import logging

from transformers import set_seed
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from training.collators import ExampleCollator
from training.models import LabModelArguments, load_model, load_processor, lora_config
from training.run_record import write_run_record
from vlm_datasets.config import DataArguments
from vlm_datasets.loading import dataset_manifest, load_split
from vlm_datasets.prompts import get_template

logger = logging.getLogger(__name__)


def main(data_args: DataArguments, training_args: SFTConfig, model_args: ModelConfig, lab_args: LabModelArguments):
    set_seed(training_args.seed)
    template = get_template(data_args.prompt_template)

    # Model and processor
    processor = load_processor(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        min_pixels=data_args.min_pixels,
        max_pixels=data_args.max_pixels,
    )
    model = load_model(model_args, lab_args, trust_remote_code=training_args.trust_remote_code)

    # Dataset: canonical examples; the collator renders them with the template (images decoded once per batch)
    train_dataset = load_split(data_args, data_args.dataset_train_split, limit=data_args.max_train_examples)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = load_split(data_args, data_args.dataset_eval_split, limit=data_args.max_eval_examples)
    # Our collator needs the raw canonical columns and does its own tokenization.
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}

    # Training
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        data_collator=ExampleCollator(processor, template, max_length=training_args.max_length),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=lora_config(model_args),
    )
    if trainer.accelerator.is_main_process:
        write_run_record(
            training_args.output_dir,
            (data_args, model_args, lab_args, training_args),
            template,
            dataset_manifest(data_args, data_args.dataset_train_split),
            training_args.seed,
            kind="sft",
        )
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the newest checkpoint-N in output_dir
    trainer.train(resume_from_checkpoint=resume)

    # Save adapter (or full model) + processor, so evaluation loads the run directory alone
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
    return trainer


def make_parser() -> TrlParser:
    return TrlParser((DataArguments, SFTConfig, ModelConfig, LabModelArguments))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(*make_parser().parse_args_and_config())
