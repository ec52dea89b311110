"""Named prompt templates: a canonical example -> TRL's conversational prompt/completion row.

The template name and text are recorded with every run (training and evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlm_datasets.example import Example


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str  # the user turn's text; "{sentence}" marks the statement
    answers: tuple[str, str] = ("True", "False")  # (answer when label is True, answer when False)
    images_first: bool = True  # Qwen2-VL's usual layout; False puts the text before the images
    label_images: bool = False  # a text label before each image: "Left image:" / "Right image:" (see image_label)

    def user_text(self, sentence: str) -> str:
        return self.text.replace("{sentence}", sentence)

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


def get_template(name: str) -> PromptTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


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
    """{"uid", "images", "prompt": [user turn], "completion": [assistant turn]} (no completion when unlabeled)."""
    row = {
        "uid": example.uid,
        "images": example.images,
        "prompt": [
            user_message(
                len(example.images), template.user_text(example.sentence), template.images_first, template.label_images
            )
        ],
    }
    if example.label is not None:
        answer = template.answer(example.label)
        row["completion"] = [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return row
