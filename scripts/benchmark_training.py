"""Training throughput of the lab's SFT pipeline (what training/sft.py runs) against plain TRL, in one process: same
model, rows, batch size, steps, seed and SFTConfig; only the data handling and the trainer class differ. Prints
samples/s, non-padding tokens/s, peak memory and per-batch collation time per pipeline, the per-step loss difference,
data-loading rates per offline source, and last `speedup: X` (lab over baseline samples/s, medians over --repeats).
The pipelines train together, one optimizer step each in turn, so a shared machine's drifting load hits all alike.

# Embedded default (python scripts/build_embedded_model.py first), one thread (a shared machine: docs/training_speed.md)
OMP_NUM_THREADS=1 python scripts/benchmark_training.py --config training/configs/embedded_lora.yaml \
    --max_steps 40 --repeats 2 --check_masking true --loading_examples 1024

# What each change does: the lab with one change undone or added, each against the same baseline
OMP_NUM_THREADS=1 python scripts/benchmark_training.py --config training/configs/embedded_lora.yaml \
    --max_steps 40 --repeats 2 --synthetic_train_size 4096 --loading_examples 0 --memory_steps 0 \
    --variants per_batch_render,all_positions_head,workers,group_by_length,eager_attention,bf16_autocast --use_cpu true

# The vision feature cache (training/vision_cache.py, on in the lab's default): without it, and filled at setup
OMP_NUM_THREADS=1 python scripts/benchmark_training.py --config training/configs/embedded_lora.yaml \
    --max_steps 40 --repeats 2 --loading_examples 0 --memory_steps 0 --variants no_vision_cache,vision_cache_precompute

# Another model folder, e.g. an untrained one of the same architecture
python scripts/benchmark_training.py --config training/configs/embedded_lora.yaml --model_name_or_path /tmp/untrained
"""

from __future__ import annotations

# First: transformers imports bitsandbytes, which logs a `kernels` notice while imported (utils/cli.py drops it)
from utils.cli import entry_point, parse_args  # isort: split

import copy
import dataclasses
import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import set_seed
from trl import ModelConfig, SFTConfig, TrlParser

from training.callbacks import LabTrainingArguments
from training.models import LabModelArguments, load_model, lora_config, run_processor
from utils.run_record import library_versions
from vlm_datasets.config import DataArguments
from vlm_datasets.prompts import get_template

if TYPE_CHECKING:  # the trainers and the data stack load when a benchmark runs, not for --help
    from training.benchmarking import RunResult

logger = logging.getLogger(__name__)

# Lab variants (--variants): SFTConfig / ModelConfig / LabModelArguments overrides, or the per-batch collator the lab
# used before.
VARIANTS = {
    "no_vision_cache": {"vision_feature_cache": "false"},  # the frozen vision tower run on every image of every step
    "vision_cache_precompute": {"vision_feature_cache_precompute": True},  # cache filled at setup (in setup_s)
    "no_shared_prefix": {"shared_prefix": "false"},  # every row's common prefix computed in every row
    "per_batch_render": {"collator": "example"},  # ExampleCollator: template + tokenizer + images at every step
    "all_positions_head": {"trainer": "trl"},  # TRL's SFTTrainer: the LM head scores every position on the CPU
    "workers": {"dataloader_num_workers": 1, "dataloader_prefetch_factor": 4, "dataloader_persistent_workers": True},
    "group_by_length": {"train_sampling_strategy": "group_by_length"},
    "eager_attention": {"attn_implementation": "eager"},
    "bf16_autocast": {"bf16": True},
}


@dataclass
class TrainingBenchmarkArguments:
    timing_warmup_steps: int = field(default=5, metadata={"help": "Steps run before timing starts."})
    repeats: int = field(default=1, metadata={"help": "Rounds of runs; medians are reported."})
    interleave: bool = field(
        default=True,
        metadata={
            "help": "Train all pipelines together, one optimizer step each in turn (same machine conditions "
            "step by step); false: one after the other (several models in memory at once is then avoided)."
        },
    )
    memory_steps: int = field(
        default=6,
        metadata={"help": "Steps of the short run of each pipeline alone that measures peak memory (0: skip)."},
    )
    variants: str = field(
        default="", metadata={"help": f"Comma-separated lab variants to add, + combines: {list(VARIANTS)}."}
    )
    check_masking: bool = field(
        default=False,
        metadata={
            "help": "Also run TRL with the label on the newline after <|im_end|> masked: its losses should "
            "then equal the lab's (the newline is the only masking difference)."
        },
    )
    loading_examples: int = field(
        default=256, metadata={"help": "Rows read per source for the data-loading rates (0: skip them)."}
    )
    output_json: str | None = field(default=None, metadata={"help": "Also write every figure to this JSON file."})


