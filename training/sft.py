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

# Resume from the newest complete checkpoint of output_dir (a half-written one, from a killed save, is set aside)
python training/sft.py --config training/configs/embedded_lora.yaml --resume_from_checkpoint true

# Keep output_dir on local disk and mirror each checkpoint (atomically) to Drive; resume falls back to the mirror
python training/sft.py --config training/configs/embedded_lora.yaml --output_dir /content/runs/embedded-lora \
    --mirror_checkpoints_to /content/drive/MyDrive/VLM_Studies_Files --mirror_keep_last 2

# Skip and count bad examples (unreadable images, bad labels, ...) instead of stopping at the first one
python training/sft.py --config training/configs/embedded_lora.yaml --bad_examples skip
"""

from __future__ import annotations

import logging

from transformers import set_seed
from trl import ModelConfig, SFTConfig, TrlParser

from evals.scoring import likelihood_accuracy
from training.callbacks import LabTrainingArguments, add_lab_callbacks, resume_checkpoint, resume_source
from training.models import LabModelArguments, load_model, lora_config, run_processor
from training.pipeline import training_data
from training.shared_prefix import use_shared_prefix
from training.trainer import LabSFTTrainer
from training.vision_cache import use_vision_cache
from utils.run_record import config_dict, redacted, token_to_environment, write_run_record
from vlm_datasets.config import DataArguments
from vlm_datasets.loading import dataset_manifest, iter_examples, load_split
from vlm_datasets.prompts import get_template

logger = logging.getLogger(__name__)


def main(
    data_args: DataArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    lab_args: LabModelArguments,
    train_lab_args: LabTrainingArguments | None = None,
):
    train_lab_args = train_lab_args or LabTrainingArguments()
    set_seed(training_args.seed)
    token_to_environment(training_args)
    template = get_template(data_args.prompt_template)

    # Model and processor
    processor = run_processor(model_args, data_args, trust_remote_code=training_args.trust_remote_code)
    model = load_model(model_args, lab_args, trust_remote_code=training_args.trust_remote_code)

    # Dataset: canonical examples rendered with the template and tokenized once (training/pipeline.py); unlabeled rows
    # fail (or are skipped and counted, bad_examples=skip) and over-long ones are refused (pre-flight) before step 0.
    train_split = data_args.dataset_train_split
    data = training_data(data_args, training_args, processor, template)

    # Training (TRL's SFTTrainer; its loss scores only labelled positions on the CPU too: training/trainer.py)
    trainer = LabSFTTrainer(
        model=model,
        args=training_args,
        data_collator=data.collator,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=processor,
        peft_config=lora_config(model_args, model),
    )
    # TensorBoard folder and hparams, checkpoint mirror; eval/accuracy beside eval/loss at every evaluation
    mirror = add_lab_callbacks(trainer, train_lab_args, training_args, hparams(data_args, training_args, model_args))
    trainer.held_out = held_out_accuracy(data_args, training_args, train_lab_args, processor, template)
    # The frozen vision tower's features computed once per image (lab_args.vision_feature_cache*; after PEFT wrapped
    # the model, so a trainable tower is seen): training/vision_cache.py
    vision_cache = use_vision_cache(trainer, lab_args, data.train, data.collator)
    # The tokens every row starts with run once per batch (lab_args.shared_prefix): training/shared_prefix.py
    shared_prefix = use_shared_prefix(trainer, lab_args)

    def record():
        if trainer.accelerator.is_main_process:  # the data manifest lists the bad examples skipped so far
            config = config_dict(data_args, model_args, lab_args, train_lab_args, training_args)
            manifest = redacted(dataset_manifest(data_args, train_split))
            speed = {"vision_feature_cache": vision_cache.record(), "shared_prefix": shared_prefix.record()}
            out, seed = training_args.output_dir, training_args.seed
            write_run_record(out, "sft", seed, config, prompt_template=template, dataset=manifest, **speed)

    record()
    main_process = trainer.accelerator.is_main_process
    resume = resume_source(  # the mirror's newest complete copy when it is newer than output_dir's
        training_args.resume_from_checkpoint, training_args.output_dir, mirror and mirror.dest, main_process
    )
    resume = resume_checkpoint(resume, training_args.output_dir, main_process)
    trainer.train(resume_from_checkpoint=resume)
    if vision_cache.cache is not None:
        logger.info("vision feature cache: %s", vision_cache.cache.stats())
    if shared_prefix.stats is not None:
        logger.info("shared prefix: %s", shared_prefix.stats.stats())

    # Save adapter (or full model) + processor, so evaluation loads the run directory alone
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
    record()  # again: a streamed split's skipped examples are known once it has been read
    if trainer.args.world_size > 1:  # the Trainer leaves the process group up; a rank exiting with it can abort
        trainer.accelerator.end_training()  # accelerate's own end: destroys the process group
    return trainer


def held_out_accuracy(data_args: DataArguments, training_args, train_lab_args, processor, template):
    """model -> {"accuracy", "p_label"} by answer likelihood on the eval split's first eval_accuracy_examples
    labelled examples (loaded once); None when the run does not evaluate."""
    n = train_lab_args.eval_accuracy_examples
    if training_args.eval_strategy == "no" or n <= 0:
        return None
    rows = load_split(data_args, data_args.dataset_eval_split, limit=n)
    examples = [ex for ex in iter_examples(rows) if ex.label is not None]
    if not examples:
        raise ValueError(f"eval_accuracy_examples: the eval split {data_args.dataset_eval_split!r} has no labels")
    batch = training_args.per_device_eval_batch_size

    def score(model) -> dict[str, float]:
        return likelihood_accuracy(model, processor, examples, template, batch)

    return score


def hparams(data_args: DataArguments, training_args, model_args: ModelConfig) -> dict:
    """The settings shown in TensorBoard's HPARAMS tab."""
    settings = {
        "model": model_args.model_name_or_path,
        "peft": "lora" if model_args.use_peft else "full",
        "load_in_4bit": model_args.load_in_4bit,
        "lora_r": model_args.lora_r,
        "lora_alpha": model_args.lora_alpha,
        "learning_rate": training_args.learning_rate,
        "batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "max_steps": training_args.max_steps,
        "dataset_source": data_args.dataset_source,
        "prompt_template": data_args.prompt_template,
        "seed": training_args.seed,
    }
    return {k: v for k, v in settings.items() if isinstance(v, int | float | str | bool)}


def make_parser() -> TrlParser:
    return TrlParser((DataArguments, SFTConfig, ModelConfig, LabModelArguments, LabTrainingArguments))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(*make_parser().parse_args_and_config())
