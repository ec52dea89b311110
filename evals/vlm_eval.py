"""Evaluation of a composed VLM: greedy answers to held-out rows scored by task (captions: BLEU-4, CIDEr, ROUGE-L
against every reference; questions: exact match), and language-only perplexity of its LM on held-out text (no
image), so a stage's effect on the LM's language is measured before and after it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.caption_metrics import caption_metrics, cider_scores, rouge_l_scores
from vlm_datasets.captions import to_chat

LM_EVAL_SOURCES = ("none", "answers", "stories", "file")


@dataclass
class VLMEvalArguments:
    vlm_eval_before: bool = field(default=True, metadata={"help": "Also evaluate the model before training."})
    vlm_eval_max_new_tokens: int = field(default=48, metadata={"help": "Greedy generation: new tokens per answer."})
    vlm_eval_batch_size: int = field(default=32, metadata={"help": "Rows per generation batch."})
    lm_eval_source: str = field(
        default="answers",
        metadata={
            "help": "Held-out text for the LM's perplexity: answers (the evaluation rows' answers, text only), "
            "stories (held-out synthetic stories, vlm_datasets/stories.py), file (lm_eval_path, one text a line).",
            "choices": list(LM_EVAL_SOURCES),
        },
    )
    lm_eval_path: str | None = field(default=None, metadata={"help": "lm_eval_source file: the text file."})
    lm_eval_max_docs: int = field(default=200, metadata={"help": "Held-out texts scored."})
    lm_eval_max_length: int = field(default=256, metadata={"help": "Tokens kept per held-out text."})

    def __post_init__(self):
        if self.lm_eval_source not in LM_EVAL_SOURCES:
            raise ValueError(f"lm_eval_source {self.lm_eval_source!r}: choose one of {list(LM_EVAL_SOURCES)}")
        if self.lm_eval_source == "file" and not self.lm_eval_path:
            raise ValueError("lm_eval_source file needs lm_eval_path")


def normalize(text: str) -> str:
    """Exact-match normalization: lowercase, punctuation and articles dropped, spaces collapsed."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


@torch.inference_mode()
def generate_answers(model, processor, rows: list[dict], max_new_tokens: int = 48, batch_size: int = 32) -> list[str]:
    """Greedy answers to each row's prompt (left padding, so every prompt ends where generation starts)."""
    model.eval()
    device = next(model.parameters()).device
    answers = []
    for start in range(0, len(rows), batch_size):
        chats = [to_chat(r) for r in rows[start : start + batch_size]]
        texts = [processor.apply_chat_template(c["prompt"], add_generation_prompt=True) for c in chats]
        batch = processor(
            images=[c["images"] for c in chats], text=texts, padding=True, padding_side="left", return_tensors="pt"
        ).to(device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, batch["input_ids"].shape[1] :]  # [B, new]
        answers += [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def score(rows: list[dict], predictions: list[str]) -> dict[str, dict]:
    """Per task: caption/chat rows -> caption metrics vs references; qa rows -> exact-match accuracy."""
    out: dict[str, dict] = {}
    for task in sorted({r["task"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["task"] == task]
        if task == "qa":
            hits = [normalize(predictions[i]) == normalize(rows[i]["answer"]) for i in idx]
            out[task] = {"accuracy": sum(hits) / len(hits), "n": len(idx)}
        else:
            metrics = caption_metrics([predictions[i] for i in idx], [rows[i]["references"] for i in idx])
            out[task] = {**metrics, "n": len(idx)}
    return out


def row_scores(records: list[dict]) -> list[dict[str, float]]:
    """Each row's own score from its task, prediction and references: qa -> {"exact_match": 0 or 1} (score()'s
    accuracy: a qa row's references are its answer); caption / chat -> {"cider", "rouge_l"}, CIDEr-D's document
    frequencies taken over the rows of the same task, so the mean is score()'s CIDEr. BLEU is corpus-level only."""
    out: list[dict[str, float]] = [{} for _ in records]
    for task in sorted({r["task"] for r in records}):
        idx = [i for i, r in enumerate(records) if r["task"] == task]
        preds, refs = [records[i]["prediction"] for i in idx], [records[i]["references"] for i in idx]
        if task == "qa":
            hits = [any(normalize(p) == normalize(r) for r in rs) for p, rs in zip(preds, refs, strict=True)]
            scores = [{"exact_match": float(h)} for h in hits]
        else:
            pairs = zip(cider_scores(preds, refs), rouge_l_scores(preds, refs), strict=True)
            scores = [{"cider": c, "rouge_l": r} for c, r in pairs]
        for i, s in zip(idx, scores, strict=True):
            out[i] = s
    return out


def constant_baseline(train_answers: list[str], rows: list[dict]) -> dict[str, dict]:
    """Scores of answering every row with the most common training answer of its task (a blind model's floor)."""
    by_task: dict[str, Counter] = {}
    for task, answer in train_answers:
        by_task.setdefault(task, Counter())[answer] += 1
    guesses = [by_task.get(r["task"], Counter({"": 1})).most_common(1)[0][0] for r in rows]
    return score(rows, guesses)


@torch.inference_mode()
def lm_perplexity(model, tokenizer, texts: list[str], max_length: int = 256, batch_size: int = 16) -> dict[str, float]:
    """exp(mean token NLL) of the composite's LM on `texts` (eos appended, no image); {"perplexity", "tokens"}."""
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        chunk = [t + tokenizer.eos_token for t in texts[start : start + batch_size]]
        batch = tokenizer(
            chunk,
            return_tensors="pt",
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=max_length,
            add_special_tokens=False,
        ).to(device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, T, V]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = batch["input_ids"][:, 1:]
        keep = batch["attention_mask"][:, 1:].bool()
        token_nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
        nll += float(token_nll[keep].sum())
        count += int(keep.sum())
    return {"perplexity": math.exp(nll / max(count, 1)), "tokens": count}


def held_out_texts(args: VLMEvalArguments, rows: list[dict], seed: int = 0) -> list[str]:
    if args.lm_eval_source == "answers":
        texts = [r["answer"] for r in rows]
    elif args.lm_eval_source == "stories":
        from vlm_datasets.stories import generate_stories

        texts = generate_stories(args.lm_eval_max_docs, seed, "validation")
    elif args.lm_eval_source == "file":
        texts = [line for line in Path(args.lm_eval_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        return []
    return texts[: args.lm_eval_max_docs]


def evaluate(model, processor, rows: list[dict], args: VLMEvalArguments, texts: list[str]) -> tuple[dict, list[str]]:
    """(metrics {"tasks": ..., "lm": ...}, predictions) of the model on the evaluation rows and held-out texts."""
    predictions = generate_answers(model, processor, rows, args.vlm_eval_max_new_tokens, args.vlm_eval_batch_size)
    metrics = {"tasks": score(rows, predictions)}
    if texts:
        metrics["lm"] = lm_perplexity(model, processor.tokenizer, texts, args.lm_eval_max_length)
    return metrics, predictions
