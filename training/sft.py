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

# First: transformers imports bitsandbytes, which logs a `kernels` notice while imported (utils/cli.py drops it)
from utils.cli import entry_point, parse_args  # isort: split

import logging

from trl import ModelConfig, SFTConfig

from training.callbacks import LabTrainingArguments
from training.fine_tuning import make_parser, run_sft
from training.models import LabModelArguments
from vlm_datasets.config import DataArguments


def main(
    data_args: DataArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    lab_args: LabModelArguments,
    train_lab_args: LabTrainingArguments | None = None,
):
    """One SFT run (training/fine_tuning.py) with the held-out accuracy at each evaluation (evals/held_out.py)."""
    from evals.held_out import held_out_accuracy  # the scoring stack (datasets): for a run, not for --help

    return run_sft(data_args, training_args, model_args, lab_args, train_lab_args, held_out=held_out_accuracy)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        main(*parse_args(make_parser()))
