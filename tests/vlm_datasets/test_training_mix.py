"""The training-split knobs on non-synthetic sources: image pairs selected by NLVR2 identifier at a fixed total,
re-worded instructions per example; both applied by load_split to the training split only."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest
from PIL import Image

from utils.errors import DataError
from vlm_datasets.config import DataArguments
from vlm_datasets.example import Example, examples_to_dataset
from vlm_datasets.prompts import instruction_pool
from vlm_datasets.training_mix import assign_instructions, image_pair_key, select_image_pairs, shape_training_split


def nlvr2_like(pairs_with_two: int, pairs_with_one: int) -> datasets.Dataset:
    """An NLVR2-shaped split: some image pairs hold two statements (sentence ids 0 and 1), others one."""
    image = Image.new("RGB", (8, 8))
    examples = []
    for set_id in range(pairs_with_two + pairs_with_one):
        for sentence_id in range(2 if set_id < pairs_with_two else 1):
            uid = f"train-{set_id}-0-{sentence_id}"
            examples.append(Example(uid, [image, image], f"statement {uid}", sentence_id == 0, {"source": "x"}))
    return examples_to_dataset(examples, split="train")


def test_image_pair_key_drops_the_sentence_id():
    assert image_pair_key("dev-850-0-1") == "dev-850-0" == image_pair_key("dev-850-0-0")
    with pytest.raises(DataError, match="NLVR2 identifier"):
        image_pair_key("not-an-id")


def test_select_image_pairs_keeps_the_total_and_the_pair_count():
    ds = nlvr2_like(pairs_with_two=6, pairs_with_one=10)
    two_each = select_image_pairs(ds, num_pairs=4, total=8)
    pairs = Counter(image_pair_key(u) for u in two_each["uid"])
    assert len(two_each) == 8 and len(pairs) == 4 and set(pairs.values()) == {2}
    one_each = select_image_pairs(ds, num_pairs=8, total=8)
    assert len(one_each) == 8 and len({image_pair_key(u) for u in one_each["uid"]}) == 8
    assert list(select_image_pairs(ds, 4, 8)["uid"]) == list(two_each["uid"])  # fixed by the identifiers
    with pytest.raises(DataError, match="only 6 of the split's 16 image pairs"):
        select_image_pairs(ds, num_pairs=7, total=14)
    with pytest.raises(DataError, match="dataset_streaming"):
        select_image_pairs(ds.to_iterable_dataset(), 4, 8)


def test_assign_instructions_rewords_with_true_false_and_yes_no_templates():
    ds = nlvr2_like(pairs_with_two=10, pairs_with_one=20)
    pool = instruction_pool("nlvr2_true_false", ("true_false", "yes_no"))
    metas = [json.loads(m) for m in assign_instructions(ds, "nlvr2_true_false")["meta"]]
    assert {m["task_format"] for m in metas} == {"true_false", "yes_no"}
    assert all(m["prompt_template"] in pool[m["task_format"]] and m["source"] == "x" for m in metas)
    streamed = [json.loads(r["meta"]) for r in assign_instructions(ds.to_iterable_dataset(), "nlvr2_true_false")]
    assert streamed == metas  # the same per uid on a stream


def test_shape_training_split_needs_a_budget_for_image_pairs():
    ds = nlvr2_like(pairs_with_two=4, pairs_with_one=0)
    args = DataArguments(dataset_source="jsonl", train_image_pairs=2)
    with pytest.raises(DataError, match="max_train_examples"):
        shape_training_split(args, ds, "train")
    args.max_train_examples = 4
    assert len(shape_training_split(args, ds, "train")) == 4
    assert shape_training_split(DataArguments(dataset_source="jsonl"), ds, "train") is ds  # defaults: unchanged
