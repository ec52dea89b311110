"""Compose a VLM from a vision encoder, a projector and a language model; save model + processor in HF format.

# Real parts (hub ids): CLIP ViT-B/16 + GPT-2, LLaVA-1.5's mlp2x_gelu projector
python scripts/compose_vlm.py --config training/configs/compose/clip_gpt2.yaml

# SigLIP-B/16 + SmolLM2-135M-Instruct, SwiGLU projector with 2x2 pixel shuffle (196 -> 49 image tokens)
python scripts/compose_vlm.py --config training/configs/compose/siglip_smollm2.yaml

# SigLIP-B/16 + OLMoE-1B-7B-Instruct (a mixture-of-experts LM)
python scripts/compose_vlm.py --config training/configs/compose/siglip_olmoe.yaml

# Embedded defaults, from small configs, no network (then train them: training/train_vlm.py)
python scripts/compose_vlm.py --config training/configs/compose/gpt2v_embedded.yaml
python scripts/compose_vlm.py --config training/configs/compose/tinyvlm_embedded.yaml
python scripts/compose_vlm.py --config training/configs/compose/vit_moe_embedded.yaml

# The GPT-2 that training/pretrain_lm.py saves (training/configs/gpt2_embedded.yaml) as the language model; another
# AutoModelForCausalLM folder: add --text_model_name_or_path FOLDER --output_dir OUT
python scripts/compose_vlm.py --config training/configs/compose/gpt2v_stories.yaml
"""

from __future__ import annotations

import json
import logging

from trl import TrlParser

from training.compose_arguments import ComposeArguments


def main(args: ComposeArguments) -> None:
    from training.compose import build, parameter_counts, save  # torch and transformers load for a build only

    model, processor = build(args)
    out = save(model, processor, args.output_dir, args)
    print(f"{type(model).__name__} -> {out}")
    print(f"parameters: {json.dumps(parameter_counts(model))}; image tokens: {model.config.image_seq_length}")


def make_parser() -> TrlParser:
    return TrlParser((ComposeArguments,))


if __name__ == "__main__":
    from utils.cli import entry_point, parse_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        main(*parse_args(make_parser()))
