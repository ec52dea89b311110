"""The two evaluation modes, each run_evaluation (evals/evaluate.py) with its rule on adapter_path: zero-shot, the base
model alone (the command line: evals/zero_shot.py), and fine-tuned, the base + a training run's PEFT adapter (the
command line: evals/finetuned.py)."""

from __future__ import annotations

from trl import ModelConfig

from evals.arguments import EvalArguments
from training.models import LabModelArguments
from vlm_datasets.config import DataArguments


def zero_shot(
    eval_args: EvalArguments,
    data_args: DataArguments,
    model_args: ModelConfig,
    lab_args: LabModelArguments | None = None,
) -> dict:
    """Evaluate the base model alone; refused with an adapter_path. Returns the metrics."""
    if eval_args.adapter_path:
        raise ValueError("zero-shot evaluation takes no adapter_path; use evals/finetuned.py")
    from evals.evaluate import run_evaluation  # here: the scripts' --help loads no model code

    return run_evaluation(eval_args, data_args, model_args, lab_args)


def finetuned(
    eval_args: EvalArguments,
    data_args: DataArguments,
    model_args: ModelConfig,
    lab_args: LabModelArguments | None = None,
) -> dict:
    """Evaluate the base + the adapter at adapter_path (a training run's output_dir). Returns the metrics."""
    if not eval_args.adapter_path:
        raise ValueError("fine-tuned evaluation needs --adapter_path (the training run's output_dir)")
    from evals.evaluate import run_evaluation

    return run_evaluation(eval_args, data_args, model_args, lab_args)
