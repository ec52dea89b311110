"""Prompt/completion collator for VLM SFT: chat template -> processor -> labels on the answer only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from training.vision_cache import KEYS_FIELD, ImageKeys, image_keys
from utils.errors import DataError
from vlm_datasets.captions import to_chat
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
        try:
            batch = self.processor(
                images=[row["images"] for row in rows],
                text=texts,
                padding=True,
                padding_side="right",
                return_tensors="pt",
                add_special_tokens=False,
            )
        except (ValueError, TypeError) as e:  # e.g. Qwen2-VL's aspect-ratio limit, raised naming no example
            raise self._culprit(rows, e) from e
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

    def _culprit(self, rows: list[dict[str, Any]], error: Exception) -> DataError:
        """The first row whose images the image processor refuses alone, else the whole batch, as a DataError."""
        for row in rows:
            try:
                self.processor.image_processor(images=row["images"], return_tensors="pt")
            except (ValueError, TypeError) as e:
                return DataError(f"uid {row.get('uid', '?')}", f"the image processor refuses its images ({e})")
        uids = ", ".join(str(row.get("uid", "?")) for row in rows)
        return DataError(f"batch of uids {uids}", f"the processor failed ({error})")


class ExampleCollator:
    """Canonical example rows (uid, images, sentence, label, meta) -> template -> `PromptCompletionCollator`; with
    `vision_cache_keys` (set by training.vision_cache) also one key per image under `KEYS_FIELD`."""

    def __init__(self, processor, template, max_length: int | None = None):
        self.template = template
        self.inner = PromptCompletionCollator(processor, max_length=max_length)
        self.vision_cache_keys = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        examples = [row_to_example(row) for row in rows]
        for example in examples:
            if example.label is None:
                raise DataError(f"uid {example.uid}", "unlabeled example in a training batch")
        batch = self.inner([to_conversation(example, self.template) for example in examples])
        if self.vision_cache_keys:
            uids, counts = [e.uid for e in examples], [len(e.images) for e in examples]
            ip = self.inner.processor.image_processor
            batch[KEYS_FIELD] = ImageKeys(tuple(image_keys(uids, counts, ip, batch.get("image_grid_thw"))))
        return batch


class CaptionCollator:
    """Caption/instruction rows (vlm_datasets/captions.py) -> chat (image first in the first user turn) ->
    `PromptCompletionCollator`: loss on the answer only."""

    def __init__(self, processor, max_length: int | None = None):
        self.inner = PromptCompletionCollator(processor, max_length=max_length)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.inner([to_chat(row) for row in rows])
