"""Token-budget pre-flight of a training config: image tokens per example (prod(image_grid_thw) / merge_size**2 under
min/max_pixels, from the image sizes), text tokens, their distribution and maximum; the max_length that cuts nothing;
and the examples (uids) a given max_length would cut, flagging a cut inside image tokens. Loads the processor only,
not the model. training/sft.py runs the same check before step 0 (preflight: true, the default).

# The embedded default's training split, against the config's max_length
python scripts/preflight.py --config training/configs/embedded_lora.yaml

# Qwen2-VL-2B on NLVR2 at another pixel budget, the first 2000 examples, a candidate max_length
python scripts/preflight.py --config training/configs/qwen2vl_2b_qlora.yaml --max_pixels 200704 \
    --preflight_examples 2000 --max_length 1024

# Write the figures as JSON
python scripts/preflight.py --config training/configs/embedded_lora.yaml --report_json /tmp/budget.json
"""

from __future__ import annotations

# First: transformers imports bitsandbytes, which logs a `kernels` notice while imported (utils/cli.py drops it)
from utils.cli import entry_point, parse_args  # isort: split

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, SFTConfig, TrlParser

from training.callbacks import LabTrainingArguments
from training.models import LabModelArguments, run_processor
from vlm_datasets.config import DataArguments
from vlm_datasets.prompts import get_template


@dataclass
class PreflightArguments:
    split: str | None = field(default=None, metadata={"help": "Split to check (default: dataset_train_split)."})
    report_json: str | None = field(default=None, metadata={"help": "Also write the figures to this JSON file."})


def main(pre: PreflightArguments, data_args: DataArguments, training_args: SFTConfig, model_args: ModelConfig, *_):
    # The data stack (datasets, pandas) loads for a check, not for --help.
    from training.pipeline import tokenize_split
    from training.preflight import describe_cuts, token_budget
    from vlm_datasets.loading import load_split, require_labels

    split = pre.split or data_args.dataset_train_split
    processor = run_processor(model_args, data_args, trust_remote_code=training_args.trust_remote_code)
    ds = require_labels(load_split(data_args, split, limit=data_args.preflight_examples), data_args, split)
    tokenized = tokenize_split(ds, processor, get_template(data_args.prompt_template))
    budget = token_budget(tokenized, training_args.max_length)
    size = processor.image_processor.size
    print(
        f"{budget.examples} examples of split {split!r} ({data_args.dataset_source}), template "
        f"{data_args.prompt_template!r}, pixels per image in [{size['shortest_edge']}, {size['longest_edge']}]"
    )
    print(f"{'tokens per example':<20}{'min':>8}{'median':>8}{'p95':>8}{'max':>8}")
    for name, dist in (("image", budget.image_tokens), ("text", budget.text_tokens), ("total", budget.total_tokens)):
        print(f"{name:<20}{dist['min']:>8}{dist['median']:>8.0f}{dist['p95']:>8.0f}{dist['max']:>8}")
    print(f"max_length that cuts nothing: {budget.needed_max_length}")
    if budget.max_length is not None:
        print(
            f"at max_length={budget.max_length}: {len(budget.cuts)} examples cut, "
            f"{len(budget.image_cuts)} of them inside image tokens"
        )
        if budget.cuts:
            print(describe_cuts(budget, show=20))
    if pre.report_json:
        Path(pre.report_json).write_text(json.dumps(budget.to_dict(), indent=2) + "\n")
    return budget


def make_parser() -> TrlParser:
    return TrlParser(
        (PreflightArguments, DataArguments, SFTConfig, ModelConfig, LabModelArguments, LabTrainingArguments)
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        main(*parse_args(make_parser()))
