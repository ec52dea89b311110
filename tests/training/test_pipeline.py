"""The tokenize-once pipeline gives exactly the batches of the per-batch collator, counts image tokens like the
processor, refuses what the per-batch collator refuses, and re-tokenizes a kept tokenized file that changed."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from training.collators import ExampleCollator
from training.models import load_processor
from training.pipeline import (
    TOKEN_RECORD_SUFFIX,
    TokenizedCollator,
    _token_file_problem,
    image_token_counts,
    tokenize_split,
)
from utils.errors import DataError
from vlm_datasets.cache import build_cache, load_cached_split
from vlm_datasets.config import DataArguments
from vlm_datasets.example import Example, examples_to_dataset
from vlm_datasets.prompts import TEMPLATES, get_template
from vlm_datasets.synthetic import generate


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_processor(str(tiny_model_dir), max_pixels=112 * 112)


def mixed_examples() -> list[Example]:
    """Synthetic examples with images of several sizes and sentences of several lengths (padding in a batch)."""
    examples = list(generate("dev", 6, seed=4))
    examples[0].sentence += " Extra words make this prompt longer than the others."
    examples[1].images = [img.resize((112, 84)) for img in examples[1].images]
    examples[2].images = [examples[2].images[0].resize((140, 56)), examples[2].images[1]]
    return examples


@pytest.mark.parametrize("template_name", sorted(n for n in TEMPLATES if "unlabeled" not in n))
def test_tokenized_batches_equal_the_per_batch_collator(processor, template_name, isolated_artifacts):
    template = get_template(template_name)
    ds = examples_to_dataset(mixed_examples())
    tokenized = tokenize_split(ds, processor, template)
    expected = ExampleCollator(processor, template, max_length=512)(list(ds))
    batch = TokenizedCollator(processor, max_length=512)(list(tokenized))
    assert batch.keys() == expected.keys()
    for key in expected:
        assert batch[key].dtype == expected[key].dtype, key
        assert torch.equal(batch[key], expected[key]), key
    # A stream is tokenized lazily, to the same ids.
    streamed = list(tokenize_split(ds.to_iterable_dataset(), processor, template))
    assert [r["input_ids"] for r in streamed] == tokenized["input_ids"]


def test_image_tokens_follow_the_pixel_budget(processor):
    # max_pixels 112*112: 56x56 -> 2x2 merged tokens; 112x84 -> 4x3; 448x448 is scaled down to 112x112 -> 4x4
    assert image_token_counts(processor, [(56, 56), (84, 112), (448, 448)]) == [4, 12, 16]
    grid = processor.image_processor(images=[Image.new("RGB", (112, 84))], return_tensors="pt")["image_grid_thw"]
    assert int(grid.prod()) // processor.image_processor.merge_size**2 == 12


def test_refusals_name_the_uid(processor, isolated_artifacts):
    template = get_template("nlvr2_true_false")
    examples = mixed_examples()
    tokenized = list(tokenize_split(examples_to_dataset(examples), processor, template))
    with pytest.raises(DataError, match=rf"{examples[0].uid}.*exceed max_length=20"):
        TokenizedCollator(processor, max_length=20)(tokenized[:2])
    unlabeled = mixed_examples()[:1]
    unlabeled[0].label = None
    with pytest.raises(DataError, match=rf"{unlabeled[0].uid}.*unlabeled"):
        tokenize_split(examples_to_dataset(unlabeled), processor, template)
    thin = [Example("odd/uid", [Image.new("RGB", (1, 300)), Image.new("RGB", (56, 56))], "Too thin.", True)]
    with pytest.raises(DataError, match=r"uid odd/uid: the image processor refuses its images"):
        tokenize_split(examples_to_dataset(thin), processor, template)


def test_a_changed_pixel_budget_is_caught_per_batch(tiny_model_dir, processor, isolated_artifacts):
    rows = list(tokenize_split(examples_to_dataset(mixed_examples()), processor, get_template("nlvr2_true_false")))
    smaller = load_processor(str(tiny_model_dir), max_pixels=56 * 56)
    with pytest.raises(DataError, match="image tokens in the ids differ"):
        TokenizedCollator(smaller)(rows)


def test_examples_with_their_own_templates_train_on_their_answers(processor, isolated_artifacts):
    """train_instructions: multi data: each example rendered with its own template (meta["prompt_template"]), in
    the tokenize-once pipeline exactly as in the per-batch collator; the labels hold that template's answer."""
    from vlm_datasets.prompts import instruction_pool
    from vlm_datasets.synthetic import SyntheticConfig

    pool = instruction_pool("nlvr2_labeled_images")
    examples = list(generate("train", 24, seed=0, config=SyntheticConfig(instructions=pool)))
    assert {x.meta["task_format"] for x in examples} == set(pool)
    run_template = get_template("nlvr2_labeled_images")
    ds = examples_to_dataset(examples)
    batch = TokenizedCollator(processor, max_length=512)(list(tokenize_split(ds, processor, run_template)))
    expected = ExampleCollator(processor, run_template, max_length=512)(list(ds))
    for key in expected:
        assert torch.equal(batch[key], expected[key]), key
    tok = processor.tokenizer
    for i, ex in enumerate(examples):
        answer = get_template(ex.meta["prompt_template"]).answer(ex.label)
        labelled = batch["labels"][i][batch["labels"][i] != -100]
        assert tok.decode(labelled).startswith(answer), (ex.meta["prompt_template"], tok.decode(labelled))


