"""One supervised fine-tuning run, what training/sft.py runs (and scripts/sweeps.py, scripts/demo.py): model and
processor, the data rendered and tokenized once, LabSFTTrainer with the lab's callbacks and speed-ups, training
(resumable), the saved adapter and the run record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from transformers import set_seed
from trl import ModelConfig, SFTConfig, TrlParser

from training.callbacks import LabTrainingArguments, add_lab_callbacks, resume_checkpoint, resume_source
from training.models import LabModelArguments, load_model, lora_config, run_processor
from utils.run_record import config_dict, redacted, token_to_environment, write_run_record
from vlm_datasets.config import DataArguments
from vlm_datasets.prompts import get_template

logger = logging.getLogger(__name__)

# (data_args, training_args, train_lab_args, processor, template) -> model -> {figure: value}, or None: no figures
HeldOut = Callable[..., Callable[..., dict[str, float]] | None]


def run_sft(
    data_args: DataArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    lab_args: LabModelArguments,
    train_lab_args: LabTrainingArguments | None = None,
    held_out: HeldOut | None = None,
):
    """Train, save the adapter (or full model) and processor in output_dir, record the run; returns the trainer.
    `held_out`: what the trainer adds to eval/loss at each evaluation (training/sft.py passes evals/held_out.py's)."""
    # The data and trainer stack (datasets, pandas) loads here: make_parser, all that --help builds, needs none of it.
    from training.pipeline import training_data
    from training.shared_prefix import use_shared_prefix
    from training.trainer import LabSFTTrainer
    from training.vision_cache import use_vision_cache
    from vlm_datasets.loading import dataset_manifest

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
    if held_out is not None:
        trainer.held_out = held_out(data_args, training_args, train_lab_args, processor, template)
    # The frozen vision tower's features computed once per image (lab_args.vision_feature_cache*; after PEFT wrapped
    # the model, so a trainable tower is seen): training/vision_cache.py
    vision_cache = use_vision_cache(trainer, lab_args, data.train, data.collator)
    # The tokens every row starts with run once per batch (lab_args.shared_prefix): training/shared_prefix.py
    shared_prefix = use_shared_prefix(trainer, lab_args)

    def record():
        if trainer.accelerator.is_main_process:  # the data manifest lists the bad examples skipped so far
            config = config_dict(data_args, model_args, lab_args, train_lab_args, training_args)
            manifest = redacted(dataset_manifest(data_args, train_split, data.train_skips))
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