def build(name, data_args, training_args, model_args, processor, template, lab_args=None):
    """(trainer, setup seconds) of the baseline ("trl", "trl_newline_masked") or a lab variant ("lab", "lab+<v>")."""
    from trl import SFTTrainer

    from training.baseline import lab_trainer, trl_trainer
    from training.collators import ExampleCollator

    set_seed(training_args.seed)
    args, margs = copy.deepcopy(training_args), copy.deepcopy(model_args)
    overrides = {}
    for variant in name.split("+")[1:] if name.startswith("lab+") else []:  # lab+a+b: both applied
        overrides |= VARIANTS[variant]
    collator, trainer_class = overrides.pop("collator", None), overrides.pop("trainer", None)
    margs.attn_implementation = overrides.pop("attn_implementation", margs.attn_implementation)
    lab_fields = {f.name for f in dataclasses.fields(LabModelArguments)}
    lab_overrides = {k: overrides.pop(k) for k in list(overrides) if k in lab_fields}
    lab_args = dataclasses.replace(lab_args or LabModelArguments(), **lab_overrides)
    args = dataclasses.replace(args, **overrides)  # validated again (bf16 is resolved in __post_init__)
    model, peft = load_model(margs), lora_config(margs)
    if name.startswith("trl"):
        args.train_sampling_strategy = "random"  # TRL's rows have no length column
        return trl_trainer(model, processor, template, data_args, args, peft, name == "trl_newline_masked")
    if collator == "example":
        collator = ExampleCollator(processor, template, max_length=args.max_length)
    trainer_class = SFTTrainer if trainer_class == "trl" else None
    return lab_trainer(model, processor, template, data_args, args, peft, collator, trainer_class, lab_args)


def main(bench, data_args, training_args, model_args, lab_args, train_lab_args=None) -> dict:
    from training.baseline import loss_difference
    from training.benchmarking import data_loading, timed_runs

    training_args.logging_steps, training_args.save_strategy, training_args.report_to = 1, "no", []
    training_args.disable_tqdm, training_args.eval_strategy = True, "no"  # training throughput only
    template = get_template(data_args.prompt_template)
    processor = run_processor(model_args, data_args)
    names = ["trl", "lab"] + (["trl_newline_masked"] if bench.check_masking else [])
    names += [f"lab+{v}" for v in filter(None, bench.variants.split(","))]

    def build_named(name, args):
        return build(name, data_args, args, model_args, processor, template, lab_args)

    device = "cuda" if torch.cuda.is_available() and not training_args.use_cpu else "cpu"
    timing = (bench.timing_warmup_steps, bench.repeats, bench.interleave, bench.memory_steps)
    runs = timed_runs(names, build_named, training_args, device, *timing)
    report = {"versions": library_versions(), "threads": torch.get_num_threads(), "device": device}
    report["runs"] = {n: [r.to_dict() for r in rs] for n, rs in runs.items()}
    report["median_samples_per_s"] = {n: statistics.median(r.samples_per_s for r in rs) for n, rs in runs.items()}
    report["loss_lab_vs_trl"] = loss_difference(runs["lab"][0].losses, runs["trl"][0].losses)
    if bench.check_masking:
        masked = runs["trl_newline_masked"][0].losses
        report["loss_lab_vs_trl_newline_masked"] = loss_difference(runs["lab"][0].losses, masked)
    if bench.loading_examples:
        report["data_loading"] = data_loading(data_args, bench.loading_examples, processor, template)
    report["speedup"] = report["median_samples_per_s"]["lab"] / report["median_samples_per_s"]["trl"]
    print_report(report, runs)
    if bench.output_json:
        Path(bench.output_json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"speedup: {report['speedup']:.3f}")
    return report


def print_report(report: dict, runs: dict[str, list[RunResult]]) -> None:
    base = report["median_samples_per_s"]["trl"]
    print(
        f"{'pipeline':<44}{'samples/s':>10}{'x trl':>7}{'tokens/s':>10}{'peak MB':>9}{'collate ms':>11}{'setup s':>9}"
    )
    for name, rs in runs.items():
        numbers = [k for k, v in vars(rs[0]).items() if isinstance(v, int | float) or v is None]
        med = {k: statistics.median(getattr(r, k) or 0 for r in rs) for k in numbers}
        print(
            f"{name:<44}{med['samples_per_s']:>10.1f}{med['samples_per_s'] / base:>7.3f}{med['tokens_per_s']:>10.0f}"
            f"{med['peak_memory_mb']:>9.0f}{med['collate_ms']:>11.1f}{med['setup_s']:>9.1f}"
        )
    print(f"(medians of {len(runs['trl'])} round(s); memory: {runs['trl'][0].memory_kind or 'not measured'})")
    print("per-step |loss lab - loss trl|:", json.dumps(report["loss_lab_vs_trl"]))
    print("  TRL's labels also cover the newline after the final <|im_end|> (3 label tokens per row, the lab's 2)")
    if "loss_lab_vs_trl_newline_masked" in report:
        print(
            "  with that newline's label masked in TRL's batches:", json.dumps(report["loss_lab_vs_trl_newline_masked"])
        )
    for name, rs in runs.items():
        for i, r in enumerate(rs):
            if r.vision_feature_cache is not None:
                c = r.vision_feature_cache
                print(
                    f"vision feature cache, {name} round {i + 1}: {c['hits']} hits, {c['misses']} misses, "
                    f"{c['images']} images, {c['mb']:.1f} MB{' (cap reached)' if c['full'] else ''}"
                )
    for source, r in report.get("data_loading", {}).items():
        print(f"data loading {source:<24} load {r['load_s']:6.2f} s, read {r['read_examples_per_s']:7.0f} examples/s")
    if "data_loading" in report:
        print("  (hub streaming needs the network: not measured offline)")


def make_parser() -> TrlParser:
    return TrlParser(
        (TrainingBenchmarkArguments, DataArguments, SFTConfig, ModelConfig, LabModelArguments, LabTrainingArguments)
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        main(*parse_args(make_parser()))
