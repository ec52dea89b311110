"""Prompt templates fitted to the number of images: one image is "the image", three are "the 3 images", two keep
the text exactly; templates naming a left/right pair are refused for other counts, naming the example's uid."""

from __future__ import annotations

import pytest
from PIL import Image

from utils.errors import DataError
from vlm_datasets.example import Example
from vlm_datasets.prompts import INSTRUCTION_TEMPLATES, TEMPLATES, get_template, to_conversation


def _example(num_images: int, uid: str = "nlvr-1-0-0") -> Example:
    return Example(uid, [Image.new("RGB", (4, 4))] * num_images, "There is a cat.", True)


def _user_text(row: dict) -> str:
    return row["prompt"][0]["content"][-1]["text"]


def test_one_image_is_the_image():
    row = to_conversation(_example(1), get_template("nlvr2_true_false"))
    assert _user_text(row) == "There is a cat.\nIs the statement true or false about the image? Answer True or False."


def test_three_images_are_counted():
    text = get_template("multi_yes_no_describe").user_text("A dog.", 3)
    assert text == "Does this describe the 3 images: A dog.\nAnswer yes or no."


@pytest.mark.parametrize("name", sorted(TEMPLATES | INSTRUCTION_TEMPLATES))
def test_two_images_keep_the_text_byte_identical(name):
    template = get_template(name)
    sentence = "The two images show the two images."  # a sentence of its own is never rewritten
    assert template.user_text(sentence, 2) == template.text.replace("{sentence}", sentence)
    assert template.user_text(sentence) == template.user_text(sentence, 2)


def test_the_sentence_is_kept_as_written_for_one_image():
    text = get_template("nlvr2_true_false").user_text("In the two images there are dogs.", 1)
    assert text.startswith("In the two images there are dogs.\n") and "about the image?" in text


@pytest.mark.parametrize("name", ["multi_which_image", "multi_which_image_side", "multi_tf_statement"])
@pytest.mark.parametrize("num_images", [1, 3])
def test_left_right_templates_refused_naming_uid_count_and_alternative(name, num_images):
    with pytest.raises(DataError) as info:
        to_conversation(_example(num_images, uid="nlvr-7-0-1"), get_template(name))
    message = str(info.value)
    assert "nlvr-7-0-1" in message and repr(name) in message
    assert f"{num_images} image(s)" in message and "'nlvr2_short'" in message


def test_zero_images_refused_when_the_template_speaks_of_images():
    with pytest.raises(ValueError, match=r"'nlvr2_true_false' speaks of images .* 0 image"):
        get_template("nlvr2_true_false").user_text("s", 0)
    assert get_template("nlvr2_short").user_text("s", 0) == "s\nTrue or False?"


def test_templates_that_name_no_image_fit_any_count():
    template = get_template("nlvr2_short")
    assert {template.user_text("s", n) for n in (1, 2, 3)} == {"s\nTrue or False?"}
