"""Named prompt templates: a canonical example -> TRL's conversational prompt/completion row.

The template name and text are recorded with every run (training and evaluation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from utils.errors import DataError

if TYPE_CHECKING:
    from vlm_datasets.example import Example

_TWO_IMAGES = "the two images"  # the one phrase user_text adapts to the image count
_LEFT_RIGHT_WORDS = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_IMAGES = re.compile(r"\bimages?\b", re.IGNORECASE)
_LEFT_RIGHT = ("left", "right")  # the which-image answers
_ANY_COUNT = "nlvr2_short"  # a template that names no image, suggested when one cannot be adapted


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str  # the user turn's text; "{sentence}" marks the statement
    answers: tuple[str, str] = ("True", "False")  # (answer when label is True, answer when False)
    images_first: bool = True  # Qwen2-VL's usual layout; False puts the text before the images
    label_images: bool = False  # a text label before each image: "Left image:" / "Right image:" (see image_label)

    def user_text(self, sentence: str, num_images: int = 2) -> str:
        """The user turn's text for `num_images` images: "the two images" reads "the image" for one and "the N
        images" for three or more; two images give the text exactly as written. ValueError for a template that
        names a left/right pair (any count but 2) or speaks of images when there are none."""
        return self.text_for(num_images).replace("{sentence}", sentence)

    def text_for(self, num_images: int) -> str:
        """The template text (with "{sentence}" still in it) fitted to `num_images`; see user_text."""
        if num_images == 2:
            return self.text  # byte-identical: the embedded model and the demo were trained on it
        if num_images < 0:
            raise ValueError(f"prompt template {self.name!r}: image count {num_images} is negative")
        if num_images == 0 and _IMAGES.search(self.text):
            raise self._refusal(num_images, "speaks of images")
        if _LEFT_RIGHT_WORDS.search(self.text) or set(self.answers) == set(_LEFT_RIGHT):
            raise self._refusal(num_images, "names a left and a right image")
        return self.text.replace(_TWO_IMAGES, "the image" if num_images == 1 else f"the {num_images} images")

    def _refusal(self, num_images: int, why: str) -> ValueError:
        return ValueError(
            f"prompt template {self.name!r} {why} and cannot be rendered for {num_images} image(s); "
            f"use a template that fits any image count, e.g. {_ANY_COUNT!r}"
        )

    def answer(self, label: bool) -> str:
        return self.answers[0] if label else self.answers[1]


TEMPLATES = {
    t.name: t
    for t in (
        PromptTemplate(
            "nlvr2_true_false", "{sentence}\nIs the statement true or false about the two images? Answer True or False."
        ),
        PromptTemplate("nlvr2_short", "{sentence}\nTrue or False?"),
        PromptTemplate(
            "nlvr2_labeled_images",
            "{sentence}\nIs the statement true or false about the two images? Answer True or False.",
            label_images=True,
        ),
        PromptTemplate("true_or_false_first", "True or false: {sentence}"),
        PromptTemplate("statement_then_images", "Statement: {sentence}\nTrue or false?", images_first=False),
        PromptTemplate(
            "nlvr2_yes_no", "{sentence}\nIs the statement correct? Answer yes or no.", answers=("yes", "no")
        ),
    )
}


# Instruction-diverse training data (DataArguments.train_instructions: multi): paraphrased True/False and yes/no
# instructions and two more task formats, each with a bool label and its two answers in the template (which-image:
# True = the left image). Kept out of TEMPLATES: training/embedded.py trains the embedded tokenizer on TEMPLATES'
# texts, so a template added there would change the embedded base. get_template resolves both.
TASK_FORMATS = ("true_false", "yes_no", "which_image", "counting")
_YES_NO = ("yes", "no")
INSTRUCTION_FORMATS: dict[str, tuple[PromptTemplate, ...]] = {
    "true_false": (
        PromptTemplate(
            "multi_tf_decide",
            "Decide if the statement is true or false about the two images.\n{sentence}\nAnswer True or False.",
            label_images=True,
        ),
        PromptTemplate(
            "multi_tf_statement",
            "Statement: {sentence}\nIs it true or false about the left and right images? Answer True or False.",
            label_images=True,
        ),
        PromptTemplate("multi_tf_short", "{sentence}\nTrue or False?", label_images=True),
    ),
    "yes_no": (
        PromptTemplate(
            "multi_yes_no_correct",
            "{sentence}\nIs the statement correct about the two images? Answer yes or no.",
            answers=_YES_NO,
            label_images=True,
        ),
        PromptTemplate(
            "multi_yes_no_describe",
            "Does this describe the two images: {sentence}\nAnswer yes or no.",
            answers=_YES_NO,
            label_images=True,
        ),
    ),
    "which_image": (  # the sentence says that exactly one image holds something
        PromptTemplate(
            "multi_which_image",
            "{sentence}\nWhich image is it? Answer left or right.",
            answers=_LEFT_RIGHT,
            label_images=True,
        ),
        PromptTemplate(
            "multi_which_image_side",
            "{sentence}\nIs it the left image or the right image? Answer left or right.",
            answers=_LEFT_RIGHT,
            label_images=True,
        ),
    ),
    "counting": (  # the sentence states an exact count
        PromptTemplate(
            "multi_count_yes_no",
            "Count the objects in the image the statement names.\n{sentence}\nIs the count correct? Answer yes or no.",
            answers=_YES_NO,
            label_images=True,
        ),
        PromptTemplate(
            "multi_count_true_false",
            "{sentence}\nCount the objects, then answer True or False.",
            label_images=True,
        ),
    ),
}
INSTRUCTION_TEMPLATES = {t.name: t for group in INSTRUCTION_FORMATS.values() for t in group}


def get_template(name: str) -> PromptTemplate:
    if name in TEMPLATES:
        return TEMPLATES[name]
    if name in INSTRUCTION_TEMPLATES:
        return INSTRUCTION_TEMPLATES[name]
    raise ValueError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES | INSTRUCTION_TEMPLATES)}")


def instruction_pool(base: str, formats: tuple[str, ...] = TASK_FORMATS) -> dict[str, tuple[str, ...]]:
    """{task format: template names} drawn from for train_instructions=multi; the run's own template `base` joins the
    paraphrases of its format (yes_no when its answers are yes/no, else true_false)."""
    unknown = set(formats) - set(TASK_FORMATS)
    if unknown:
        raise ValueError(f"unknown task formats {sorted(unknown)}; known: {list(TASK_FORMATS)}")
    pool = {f: tuple(t.name for t in INSTRUCTION_FORMATS[f]) for f in formats}
    own = "yes_no" if get_template(base).answers == _YES_NO else "true_false"
    if own in pool and base not in pool[own]:
        pool[own] = (base, *pool[own])
    return pool


def example_template(example: Example, default: PromptTemplate) -> PromptTemplate:
    """The example's own template (meta["prompt_template"], set by train_instructions=multi), else `default`."""
    name = example.meta.get("prompt_template")
    return default if name is None else get_template(name)


