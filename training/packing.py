"""Sequence packing for causal-LM pretraining: tokenize documents, join them with eos, cut into equal blocks.

GPT-2's recipe (and transformers' run_clm.py): every document is followed by the eos token (`<|endoftext|>`), the
token stream is cut into blocks of exactly block_size, labels = input_ids (the model shifts them), and attention
runs across document boundaries inside a block. One `datasets.map(batched=True)` call packs `batch_size` documents
at a time; the last (< block_size) tokens of each such batch are dropped, so at most block_size - 1 tokens per
batch_size documents are lost (~0.1% with 1000 stories and block 128).
"""

from __future__ import annotations

from itertools import chain

import datasets


def pack_documents(ids: list[list[int]], eos_token_id: int, block_size: int) -> list[list[int]]:
    """Token lists -> blocks of exactly block_size: doc0 eos doc1 eos ..., tail remainder dropped."""
    stream = list(chain.from_iterable(doc + [eos_token_id] for doc in ids))
    usable = len(stream) - len(stream) % block_size
    return [stream[i : i + block_size] for i in range(0, usable, block_size)]


def tokenize_and_pack(
    ds: datasets.Dataset | datasets.IterableDataset,
    tokenizer,
    block_size: int,
    batch_size: int = 1000,
    text_field: str = "text",
) -> datasets.Dataset | datasets.IterableDataset:
    """Rows of {text} -> rows of {input_ids, labels}, each exactly block_size tokens (lazily for a stream)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: packing needs one between documents")
    columns = ds.column_names or list(next(iter(ds)).keys())  # a stream may not know its columns: peek

    def pack(batch: dict[str, list]) -> dict[str, list]:
        # verbose=False: documents longer than the model's context are expected here, the blocks are not
        ids = tokenizer(batch[text_field], add_special_tokens=False, verbose=False)["input_ids"]
        blocks = pack_documents(ids, tokenizer.eos_token_id, block_size)
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    return ds.map(pack, batched=True, batch_size=batch_size, remove_columns=columns)
