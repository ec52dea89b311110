"""Zero-shot evaluation of a base VLM on an NLVR2-style split; predictions.jsonl keyed by uid + metrics.json.

# Qwen2-VL-2B-Instruct on the NLVR2 dev split (hub, streaming)
python evals/zero_shot.py --config evals/configs/qwen2vl_2b_zero_shot.yaml

# Embedded default: the small local Qwen2-VL on the synthetic held-out split, CPU, no network
python evals/zero_shot.py --config evals/configs/embedded_zero_shot.yaml

# Generation + answer parser instead of answer likelihood
python evals/zero_shot.py --config evals/configs/embedded_zero_shot.yaml --scoring generate
"""

from __future__ import annotations

import json
import logging

from trl import ModelConfig

from evals.evaluate import EvalArguments, make_parser, run_evaluation
from training.models import LabModelArguments
from vlm_datasets.config import DataArguments


def main(
    eval_args: EvalArguments,
    data_args: DataArguments,
    model_args: ModelConfig,
    lab_args: LabModelArguments | None = None,
) -> dict:
    if eval_args.adapter_path:
        raise ValueError("zero-shot evaluation takes no adapter_path; use evals/finetuned.py")
    return run_evaluation(eval_args, data_args, model_args, lab_args)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = make_parser()
    metrics = main(*parser.parse_args_and_config())
    print(json.dumps(metrics, indent=2))
