"""The label mask of a real batch covers exactly the answer and its end-of-turn token; pixel budgets are honoured."""

from __future__ import annotations

import pytest
from PIL import Image

from training.collators import IGNORE_INDEX, ExampleCollator, PromptCompletionCollator
from training.models import load_processor
from utils.errors import DataError
from vlm_datasets.example import Example
from vlm_datasets.prompts import TEMPLATES, get_template, to_conversation
from vlm_datasets.synthetic import generate


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_processor(str(tiny_model_dir))


@pytest.mark.parametrize("template_name", sorted(TEMPLATES))
def test_labels_cover_exactly_answer_and_end_of_turn(processor, template_name):
    template = get_template(template_name)
    examples = list(generate("dev", 6, seed=3))
    # Different sentence lengths -> right padding in the batch.
    examples[0].sentence = examples[0].sentence + " Extra words make this prompt longer than the others."
    batch = ExampleCollator(processor, template)([ex.to_row() for ex in examples])
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    for i, ex in enumerate(examples):
        labels = batch["labels"][i]
        kept = labels != IGNORE_INDEX
        assert tok.decode(labels[kept]) == template.answer(ex.label) + "<|im_end|>"
        # The kept positions are one contiguous span right before the padding.
        positions = kept.nonzero().flatten()
        assert positions.tolist() == list(range(positions[0], positions[-1] + 1))
        n_real = int(batch["attention_mask"][i].sum())
        assert positions[-1] == n_real - 1
        assert not (batch["input_ids"][i][kept] == image_id).any()
        assert (batch["input_ids"][i][:n_real] == image_id).sum() > 0  # images are there, just masked


def test_unlabeled_example_refused_in_training_batch(processor):
    ex = next(generate("dev", 1, seed=0))
    ex.label = None
    with pytest.raises(DataError, match=ex.uid):
        ExampleCollator(processor, get_template("nlvr2_true_false"))([ex.to_row()])


def test_too_long_row_is_refused_not_cut(processor):
    ex = next(generate("dev", 1, seed=0))
    collate = ExampleCollator(processor, get_template("nlvr2_true_false"), max_length=20)
    with pytest.raises(DataError, match=rf"{ex.uid}.*exceed max_length=20"):
        collate([ex.to_row()])


@pytest.mark.parametrize(
    ("min_pixels", "max_pixels", "tokens_per_image"),
    [(None, 56 * 56, 4), (None, 112 * 112, 16), (None, 224 * 224, 64), (224 * 224, 448 * 448, 64)],
)
def test_image_token_count_follows_pixel_budget(tiny_model_dir, min_pixels, max_pixels, tokens_per_image):
    processor = load_processor(str(tiny_model_dir), min_pixels=min_pixels, max_pixels=max_pixels)
    image = Image.new("RGB", (224, 224), (200, 10, 10))
    ex = Example("dev-1-0-0", [image, image.copy()], "There is a red square.", True)
    batch = ExampleCollator(processor, get_template("nlvr2_short"))([ex.to_row()])
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"][0] == image_id).sum()) == 2 * tokens_per_image
    grid = batch["image_grid_thw"]  # [num_images, 3] in 14-px patches before the 2x2 merge
    assert grid.prod(-1).tolist() == [4 * tokens_per_image] * 2


def test_prompt_completion_collator_accepts_conversation_rows(processor):
    image = Image.new("RGB", (56, 56), (0, 0, 200))
    row = {
        "uid": "syn_x-0-0-0",
        "images": [image],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
    }
    batch = PromptCompletionCollator(processor)([row])
    kept = batch["labels"][0] != IGNORE_INDEX
    assert processor.tokenizer.decode(batch["input_ids"][0][kept]) == "blue<|im_end|>"


def test_labeled_images_template_names_each_image_before_it(processor):
    ex = next(generate("dev", 1, seed=3))
    row = to_conversation(ex, get_template("nlvr2_labeled_images"))
    content = row["prompt"][0]["content"]
    assert [c["type"] for c in content] == ["text", "image", "text", "image", "text"]
    assert [content[0]["text"], content[2]["text"]] == ["Left image:", "Right image:"]
    prompt = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    left, right = prompt.index("Left image:"), prompt.index("Right image:")
    vision = [i for i in range(len(prompt)) if prompt.startswith("<|vision_start|>", i)]
    assert len(vision) == 2 and left < vision[0] < right < vision[1] < prompt.index(ex.sentence)
    three = to_conversation(Example("u-0", [ex.images[0]] * 3, "s", True), get_template("nlvr2_labeled_images"))
    assert [c["text"] for c in three["prompt"][0]["content"][:-1] if c["type"] == "text"] == [
        "Image 1:",
        "Image 2:",
        "Image 3:",
    ]