def image_label(index: int, num_images: int) -> str:
    """NLVR2's names for a pair ("Left image:", "Right image:"), else "Image 1:", "Image 2:", ..."""
    if num_images == 2:
        return ("Left image:", "Right image:")[index]
    return f"Image {index + 1}:"


def user_message(num_images: int, text: str, images_first: bool = True, label_images: bool = False) -> dict[str, Any]:
    """The user turn: the images (each after its label when label_images) and the text, in the template's order."""
    images = []
    for i in range(num_images):
        if label_images:
            images.append({"type": "text", "text": image_label(i, num_images)})
        images.append({"type": "image"})
    words = [{"type": "text", "text": text}]
    return {"role": "user", "content": images + words if images_first else words + images}


def to_conversation(example: Example, template: PromptTemplate) -> dict[str, Any]:
    """{"uid", "images", "prompt": [user turn], "completion": [assistant turn]} (no completion when unlabeled).

    An example that names its own template (meta["prompt_template"]) is rendered with that one."""
    template = example_template(example, template)
    num_images = len(example.images)
    try:
        text = template.user_text(example.sentence, num_images)
    except ValueError as e:  # the template cannot speak of this many images: say which example has them
        raise DataError(f"uid {example.uid}", str(e)) from e
    row = {
        "uid": example.uid,
        "images": example.images,
        "prompt": [user_message(num_images, text, template.images_first, template.label_images)],
    }
    if example.label is not None:
        answer = template.answer(example.label)
        row["completion"] = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return row
