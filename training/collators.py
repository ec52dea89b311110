"""Prompt/completion collator for VLM SFT: chat template -> processor -> labels on the answer only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vlm_datasets.errors import DataError
from vlm_datasets.example import row_to_example
from vlm_datasets.prompts import to_conversation

IGNORE_INDEX = -100


def render(processor, row: dict[str, Any]) -> tuple[str, str]:
    """(prompt text ending with the assistant header, completion text ending with the end-of-turn token)."""
    prompt = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    if "completion" not in row:
        return prompt, ""
    full = processor.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("chat template renders the prompt differently with and without the completion")
    completion = full[len(prompt) :]
    eos = processor.tokenizer.eos_token
    # The newline after <|im_end|> separates turns; the model never predicts it, so it stays out of the loss.
    return prompt, completion[: completion.rindex(eos) + len(eos)]


@dataclass
class PromptCompletionCollator:
    """Batches {"uid", "images", "prompt", "completion"} rows; labels are -100 except completion tokens.

    Masked: system/user turns, image tokens, the assistant header and right padding. Never truncates: a row longer
    than `max_length` raises, naming its uid (a cut inside image tokens breaks Qwen2-VL).
    """

    processor: Any
    max_length: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rendered = [render(self.processor, row) for row in rows]
        texts = [p + c for p, c in rendered]
        batch = self.processor(
            images=[row["images"] for row in rows],
            text=texts,
            padding=True,
            padding_side="right",
            return_tensors="pt",
            add_special_tokens=False,
        )
        lengths = batch["attention_mask"].sum(dim=1)  # [B]
        if self.max_length is not None and int(lengths.max()) > self.max_length:
            i = int(lengths.argmax())
            raise DataError(
                f"uid {rows[i].get('uid', '?')}",
                f"{int(lengths[i])} tokens (images expanded) exceed max_length={self.max_length}; raise max_length "
                "or lower max_pixels instead of cutting inside image tokens",
            )
        tok = self.processor.tokenizer
        n_completion = [len(tok(c, add_special_tokens=False).input_ids) for _, c in rendered]
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)  # [B, T]
        for i, (end, n) in enumerate(zip(lengths.tolist(), n_completion, strict=True)):
            labels[i, end - n : end] = batch["input_ids"][i, end - n : end]
        batch["labels"] = labels
        return batch


class ExampleCollator:
    """Canonical example rows (uid, images, sentence, label, meta) -> template -> `PromptCompletionCollator`."""

    def __init__(self, processor, template, max_length: int | None = None):
        self.template = template
        self.inner = PromptCompletionCollator(processor, max_length=max_length)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        conversations = []
        for row in rows:
            example = row_to_example(row)
            if example.label is None:
                raise DataError(f"uid {example.uid}", "unlabeled example in a training batch")
            conversations.append(to_conversation(example, self.template))
        return self.inner(conversations)
