"""The two pipelines scripts/benchmark_training.py compares, built from the same canonical rows: plain TRL (its
conversational prompt/completion rows with images, its own VLM collator and dataset handling) and the lab's (what
training/sft.py builds), and the check that their losses differ only by TRL's newline label."""

from __future__ import annotations

import statistics
import time

import datasets
import torch

from training.collators import IGNORE_INDEX
from vlm_datasets.example import row_to_example
from vlm_datasets.prompts import PromptTemplate, to_conversation


def trl_rows(ds: datasets.Dataset | datasets.IterableDataset, template: PromptTemplate):
    """The canonical split as the conversational prompt/completion rows with images that a plain TRL user passes to
    SFTTrainer (same examples, order and template). A Dataset's images are carried over without decoding; a stream
    is converted as it is read."""

    def convert(row):
        from PIL import Image

        example = row_to_example({**row, "images": [Image.new("RGB", (1, 1))] * len(row["images"])})
        conversation = to_conversation(example, template)
        return {"images": row["images"], "prompt": conversation["prompt"], "completion": conversation["completion"]}

    if isinstance(ds, datasets.IterableDataset):
        return ds.map(convert, remove_columns=["uid", "sentence", "label", "meta"])
    undecoded = ds.cast_column("images", datasets.Sequence(datasets.Image(decode=False)))
    rows = undecoded.map(convert, remove_columns=ds.column_names, desc="TRL rows")
    return rows.cast_column("images", datasets.Sequence(datasets.Image()))


class NewlineMasked:
    """TRL's VLM collator with the label on the newline after the final <|im_end|> set to -100 (what the lab's labels
    leave out): with it, a baseline run's losses should equal the lab's up to float rounding."""

    def __init__(self, collator, newline_id: int):
        self.collator = collator
        self.newline_id = newline_id

    def __call__(self, rows):
        batch = self.collator(rows)
        last = batch["attention_mask"].sum(dim=1) - 1  # [B] index of each row's last real token
        rows_ = torch.arange(len(last))
        is_newline = batch["input_ids"][rows_, last] == self.newline_id
        batch["labels"][rows_[is_newline], last[is_newline]] = IGNORE_INDEX
        return batch


def loss_difference(a: list[float], b: list[float]) -> dict[str, float]:
    """Per-step |a - b| over the common steps: mean, max, and at the last step."""
    diffs = [abs(x - y) for x, y in zip(a, b, strict=False)]
    if not diffs:
        return {"steps": 0}
    return {"steps": len(diffs), "mean_abs": statistics.fmean(diffs), "max_abs": max(diffs), "last_abs": diffs[-1]}


def lab_trainer(
    model, processor, template, data_args, training_args, peft_config, collator=None, trainer_class=None, lab_args=None
):
    """What training/sft.py builds (training.pipeline.training_data, LabSFTTrainer, the vision feature cache and the
    shared prefix of `lab_args`, default LabModelArguments()); `collator` and `trainer_class` swap in others (the
    ablations). Returns (trainer, setup seconds: data preparation + any precompute of the vision feature cache)."""
    from training.models import LabModelArguments
    from training.pipeline import training_data
    from training.shared_prefix import use_shared_prefix
    from training.trainer import LabSFTTrainer
    from training.vision_cache import use_vision_cache

    start = time.perf_counter()
    data = training_data(data_args, training_args, processor, template)
    setup = time.perf_counter() - start
    trainer = (trainer_class or LabSFTTrainer)(
        model=model,
        args=training_args,
        data_collator=collator or data.collator,
        train_dataset=data.train,
        processing_class=processor,
        peft_config=peft_config,
    )
    lab_args = lab_args or LabModelArguments()
    report = use_vision_cache(trainer, lab_args, data.train, data.collator)
    use_shared_prefix(trainer, lab_args)
    return trainer, setup + report.precompute_s


def trl_trainer(model, processor, template, data_args, training_args, peft_config, mask_newline: bool = False):
    """Plain TRL: conversational prompt/completion rows with images, SFTTrainer's own VLM collator and dataset
    handling (no collator passed; TRL skips its dataset preparation for vision rows). Returns (trainer, setup s)."""
    from trl import SFTTrainer

    from vlm_datasets.loading import load_split, require_labels

    start = time.perf_counter()
    split = data_args.dataset_train_split
    canonical = require_labels(load_split(data_args, split, limit=data_args.max_train_examples), data_args, split)
    rows = trl_rows(canonical, template)
    setup = time.perf_counter() - start
    trainer = SFTTrainer(
        model=model, args=training_args, train_dataset=rows, processing_class=processor, peft_config=peft_config
    )
    if mask_newline:
        newline = processor.tokenizer("\n", add_special_tokens=False).input_ids
        trainer.data_collator = NewlineMasked(trainer.data_collator, newline[-1])
    return trainer, setup
