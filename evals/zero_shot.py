"""Zero-shot evaluation of a base VLM on an NLVR2-style split (evals/modes.py); predictions.jsonl keyed by uid +
metrics.json.

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

from evals.arguments import make_parser
from evals.modes import zero_shot as main

if __name__ == "__main__":
    from utils.cli import entry_point, parse_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        metrics = main(*parse_args(make_parser()))
    print(json.dumps(metrics, indent=2))
