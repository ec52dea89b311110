"""Scoring NLVR2-style examples with a VLM: answer likelihood (default) or generation + answer parser."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import BatchFeature

from training.collators import render
from vlm_datasets.example import Example
from vlm_datasets.labels import parse_answer
from vlm_datasets.prompts import PromptTemplate, to_conversation


@dataclass
class Scored:
    uid: str
    p_true: float | None  # likelihood scoring: P(true answer) renormalized over the two answers
    prediction: bool | None  # None: the generated text did not parse
    raw: str | None = None  # generated text (generation scoring only)


@dataclass(frozen=True)
class AnswerTokens:
    prefix: str  # what both answers start with after the assistant header (" " after a plain "ASSISTANT:")
    true_id: int  # the first token where the two answers differ
    false_id: int


def answer_tokens(processor, template: PromptTemplate) -> AnswerTokens:
    """The answers as training tokenizes them: rendered by the chat template after the assistant header, tokenized
    with the prompt. Likelihood scoring appends their common prefix to the prompt and compares the first tokens where
    they differ, so one forward pass over the prompt scores both."""
    tokenizer = getattr(processor, "tokenizer", processor)
    heads, answers = [], []
    for answer in template.answers:
        row = {
            "prompt": [{"role": "user", "content": [{"type": "text", "text": "?"}]}],
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        }
        prompt, completion = render(processor, row)
        head = tokenizer(prompt, add_special_tokens=False).input_ids
        full = tokenizer(prompt + completion, add_special_tokens=False).input_ids
        if full[: len(head)] != head:
            raise ValueError(f"answer {answer!r}: the chat template's prompt and answer do not tokenize apart")
        heads.append((prompt, head))
        answers.append(full[len(head) :])
    a, b = answers
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if n is None:
        raise ValueError(f"answers {template.answers}: one tokenizes as the start of the other; likelihood scoring "
                         "needs them to differ in a token")  # fmt: skip
    prefix = tokenizer.decode(a[:n])
    prompt, head = heads[0]
    if tokenizer(prompt + prefix, add_special_tokens=False).input_ids != head + a[:n]:
        raise ValueError(f"answers {template.answers}: their common start {prefix!r} tokenizes differently alone")
    return AnswerTokens(prefix, a[n], b[n])


def prompts(processor, examples: list[Example], template: PromptTemplate, scoring: str) -> BatchFeature:
    """The model inputs of a batch (chat template + image processor, left padded); for likelihood scoring the
    prompts end with the answers' common start."""
    suffix = answer_tokens(processor, template).prefix if scoring == "likelihood" else ""
    return _prompt_batch(processor, examples, template, suffix)


def _prompt_batch(processor, examples: list[Example], template: PromptTemplate, suffix: str) -> BatchFeature:
    texts = [render(processor, {"prompt": to_conversation(ex, template)["prompt"]})[0] + suffix for ex in examples]
    return processor(
        images=[ex.images for ex in examples],
        text=texts,
        padding=True,
        padding_side="left",  # the last position is the next-token position for every row
        return_tensors="pt",
        add_special_tokens=False,
    )


@torch.inference_mode()
def score_likelihood(
    model, processor, examples: list[Example], template: PromptTemplate, inputs: BatchFeature | None = None
) -> list[Scored]:
    """One forward pass per batch; p_true = softmax over the logits of the two answers' first differing tokens at
    the last position (after their common prefix, if any)."""
    answer = answer_tokens(processor, template)
    if inputs is None:
        inputs = _prompt_batch(processor, examples, template, answer.prefix)
    batch = inputs.to(model.device)
    logits = model(**batch, logits_to_keep=1).logits[:, -1]  # [B, V]
    pair = torch.stack([logits[:, answer.true_id], logits[:, answer.false_id]], dim=-1).float()  # [B, 2]
    p_true = pair.softmax(-1)[:, 0].tolist()
    return [Scored(ex.uid, p, p >= 0.5) for ex, p in zip(examples, p_true, strict=True)]


@torch.inference_mode()
def score_generate(
    model,
    processor,
    examples: list[Example],
    template: PromptTemplate,
    max_new_tokens: int = 8,
    inputs: BatchFeature | None = None,
) -> list[Scored]:
    """Greedy generation with left padding, then `parse_answer`; unparseable answers get prediction None."""
    batch = (inputs if inputs is not None else prompts(processor, examples, template, "generate")).to(model.device)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    texts = processor.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    results = []
    for ex, text in zip(examples, texts, strict=True):
        parsed = _parse_with_template(text, template)
        results.append(Scored(ex.uid, None, parsed, raw=text))
    return results


def _parse_with_template(text: str, template: PromptTemplate) -> bool | None:
    t = text.strip().lower()
    true_a, false_a = (a.lower() for a in template.answers)
    if t.startswith(true_a) and not t.startswith(false_a):
        return True
    if t.startswith(false_a):
        return False
    return parse_answer(text)


def batches_by_length(examples: list[Example], batch_size: int) -> Iterator[list[Example]]:
    """Batches of similar sentence length (less padding); order within the run is restored by uid."""
    order = sorted(
        range(len(examples)),
        key=lambda i: (len(examples[i].sentence), sum(im.size[0] * im.size[1] for im in examples[i].images)),
    )
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start : start + batch_size]]


def likelihood_accuracy(
    model, processor, examples: list[Example], template: PromptTemplate, batch_size: int = 8
) -> dict[str, float]:
    """NLVR2 accuracy by answer likelihood over labelled `examples`, and the mean probability the model gives the
    right answer (p_label: moves before the accuracy does)."""
    right, p_label = 0, 0.0
    for batch in batches_by_length(examples, batch_size):
        for ex, scored in zip(batch, score_likelihood(model, processor, batch, template), strict=True):
            right += scored.prediction == ex.label
            p_label += scored.p_true if ex.label else 1.0 - scored.p_true
    return {"accuracy": right / len(examples), "p_label": p_label / len(examples)}