# ---- the tokenized file kept beside a cached split -------------------------------------------------------------


@pytest.fixture
def cached_dev(tmp_path, isolated_artifacts):
    """(args, cache folder, the cached dev split) of a small synthetic source."""
    args = DataArguments(dataset_source="synthetic", synthetic_train_size=4, synthetic_eval_size=6)
    cache_dir = build_cache(args, ["dev"], tmp_path / "cache")
    return args, cache_dir, load_cached_split(args, "dev", cache_dir)


def tokenized_file(cache_dir: Path) -> Path:
    """The one tokenized Arrow file beside the cached dev split (the one with a checksum record)."""
    (path,) = [
        p for p in (cache_dir / "dev").glob("cache-*.arrow") if p.with_name(p.name + TOKEN_RECORD_SUFFIX).exists()
    ]
    return path


def test_swapped_answer_tokens_in_the_tokenized_file_are_caught_and_tokenized_again(processor, cached_dev, caplog):
    args, cache_dir, ds = cached_dev
    template = get_template("nlvr2_true_false")
    first = tokenize_split(ds, processor, template)[:]  # read now: the file is changed below
    first = [dict(zip(first, values, strict=True)) for values in zip(*first.values(), strict=True)]
    ids, answer_at = first[0]["input_ids"], len(first[0]["input_ids"]) - first[0]["completion_length"]
    other = next(r for r in first if r["label"] != first[0]["label"])  # the opposite answer's first token
    wrong = other["input_ids"][len(other["input_ids"]) - other["completion_length"]]
    assert wrong != ids[answer_at]
    path = tokenized_file(cache_dir)
    data = bytearray(path.read_bytes())
    row = np.asarray(ids, dtype="<i4").tobytes()
    at = data.index(row) + 4 * answer_at
    data[at : at + 4] = np.asarray([wrong], dtype="<i4").tobytes()
    path.write_bytes(bytes(data))  # same size, one answer token swapped
    assert datasets.Dataset.from_file(str(path))[0]["input_ids"][answer_at] == wrong  # it would train on it
    with caplog.at_level("WARNING", logger="training.pipeline"):
        again = tokenize_split(ds, processor, template)
    assert f"tokenized split {path}: SHA-256 differs" in caplog.text
    assert again["input_ids"][:] == [r["input_ids"] for r in first]
    assert tokenized_file(cache_dir) == path and _token_file_problem(path) is None  # rewritten, recorded again
    assert len(load_cached_split(args, "dev", cache_dir)) == 6  # the file and its record are not cache files


def test_a_truncated_or_unrecorded_tokenized_file_is_named_and_tokenized_again(processor, cached_dev, caplog):
    _, cache_dir, ds = cached_dev
    template = get_template("nlvr2_true_false")
    expected = tokenize_split(ds, processor, template)["input_ids"][:]  # read now: the file is changed below
    path = tokenized_file(cache_dir)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with caplog.at_level("WARNING", logger="training.pipeline"):
        assert tokenize_split(ds, processor, template)["input_ids"][:] == expected
    assert f"tokenized split {path}: {size // 2} bytes, {size} when written (truncated or damaged)" in caplog.text
    # A file without its record (written before records were kept) is not trusted either.
    path.with_name(path.name + TOKEN_RECORD_SUFFIX).unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger="training.pipeline"):
        assert tokenize_split(ds, processor, template)["input_ids"][:] == expected
    assert f"tokenized split {path}: no {path.name}{TOKEN_RECORD_SUFFIX} beside it" in caplog.text
    # An intact one is reused as it is: no warning, no rewrite.
    caplog.clear()
    mtime = path.stat().st_mtime_ns
    with caplog.at_level("WARNING", logger="training.pipeline"):
        assert tokenize_split(ds, processor, template)["input_ids"][:] == expected
    assert caplog.text == "" and path.stat().st_mtime_ns == mtime
