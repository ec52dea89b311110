"""Language-only evaluation of a causal LM: held-out loss and perplexity beside a unigram baseline, next-token
accuracy, and continuations of fixed story openings (JSONL + TensorBoard text) so runs can be compared by reading.

Plugged into transformers' Trainer: `LanguageMetrics` is its compute_metrics (the eval loop's per-example losses,
`include_for_metrics=["loss"]`), `argmax_logits` its preprocess_logits_for_metrics, `ContinuationsCallback` a callback.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import EvalPrediction, TrainerCallback

logger = logging.getLogger(__name__)

# Story openings in TinyStories' register; the synthetic stories use the same names and places.
PROMPTS = (
    "Once upon a time, there was a little girl named Lily.",
    "One day, Tom went to the park with his dog.",
    "Mia had a red ball. She",
    "It was a rainy day, and Ben could not go outside.",
    '"Can I play too?" asked Sam.',
    "Once upon a time, a little bunny was lost in the forest.",
    "Anna and her mom went to the beach.",
    "Max was afraid of the dark.",
)


@dataclass
class LMEvalArguments:
    eval_prompts_file: str | None = field(
        default=None, metadata={"help": "Story openings to continue, one per line; default: evals.language.PROMPTS."}
    )
    eval_max_new_tokens: int = field(default=64, metadata={"help": "Continuations: new tokens per prompt."})
    eval_do_sample: bool = field(default=False, metadata={"help": "Continuations: sample (seeded) instead of greedy."})
    eval_temperature: float = field(default=0.8, metadata={"help": "Continuations: sampling temperature."})
    eval_top_k: int = field(default=50, metadata={"help": "Continuations: sampling top-k."})
    unigram_max_train_blocks: int = field(
        default=100_000, metadata={"help": "Unigram baseline: training blocks counted (all of them when fewer)."}
    )

    def prompts(self) -> list[str]:
        if not self.eval_prompts_file:
            return list(PROMPTS)
        lines = Path(self.eval_prompts_file).read_text(encoding="utf-8").splitlines()
        return [line for line in lines if line.strip()]


# ---- perplexity and the unigram baseline --------------------------------------------------------------------------


def scored_tokens(blocks: np.ndarray) -> np.ndarray:
    """The tokens a causal LM predicts in [N, T] blocks: positions 1..T-1 of each (position 0 has no context)."""
    return np.asarray(blocks)[:, 1:].reshape(-1)


def unigram_counts(blocks: Iterable[Sequence[int]], vocab_size: int, max_blocks: int | None = None) -> np.ndarray:
    """[V] token counts over (the first max_blocks of) the training blocks."""
    if isinstance(blocks, np.ndarray):  # [N, T]: all at once
        return np.bincount(blocks[:max_blocks].reshape(-1), minlength=vocab_size).astype(np.int64)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i, block in enumerate(blocks):
        if max_blocks is not None and i >= max_blocks:
            break
        counts += np.bincount(np.asarray(block), minlength=vocab_size)
    return counts


def unigram_perplexity(counts: np.ndarray, tokens: np.ndarray) -> float:
    """Perplexity of the add-one-smoothed unigram model p(w) = (c(w) + 1) / (N + V) on `tokens`."""
    probs = (counts + 1) / (counts.sum() + len(counts))
    return float(np.exp(-np.log(probs[np.asarray(tokens)]).mean()))


def argmax_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """preprocess_logits_for_metrics: keep [B, T] predicted ids, not [B, T, V] logits, in the eval loop."""
    return logits.argmax(dim=-1)


class LanguageMetrics:
    """compute_metrics: perplexity = exp(mean held-out token loss), next-token accuracy, the unigram baseline."""

    def __init__(self, unigram_ppl: float | None = None):
        self.unigram_ppl = unigram_ppl

    def __call__(self, pred: EvalPrediction) -> dict[str, float]:
        if pred.losses is None:
            raise ValueError(
                "LanguageMetrics needs the eval losses: set TrainingArguments.include_for_metrics=['loss']"
            )
        # The eval loop repeats each batch's mean token loss once per example; every block has the same number of
        # scored tokens (T - 1), so this mean is the mean over held-out tokens.
        loss = float(np.mean(pred.losses))
        preds, labels = np.asarray(pred.predictions), np.asarray(pred.label_ids)  # [N, T] each
        target, guess = labels[:, 1:], preds[:, :-1]  # logits at t predict token t + 1
        keep = target != -100
        out = {"perplexity": math.exp(loss), "next_token_accuracy": float((guess == target)[keep].mean())}
        if self.unigram_ppl is not None:
            out["unigram_perplexity"] = self.unigram_ppl
            out["perplexity_ratio"] = out["perplexity"] / self.unigram_ppl
        return out


# ---- continuations ------------------------------------------------------------------------------------------------


@torch.inference_mode()
def continuations(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
) -> list[dict]:
    """Continue every prompt (after `<|endoftext|>`, where each training story starts) in one left-padded batch;
    greedy unless do_sample (seeded). Each continuation stops at eos."""
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    ids = [[eos, *tokenizer(p, add_special_tokens=False)["input_ids"]] for p in prompts]
    limit = getattr(model.config, "max_position_embeddings", None)  # GPT-2: n_positions
    if limit:  # stay inside the position table: keep each prompt's end, shorten the continuation
        ids = [x[-(limit - 1) :] for x in ids]
        max_new_tokens = min(max_new_tokens, limit - max(map(len, ids)))
    width = max(map(len, ids))
    # Left padding (GPT-2 has no pad token: eos, masked out); generate derives positions from the mask.
    input_ids = torch.tensor([[eos] * (width - len(x)) + x for x in ids], device=model.device)  # [P, W]
    attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=model.device)
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # seeded sampling must not move the training RNG
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_k=top_k if do_sample else None,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    model.train(was_training)
    rows = []
    for i, prompt in enumerate(prompts):
        new = out[i, width:].tolist()  # [<= max_new_tokens]
        if eos in new:
            new = new[: new.index(eos)]
        rows.append({"prompt_id": i, "prompt": prompt, "continuation": tokenizer.decode(new)})
    return rows


def continuations_markdown(rows: Sequence[dict]) -> str:
    return "\n\n".join(f"**{r['prompt_id']}. {r['prompt']}**{r['continuation']}" for r in rows)


class ContinuationsCallback(TrainerCallback):
    """After every evaluation: continue the prompts on the main process, append them to a JSONL file (one row per
    prompt, with the step) and to TensorBoard text (the TensorBoardCallback's writer, so one event folder per run)."""

    def __init__(self, tokenizer, prompts: Sequence[str], path: str | Path, tensorboard=None, **generation):
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.path = Path(path)
        self.tensorboard = tensorboard
        self.generation = generation

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        if args.fsdp or args.deepspeed:  # sharded weights: generating on one process alone would hang
            logger.warning("continuations skipped: the model is sharded (FSDP/DeepSpeed)")
            return
        rows = continuations(model, self.tokenizer, self.prompts, seed=args.seed, **self.generation)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"step": state.global_step, **row}, ensure_ascii=False) + "\n")
        writer = getattr(self.tensorboard, "tb_writer", None)
        if writer is not None:
            writer.add_text("eval/continuations", continuations_markdown(rows), state.global_step)
            writer.flush()
