"""Pretraining of a GPT-2 language model from scratch on stories (TinyStories, local text or synthetic stories), with
language-only evaluation: held-out perplexity beside a unigram baseline, and continuations of fixed story openings.
The saved model (safetensors + config + tokenizer) loads with AutoModelForCausalLM / AutoTokenizer.

# GPT-2 124M on roneneldan/TinyStories, streamed (one GPU; several: accelerate launch --num_processes 4 ...)
accelerate launch training/pretrain_lm.py --config training/configs/gpt2_124m_tinystories.yaml

# Embedded default: a small GPT-2 on synthetic stories with a locally trained tokenizer, 2-core CPU, no network
python training/pretrain_lm.py --config training/configs/gpt2_embedded.yaml

# Local text instead (one story per line; blank-line-separated stories: --text_sample_by paragraph)
python training/pretrain_lm.py --config training/configs/gpt2_embedded.yaml --dataset_source text \
    --dataset_path stories.txt --output_dir artifacts/checkpoints/gpt2-local

# Any field can be overridden, e.g. a shorter run; resume from the newest checkpoint of output_dir (or a path)
python training/pretrain_lm.py --config training/configs/gpt2_embedded.yaml --max_steps 200
python training/pretrain_lm.py --config training/configs/gpt2_embedded.yaml --resume_from_checkpoint true

tensorboard --logdir artifacts/checkpoints   # loss, lr, eval perplexity vs unigram, continuations (Text tab)
"""

from __future__ import annotations

# First: transformers imports bitsandbytes, which logs a `kernels` notice while imported (utils/cli.py drops it)
from utils.cli import entry_point, parse_args  # isort: split

import dataclasses
import logging
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.integrations import TensorBoardCallback
from trl import TrlParser

from evals.language import (
    ContinuationsCallback,
    LanguageMetrics,
    LMEvalArguments,
    argmax_logits,
    scored_tokens,
    unigram_counts,
    unigram_perplexity,
)
from training.callbacks import resume_checkpoint
from training.gpt2 import LMModelArguments, build_model, load_tokenizer
from training.packing import tokenize_and_pack
from utils.atomic_write import write_json_atomic
from utils.run_record import config_dict, token_to_environment, write_run_record
from vlm_datasets.text import TextDataArguments, load_texts, text_manifest

logger = logging.getLogger(__name__)


def _resume_arg(value):
    """resume_from_checkpoint from the CLI / YAML (a string): true/last -> the newest checkpoint-N in output_dir,
    false/none/empty -> no resume, anything else -> that checkpoint folder."""
    word = value.lower() if isinstance(value, str) else None
    if word in ("true", "last"):
        return True
    if word in ("false", "none"):
        return None
    return value or None


def main(
    data_args: TextDataArguments,
    model_args: LMModelArguments,
    eval_args: LMEvalArguments,
    training_args: TrainingArguments,
) -> Trainer:
    """Pretrain, evaluate and save; returns the Trainer. torch's thread count is set for the run and restored."""
    threads = torch.get_num_threads()
    if model_args.torch_num_threads:
        torch.set_num_threads(model_args.torch_num_threads)
    try:
        return _pretrain(data_args, model_args, eval_args, training_args)
    finally:
        torch.set_num_threads(threads)


def run_config(data_args, model_args, eval_args, training_args) -> dict:
    """The resolved config as run_record.json holds it: {dataclass name: {field: value}}. config_dict drops keys
    matching "token" (tokenizer_*, eval_max_new_tokens): ours hold no credentials, so they are recorded whole;
    TrainingArguments (hub_token) goes through the filter."""
    return {
        **{type(a).__name__: dataclasses.asdict(a) for a in (data_args, model_args, eval_args)},
        **config_dict(training_args),
    }


@dataclasses.dataclass
class _Data:
    """The run's text (training and held out), its tokenizer (and where that came from) and the packed blocks."""

    train_text: datasets.Dataset | datasets.IterableDataset
    held_out_text: datasets.Dataset
    tokenizer: PreTrainedTokenizerBase
    tokenizer_how: str
    train_blocks: datasets.Dataset | datasets.IterableDataset
    eval_blocks: datasets.Dataset

    @property
    def streaming(self) -> bool:
        return isinstance(self.train_blocks, datasets.IterableDataset)


