"""Evaluation of a base VLM + a fine-tuned PEFT adapter (a training run directory) on an NLVR2-style split
(evals/modes.py).

# Qwen2-VL-2B + the Q-LoRA adapter trained by training/configs/qwen2vl_2b_qlora.yaml, NLVR2 dev
python evals/finetuned.py --config evals/configs/qwen2vl_2b_finetuned.yaml

# Embedded default
python evals/finetuned.py --config evals/configs/embedded_finetuned.yaml

# Another adapter
python evals/finetuned.py --config evals/configs/embedded_finetuned.yaml --adapter_path artifacts/checkpoints/my-run
"""

from __future__ import annotations

import json
import logging

from evals.arguments import make_parser
from evals.modes import finetuned as main

if __name__ == "__main__":
    from utils.cli import entry_point, parse_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        metrics = main(*parse_args(make_parser()))
    print(json.dumps(metrics, indent=2))
