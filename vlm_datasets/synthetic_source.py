"""Synthetic source: the embedded, seed-deterministic default dataset as a canonical Arrow split."""

from __future__ import annotations

import datasets

from vlm_datasets.config import DataArguments
from vlm_datasets.example import examples_to_dataset
from vlm_datasets.prompts import instruction_pool
from vlm_datasets.synthetic import SyntheticConfig, generate


def synthetic_size(args: DataArguments, split: str) -> int:
    """synthetic_train_size for the training split, synthetic_eval_size for any other."""
    return args.synthetic_train_size if split == args.dataset_train_split else args.synthetic_eval_size


def synthetic_config(args: DataArguments, split: str) -> SyntheticConfig:
    """The generator's settings for `split`: the ablation knobs (train_image_pairs, train_instructions) shape the
    training split only, so every other split stays the standard one."""
    config = SyntheticConfig(grid=args.synthetic_grid)
    if split == args.dataset_train_split:
        config.image_pairs = args.train_image_pairs
        if args.train_instructions == "multi":
            config.instructions = instruction_pool(args.prompt_template)
    return config


def synthetic_split(args: DataArguments, split: str) -> datasets.Dataset:
    """`synthetic.generate(split, size, args.synthetic_seed)` in CANONICAL_FEATURES, built in memory."""
    config = synthetic_config(args, split)
    return examples_to_dataset(generate(split, synthetic_size(args, split), args.synthetic_seed, config), split=split)
