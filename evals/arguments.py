"""The evaluation scripts' arguments (EvalArguments) and their parser: EvalArguments, DataArguments, ModelConfig and
LabModelArguments from a YAML config + command-line flags. Nothing here loads a model, so a script's --help is quick."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser

from training.models import LabModelArguments
from vlm_datasets.config import DataArguments


@dataclass
class EvalArguments:
    output_dir: str = field(
        default="artifacts/evals/run", metadata={"help": "Where predictions.jsonl and metrics.json go."}
    )
    adapter_path: str | None = field(
        default=None, metadata={"help": "PEFT adapter (a training run directory) to apply on the base model."}
    )
    scoring: str = field(
        default="likelihood",
        metadata={
            "help": "likelihood: compare P(True) and P(False) after the prompt (never unparseable); generate: greedy "
            "generation + answer parser.",
            "choices": ["likelihood", "generate"],
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Examples per forward pass."})
    eval_window: int = field(
        default=512,
        metadata={
            "help": "Examples read (images decoded) at a time: batched by length within the window, scored, written, "
            "then dropped, so memory stays flat whatever the split's size. Larger: less padding, more memory."
        },
    )
    max_new_tokens: int = field(default=8, metadata={"help": "Generation scoring: new tokens per answer."})
    seed: int = field(default=0, metadata={"help": "Random seed (also of the bootstrap confidence intervals)."})
    image_order_probe: bool = field(
        default=False,
        metadata={
            "help": "Also score every statement naming no side with its two images swapped; report the share "
            "of answers that change (image_order_probe.jsonl, metrics.json)."
        },
    )
    report: bool = field(default=True, metadata={"help": "Write report.md and plots (evals/report.py)."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Discard predictions already in output_dir instead of continuing from them."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run model code shipped with a hub repo (off: installed transformers only)."},
    )

    def __post_init__(self):
        if self.eval_window < 1:
            raise ValueError(f"eval_window {self.eval_window}: at least one example per window")


def make_parser():
    """The evaluation scripts' parser: YAML config + CLI overrides into the four argument dataclasses."""
    return TrlParser((EvalArguments, DataArguments, ModelConfig, LabModelArguments))
