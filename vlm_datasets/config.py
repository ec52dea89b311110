"""Data arguments shared by training and evaluation scripts (parsed by TrlParser from YAML + CLI)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

SOURCES = ("hub", "nlvr2", "jsonl", "synthetic")
BAD_EXAMPLE_POLICIES = ("fail", "skip")  # vlm_datasets.bad_examples
INSTRUCTION_MODES = ("single", "multi")  # train_instructions
CACHE_VERIFY_LEVELS = ("quick", "full")  # dataset_cache_verify (vlm_datasets.cache)


@dataclass
class DataArguments:
    dataset_source: str = field(
        default="synthetic",
        metadata={"help": "Where examples come from.", "choices": list(SOURCES)},
    )
    dataset_name: str = field(default="pingzhili/nlvr2", metadata={"help": "Hub dataset id (dataset_source=hub)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (commit, tag)."})
    dataset_streaming: bool = field(
        default=True, metadata={"help": "Hub source: stream (True) or download the split first (False)."}
    )
    dataset_column_map: dict | str | None = field(
        default=None,
        metadata={
            "help": "Hub/JSONL column names, as a mapping or JSON string: keys uid, sentence, label, images or "
            "left_image + right_image. Mirrors of NLVR2 differ (identifier vs uid, ...)."
        },
    )
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "nlvr2: folder holding dev.json/test1.json/...; jsonl: the manifest file."},
    )
    dataset_image_dir: str | None = field(
        default=None,
        metadata={
            "help": "nlvr2: image folder (official names, split subfolders allowed); default dataset_path/images."
        },
    )
    dataset_cached: bool = field(
        default=False,
        metadata={
            "help": "Read the split from a local cache (Arrow + manifest.json, verified), building it from the source "
            "on first use; False reads the source directly (streaming for the hub)."
        },
    )
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Cache folder; default <artifact root>/datasets/<source slug>."}
    )
    dataset_cache_verify: str = field(
        default="quick",
        metadata={
            "help": "How a cached split is verified on load. quick: manifest.json's own hash, the file list, each "
            "file's size, the split's row count, and for nlvr2/jsonl the annotation file's SHA-256 and each image's "
            "size and mtime against the build (a same-size change inside a cache file goes unnoticed). full: also "
            "the SHA-256 of every cache file (all its bytes read: minutes for NLVR2 on a network drive).",
            "choices": list(CACHE_VERIFY_LEVELS),
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split used for training."})
    dataset_eval_split: str = field(default="dev", metadata={"help": "Split used for evaluation."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Cap on training examples."})
    max_eval_examples: int | None = field(default=None, metadata={"help": "Cap on evaluation examples."})
    synthetic_train_size: int = field(default=4096, metadata={"help": "Synthetic source: examples in train."})
    synthetic_eval_size: int = field(default=512, metadata={"help": "Synthetic source: examples in other splits."})
    synthetic_seed: int = field(default=0, metadata={"help": "Synthetic source: generator seed."})
    synthetic_grid: int = field(
        default=2, metadata={"help": "Synthetic source: cells per image side (28 px each, one vision token)."}
    )
    train_image_pairs: int | None = field(
        default=None,
        metadata={
            "help": "Training split only: distinct image pairs at a fixed total of examples (synthetic_train_size, or "
            "max_train_examples for the other sources), so each pair carries total / train_image_pairs statements "
            "(Q/A pairs). Synthetic: generated so, labels balanced; other sources: selected by NLVR2 identifier (an "
            "image pair is split-set_id-pair_id) from a split that is not streamed. None: the source as it is "
            "(synthetic: every example its own pair, each sentence judged on 4 pairs)."
        },
    )
    train_instructions: str = field(
        default="single",
        metadata={
            "help": "Training split only. single: every example in prompt_template. multi: each example in a template "
            "of a task format drawn at random (vlm_datasets.prompts.instruction_pool: prompt_template and paraphrased "
            "True/False, yes/no; synthetic also which-image and counting tasks). Evaluation uses prompt_template.",
            "choices": list(INSTRUCTION_MODES),
        },
    )
    bad_examples: str = field(
        default="fail",
        metadata={
            "help": "A bad example (unreadable image, bad label, duplicate uid, malformed line, unlabeled in "
            "training): fail stops at the first one naming it; skip drops it and counts it (uid + reason) in the "
            "run record and the cache manifest.",
            "choices": list(BAD_EXAMPLE_POLICIES),
        },
    )
    prompt_template: str = field(
        default="nlvr2_true_false",
        metadata={"help": "Prompt template name (vlm_datasets.prompts.TEMPLATES)."},
    )
    min_pixels: int | None = field(
        default=None, metadata={"help": "Image processor min pixels per image (None: the processor's own)."}
    )
    max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Image processor max pixels per image. Set it for Qwen2-VL: the hub default allows 16k tokens."
        },
    )
    preflight: bool = field(
        default=True,
        metadata={
            "help": "Training: before step 0, check the training examples' token counts (images expanded under "
            "min/max_pixels) against max_length and refuse to start if one would be cut, naming the uids and whether "
            "the cut falls inside image tokens (training/preflight.py; scripts/preflight.py shows the distribution)."
        },
    )
    preflight_examples: int | None = field(
        default=None,
        metadata={
            "help": "How many training examples the pre-flight checks: None = the whole split (it is tokenized once "
            "anyway, so this costs nothing more), or the first 1000 of a stream; a number = the first N."
        },
    )

    def __post_init__(self):
        if self.dataset_source not in SOURCES:
            raise ValueError(f"dataset_source {self.dataset_source!r} unknown; choose one of {list(SOURCES)}")
        if self.bad_examples not in BAD_EXAMPLE_POLICIES:
            raise ValueError(f"bad_examples {self.bad_examples!r} unknown; choose one of {list(BAD_EXAMPLE_POLICIES)}")
        if self.dataset_cache_verify not in CACHE_VERIFY_LEVELS:
            raise ValueError(
                f"dataset_cache_verify {self.dataset_cache_verify!r} unknown; choose one of {list(CACHE_VERIFY_LEVELS)}"
            )
        if self.train_instructions not in INSTRUCTION_MODES:
            raise ValueError(
                f"train_instructions {self.train_instructions!r} unknown; choose one of {list(INSTRUCTION_MODES)}"
            )
        if self.train_image_pairs is not None and self.train_image_pairs < 1:
            raise ValueError(f"train_image_pairs must be at least 1 (or None), got {self.train_image_pairs}")
        if isinstance(self.dataset_column_map, str):
            try:
                self.dataset_column_map = json.loads(self.dataset_column_map)
            except json.JSONDecodeError as e:
                raise ValueError(f"dataset_column_map is not valid JSON: {e}") from None
