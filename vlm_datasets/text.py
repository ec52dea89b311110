"""Plain-text sources for language-model pretraining: hub (TinyStories, streamed), local text files, synthetic stories.

Every source yields the same rows, `{"text": str}`, one document (story) per row, for a train and a held-out split.
Local text files hold one story per line (`text_sample_by: line`, the default) or stories separated by a blank line
(`text_sample_by: paragraph`, line breaks inside a story kept).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

from vlm_datasets.hub import _in_local_cache, _is_offline
from vlm_datasets.stories import generate_stories

TEXT_SOURCES = ("synthetic", "hub", "text")
TextDataset = datasets.Dataset | datasets.IterableDataset


class TextSourceUnreachableError(RuntimeError):
    """A hub text dataset cannot be reached (offline, no network) and is not in the local HF cache."""

    def __init__(self, name: str, reason: str):
        super().__init__(
            f"the hub text dataset '{name}' cannot be reached ({reason}); use local text files "
            "(--dataset_source text --dataset_path stories.txt) or the offline synthetic stories "
            "(--dataset_source synthetic, the embedded default: training/configs/gpt2_embedded.yaml)"
        )


@dataclass
class TextDataArguments:
    dataset_source: str = field(
        default="hub", metadata={"help": "Where the text comes from.", "choices": list(TEXT_SOURCES)}
    )
    dataset_name: str = field(default="roneneldan/TinyStories", metadata={"help": "Hub dataset id (source hub)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (commit, tag)."})
    dataset_streaming: bool = field(default=True, metadata={"help": "Hub source: stream the train split."})
    dataset_text_field: str = field(default="text", metadata={"help": "Hub source: the column holding the text."})
    dataset_train_split: str = field(default="train", metadata={"help": "Hub source: training split."})
    dataset_eval_split: str = field(default="validation", metadata={"help": "Hub source: held-out split."})
    dataset_path: str | None = field(
        default=None, metadata={"help": "Text source: training text file(s), comma-separated paths or globs."}
    )
    dataset_eval_path: str | None = field(
        default=None,
        metadata={"help": "Text source: held-out text file(s); default: hold out max_eval_docs of dataset_path."},
    )
    text_sample_by: str = field(
        default="line",
        metadata={
            "help": "Text source: one story per line, or per blank-line-separated paragraph.",
            "choices": ["line", "paragraph"],
        },
    )
    dataset_seed: int = field(default=0, metadata={"help": "Synthetic stories, held-out draw and stream shuffle."})
    synthetic_train_docs: int = field(default=50_000, metadata={"help": "Synthetic source: training stories."})
    max_train_docs: int | None = field(default=None, metadata={"help": "Cap on training documents."})
    max_eval_docs: int = field(default=2000, metadata={"help": "Held-out documents (read once, kept in memory)."})
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Streaming train split: shuffle buffer."})
    block_size: int = field(default=128, metadata={"help": "Tokens per packed training block."})
    packing_batch_size: int = field(
        default=1000,
        metadata={"help": "Documents packed together; the last < block_size tokens of each such batch are dropped."},
    )

    def __post_init__(self):
        if self.dataset_source not in TEXT_SOURCES:
            raise ValueError(f"dataset_source {self.dataset_source!r} unknown; choose one of {list(TEXT_SOURCES)}")
        if self.dataset_source == "text" and not self.dataset_path:
            raise ValueError("dataset_source text needs dataset_path (a text file, one story per line)")
        if self.text_sample_by not in ("line", "paragraph"):
            raise ValueError(f"text_sample_by {self.text_sample_by!r}: choose line or paragraph")


def _files(spec: str) -> list[str]:
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        matches = sorted(str(p) for p in Path().glob(part)) if any(c in part for c in "*?[") else [part]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise FileNotFoundError(f"text file(s) not found: {part}")
        out += matches
    return out


def _local_text(spec: str, sample_by: str) -> datasets.Dataset:
    ds = datasets.load_dataset("text", data_files={"train": _files(spec)}, sample_by=sample_by, split="train")
    # Blank lines (line mode) and extra newlines around paragraphs are not documents.
    return ds.map(lambda row: {"text": row["text"].strip()}).filter(lambda row: bool(row["text"]))


def _hub(args: TextDataArguments, split: str, streaming: bool) -> TextDataset:
    name = args.dataset_name
    if _is_offline() and not Path(name).exists() and not _in_local_cache(name):
        raise TextSourceUnreachableError(name, "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache")
    try:
        ds = datasets.load_dataset(
            name, args.dataset_config, split=split, revision=args.dataset_revision, streaming=streaming
        )
    except (ConnectionError, OfflineModeIsEnabled, LocalEntryNotFoundError) as e:
        raise TextSourceUnreachableError(name, f"{type(e).__name__}: {e}") from e
    if args.dataset_text_field != "text":
        ds = ds.rename_column(args.dataset_text_field, "text")
    return ds.select_columns(["text"])


def load_texts(args: TextDataArguments) -> tuple[TextDataset, datasets.Dataset]:
    """(train, held-out) rows of {"text"}; train is an IterableDataset when streaming from the hub."""
    seed = args.dataset_seed
    if args.dataset_source == "synthetic":
        train = datasets.Dataset.from_dict({"text": generate_stories(args.synthetic_train_docs, seed, "train")})
        held_out = datasets.Dataset.from_dict({"text": generate_stories(args.max_eval_docs, seed, "validation")})
    elif args.dataset_source == "text":
        train = _local_text(args.dataset_path, args.text_sample_by)
        if args.dataset_eval_path:
            held_out = _local_text(args.dataset_eval_path, args.text_sample_by)
        else:
            n_held_out = min(args.max_eval_docs, len(train) // 10)  # a tenth, at most max_eval_docs
            if n_held_out == 0:
                raise ValueError(
                    f"{args.dataset_path}: {len(train)} documents, too few to hold out a tenth for evaluation "
                    f"(max_eval_docs={args.max_eval_docs}); give at least 10 documents, or the held-out text "
                    "as dataset_eval_path"
                )
            parts = train.train_test_split(test_size=n_held_out, seed=seed)
            train, held_out = parts["train"], parts["test"]
    else:
        train = _hub(args, args.dataset_train_split, args.dataset_streaming)
        if isinstance(train, datasets.IterableDataset):
            train = train.shuffle(seed=seed, buffer_size=args.shuffle_buffer_size)
        # The held-out split is read once (its first max_eval_docs stories) so every evaluation sees the same text.
        stream = _hub(args, args.dataset_eval_split, streaming=True)
        held_out = datasets.Dataset.from_list(list(stream.take(args.max_eval_docs)))
    if args.max_train_docs is not None:
        train = (
            train.take(args.max_train_docs)
            if isinstance(train, datasets.IterableDataset)
            else train.select(range(min(args.max_train_docs, len(train))))
        )
    if len(held_out) > args.max_eval_docs:
        held_out = held_out.select(range(args.max_eval_docs))
    return train, held_out


def text_manifest(args: TextDataArguments, train: TextDataset, held_out: datasets.Dataset) -> dict[str, Any]:
    """What the run read: source settings, document counts and, for local files, their sizes and SHA-256."""
    manifest: dict[str, Any] = {
        "source": args.dataset_source,
        "train_docs": len(train) if isinstance(train, datasets.Dataset) else None,  # None: a stream
        "held_out_docs": len(held_out),
    }
    if args.dataset_source == "synthetic":
        manifest["generator"] = "vlm_datasets.stories (synthetic TinyStories-like stories, NOT TinyStories)"
        manifest["seed"] = args.dataset_seed
    elif args.dataset_source == "hub":
        manifest.update(
            name=args.dataset_name,
            config=args.dataset_config,
            revision=args.dataset_revision,
            train_split=args.dataset_train_split,
            held_out_split=f"{args.dataset_eval_split} (first {args.max_eval_docs})",
        )
    else:
        files = _files(args.dataset_path) + (_files(args.dataset_eval_path) if args.dataset_eval_path else [])
        manifest["sample_by"] = args.text_sample_by
        manifest["files"] = {
            f: {"bytes": Path(f).stat().st_size, "sha256": hashlib.sha256(Path(f).read_bytes()).hexdigest()}
            for f in files
        }
    return manifest