def _load_data(data_args, model_args, training_args, resume) -> _Data:
    """Text, tokenizer and blocks: the main process goes first (and saves a trained tokenizer), the others reuse its
    work; a resumed run reuses the tokenizer saved with it."""
    out, is_main = Path(training_args.output_dir), training_args.process_index == 0
    with training_args.main_process_first(desc="text and tokenizer"):
        train_text, held_out_text = load_texts(data_args)
        if (resume or not is_main) and (out / "tokenizer.json").exists():
            tokenizer, tokenizer_how = AutoTokenizer.from_pretrained(out), f"saved with the run ({out})"
        else:
            tokenizer, tokenizer_how = load_tokenizer(model_args, (row["text"] for row in train_text))
            if is_main:
                tokenizer.save_pretrained(out)
        train_blocks = tokenize_and_pack(train_text, tokenizer, data_args.block_size, data_args.packing_batch_size)
        eval_blocks = tokenize_and_pack(held_out_text, tokenizer, data_args.block_size, data_args.packing_batch_size)
    return _Data(train_text, held_out_text, tokenizer, tokenizer_how, train_blocks, eval_blocks)


def _check_blocks(data: _Data, data_args, training_args) -> None:
    """A stream needs max_steps; the held-out text must fill at least one block."""
    if data.streaming and training_args.max_steps <= 0:
        raise ValueError("a streamed training set has no length: set max_steps")
    if len(data.eval_blocks) == 0:
        raise ValueError(
            f"the held-out text ({len(data.held_out_text)} documents, {data_args.dataset_source} source) packs into "
            f"no block of block_size={data_args.block_size} tokens: raise max_eval_docs (now "
            f"{data_args.max_eval_docs}), lower block_size, or give more held-out text (dataset_eval_path)"
        )


def _unigram_baseline(data: _Data, cap: int) -> tuple[float, dict]:
    """Perplexity of an add-one-smoothed unigram of (the first `cap` blocks of) the training tokens, on the tokens
    the model is scored on; and the block and token counts the run record and summary report."""
    eval_ids = np.asarray(data.eval_blocks.with_format("numpy")["input_ids"])  # [N, T]
    if data.streaming:
        train_ids = (b["input_ids"] for b in data.train_blocks)  # reads the first `cap` blocks of the stream
    else:
        first = data.train_blocks.select(range(min(cap, len(data.train_blocks))))
        train_ids = np.asarray(first.with_format("numpy")["input_ids"])
    counts = unigram_counts(train_ids, len(data.tokenizer), cap)
    unigram_ppl = unigram_perplexity(counts, scored_tokens(eval_ids))
    logger.info("unigram baseline perplexity %.2f (%d training tokens)", unigram_ppl, counts.sum())
    return unigram_ppl, {
        "train_blocks": None if data.streaming else len(data.train_blocks),
        "eval_blocks": len(data.eval_blocks),
        "eval_scored_tokens": int(eval_ids[:, 1:].size),
        "unigram_train_tokens": int(counts.sum()),
    }


def _make_trainer(data: _Data, model_args, eval_args, training_args, unigram_ppl: float) -> Trainer:
    """A fresh model's Trainer on the packed blocks, scored against the unigram baseline, writing continuations."""
    # The summary reports tokens seen and perplexity from the eval loop's losses: both need these.
    training_args.include_num_input_tokens_seen = "all"
    training_args.include_for_metrics = ["loss"]
    trainer = Trainer(
        model=build_model(model_args, data.tokenizer),
        args=training_args,
        train_dataset=data.train_blocks,
        eval_dataset=data.eval_blocks,
        data_collator=default_data_collator,  # equal-length blocks with labels: nothing to pad or mask
        processing_class=data.tokenizer,
        compute_metrics=LanguageMetrics(unigram_ppl),
        preprocess_logits_for_metrics=argmax_logits,
    )
    tensorboard = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)), None)
    trainer.add_callback(
        ContinuationsCallback(
            data.tokenizer,
            eval_args.prompts(),
            Path(training_args.output_dir) / "continuations.jsonl",
            tensorboard=tensorboard,
            max_new_tokens=eval_args.eval_max_new_tokens,
            do_sample=eval_args.eval_do_sample,
            temperature=eval_args.eval_temperature,
            top_k=eval_args.eval_top_k,
        )
    )
    return trainer


def _train_and_evaluate(trainer: Trainer, resume, is_main: bool) -> dict:
    """Train (resumed when asked) and return the final evaluation's metrics."""
    # true/last -> the newest *complete* checkpoint-N (a half-written one is set aside), not transformers' newest
    trainer.train(resume_from_checkpoint=resume_checkpoint(resume, trainer.args.output_dir, is_main))
    # The Trainer evaluates at the last step when eval_strategy is "steps"; otherwise (or when resuming a finished
    # run) evaluate now.
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    return evals[-1] if evals and evals[-1]["step"] == trainer.state.global_step else trainer.evaluate()


def _write_summary(trainer: Trainer, final: dict, data: _Data, data_args, unigram_ppl, manifest, data_stats, start):
    """summary.json: the final evaluation beside the unigram baseline, the run's length, size, tokenizer and data."""
    summary = {
        "val_loss": final["eval_loss"],
        "val_perplexity": final["eval_perplexity"],
        "val_next_token_accuracy": final["eval_next_token_accuracy"],
        "unigram_perplexity": unigram_ppl,
        "perplexity_ratio": final["eval_perplexity"] / unigram_ppl,
        "steps": trainer.state.global_step,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "wall_seconds": round(time.time() - start, 1),  # this invocation: data, tokenizer, training, evals
        "parameters": trainer.model.num_parameters(),
        "tokenizer": data.tokenizer_how,
        "vocab_size": len(data.tokenizer),
        "block_size": data_args.block_size,
        "dataset": manifest,
        **data_stats,
    }
    write_json_atomic(Path(trainer.args.output_dir) / "summary.json", summary)
    logger.info("summary: %s", {k: v for k, v in summary.items() if not isinstance(v, dict)})


def _pretrain(data_args, model_args, eval_args, training_args) -> Trainer:
    """The run's phases: text, tokenizer and blocks; the unigram baseline; the Trainer and run_record.json;
    training and the final evaluation; the saved model and summary.json."""
    start = time.time()
    set_seed(training_args.seed)
    out = Path(training_args.output_dir)
    token_to_environment(training_args)  # a --hub_token is never pickled into training_args.bin
    resume = _resume_arg(training_args.resume_from_checkpoint)
    is_main = training_args.process_index == 0
    if data_args.block_size > model_args.n_positions:
        raise ValueError(f"block_size {data_args.block_size} > n_positions {model_args.n_positions}")

    data = _load_data(data_args, model_args, training_args, resume)
    _check_blocks(data, data_args, training_args)
    unigram_ppl, data_stats = _unigram_baseline(data, eval_args.unigram_max_train_blocks)
    trainer = _make_trainer(data, model_args, eval_args, training_args, unigram_ppl)
    manifest = text_manifest(data_args, data.train_text, data.held_out_text)
    if is_main:  # what the run reads (data, tokenizer, prompts) beside its resolved config
        config, prompts = run_config(data_args, model_args, eval_args, training_args), eval_args.prompts()
        dataset, tokenizer = {**manifest, **data_stats}, data.tokenizer_how
        write_run_record(out, "pretrain_lm", training_args.seed, config, dataset=dataset, tokenizer=tokenizer,
                         eval_prompts=prompts)  # fmt: skip

    final = _train_and_evaluate(trainer, resume, is_main)
    trainer.save_model(str(out))  # safetensors + config + generation config + tokenizer (processing_class)
    if is_main:
        _write_summary(trainer, final, data, data_args, unigram_ppl, manifest, data_stats, start)
    return trainer


def make_parser() -> TrlParser:
    return TrlParser((TextDataArguments, LMModelArguments, LMEvalArguments, TrainingArguments))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        trainer = main(*parse_args(make_parser()))
    if trainer.is_world_process_zero():
        print(Path(trainer.args.output_dir) / "summary.json")
