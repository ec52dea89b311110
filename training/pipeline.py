"""The lab's SFT data pipeline: every example rendered with the chat template and tokenized once, then batched by a
collator that only pads the ids and turns the images into pixels.

TRL's VLM collator (and the lab's ExampleCollator) render and tokenize every row at every step, in the training
process. Here `tokenize_split` does it once per example (a Dataset.map; on a cached split datasets keeps the result as
a cache-*.arrow file beside the split, so a later run reuses it) and adds the token counts that `training.preflight`
checks and `train_sampling_strategy: group_by_length` reads (`length`), and each image's SHA-1 of its encoded file
(`image_digests`: the vision feature cache's key, training/vision_cache.py). The dataset cache's verification leaves
that file out (it is derived); instead its size and SHA-256 are recorded beside it when it is written
(<file>.sha256.json) and checked before it is reused: a file that differs, or has no record, is logged by name and
tokenized again.
Image tokens are counted from the image sizes, expanded in the text as the processor does, and checked against the
pixels in every batch: for Qwen2-VL's grid with the image processor's own `get_number_of_image_patches` (no pixels are
touched); for processors with fixed-size images (LlavaProcessor, as training/compose.py saves it) with the processor's
own `replace_image_token`, the hook its __call__ expands each image placeholder with, on a blank image of each size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image

from training.collators import IGNORE_INDEX, render
from training.models import has_grid
from training.preflight import TokenBudget, check_token_budget
from training.vision_cache import KEYS_FIELD, ImageKeys, image_keys
from utils.atomic_write import write_json_atomic
from utils.errors import DataError
from vlm_datasets.bad_examples import SkipLog, skip_log
from vlm_datasets.config import DataArguments
from vlm_datasets.example import row_to_example
from vlm_datasets.loading import load_split, require_labels
from vlm_datasets.prompts import PromptTemplate, to_conversation

TOKEN_COLUMNS = ("input_ids", "completion_length", "length", "image_tokens", "image_end", "image_digests")
TOKEN_FEATURES = datasets.Features(
    {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "completion_length": datasets.Value("int32"),  # the answer + <|im_end|>: the label span, at the end
        "length": datasets.Value("int32"),  # all tokens, image tokens expanded
        "image_tokens": datasets.Value("int32"),
        "image_end": datasets.Value("int32"),  # index after the last image token (0: no image)
        "image_digests": datasets.Sequence(datasets.Value("string")),  # per image: image_digest (the cache's key)
    }
)
_VERSION = "2"  # bump when the tokenized rows change, so cached map results are not reused
TOKEN_RECORD_SUFFIX = ".sha256.json"  # beside each tokenized Arrow file: {"size", "sha256"} as written

logger = logging.getLogger(__name__)


def image_size(image) -> tuple[int, int]:
    """(height, width) of a PIL image or of an undecoded datasets image cell (the header is read, no pixels)."""
    if isinstance(image, dict):  # Image(decode=False): {"bytes", "path"}
        with Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]) as img:
            return img.height, img.width
    return image.height, image.width


def image_token_counts(processor, sizes: list[tuple[int, int]]) -> list[int]:
    """Tokens each image takes in the language model: prod(image_grid_thw) / merge_size**2 under min/max_pixels
    (Qwen2-VL), else what the processor's `replace_image_token` expands the image to (one blank image per size)."""
    ip = processor.image_processor
    if has_grid(processor):
        return [ip.get_number_of_image_patches(h, w) // ip.merge_size**2 for h, w in sizes]
    per_size = {}
    for h, w in set(sizes):
        pixels = ip(images=[Image.new("RGB", (w, h))], return_tensors="pt")
        per_size[h, w] = pixel_image_tokens(processor, pixels, 1)
    return [per_size[s] for s in sizes]


def pixel_image_tokens(processor, pixels, n_images: int) -> int:
    """Image tokens the processor expands `n_images` images of `pixels` (an image processor output) to."""
    if "image_grid_thw" in pixels:  # Qwen2-VL: one token per merge_size x merge_size patches of the grid
        return int(pixels["image_grid_thw"].prod(-1).sum()) // processor.image_processor.merge_size**2
    replaced = (processor.replace_image_token(pixels, image_idx=i) for i in range(n_images))
    return sum(r.count(processor.image_token) for r in replaced)


def expand_image_tokens(text: str, image_token: str, counts: list[int]) -> str:
    """Each image placeholder repeated to its token count, in order (what the processor does before tokenizing)."""
    parts = text.split(image_token)
    if len(parts) - 1 != len(counts):
        raise ValueError(f"{len(parts) - 1} image placeholders in the text for {len(counts)} images")
    return "".join(p + image_token * n for p, n in zip(parts, counts + [0], strict=True))


def image_digest(image) -> str:
    """SHA-1 of an undecoded image cell's encoded file (its bytes, else the file at its path); "" for a decoded image
    (a stream's rows). training/vision_cache.py keys an image's features by it, so no pixel is hashed per step."""
    if not isinstance(image, dict):
        return ""
    data = image.get("bytes") or (Path(image["path"]).read_bytes() if image.get("path") else b"")
    return hashlib.sha1(data, usedforsecurity=False).hexdigest() if data else ""


def tokenize_row(row: dict[str, Any], processor, template: PromptTemplate) -> dict[str, Any]:
    """One canonical row (images decoded or not) -> TOKEN_COLUMNS; refuses unlabeled rows, naming the uid."""
    uid = row["uid"]
    if row["label"] is None:
        raise DataError(f"uid {uid}", "unlabeled example in a training split")
    placeholders = [Image.new("RGB", (1, 1))] * len(row["images"])  # the template needs only how many images
    example = row_to_example({**row, "images": placeholders})
    prompt, completion = render(processor, to_conversation(example, template))
    try:
        counts = image_token_counts(processor, [image_size(img) for img in row["images"]])
    except ValueError as e:  # e.g. Qwen2-VL's aspect-ratio limit
        raise DataError(f"uid {uid}", f"the image processor refuses its images ({e})") from None
    tok = processor.tokenizer
    ids = tok(expand_image_tokens(prompt + completion, processor.image_token, counts), add_special_tokens=False)
    ids = ids.input_ids
    image_positions = [i for i, t in enumerate(ids) if t == processor.image_token_id]
    return {
        "input_ids": ids,
        "completion_length": len(tok(completion, add_special_tokens=False).input_ids),
        "length": len(ids),
        "image_tokens": len(image_positions),
        "image_end": image_positions[-1] + 1 if image_positions else 0,
        "image_digests": [image_digest(img) for img in row["images"]],
    }


def _fingerprint(ds: datasets.Dataset, processor, template: PromptTemplate) -> str:
    """What the tokenized columns depend on: the rows, the template, the tokenizer, chat template and pixel budget."""
    ip = processor.image_processor
    parts = {
        "version": _VERSION,
        "rows": ds._fingerprint,
        "template": dataclasses.asdict(template),
        "tokenizer": hashlib.sha256(processor.tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        "chat_template": processor.chat_template,
        "pixels": [dict(ip.size), getattr(ip, "patch_size", None), getattr(ip, "merge_size", None)],
    }
    if not has_grid(processor):  # fixed-size images: the crop and the processor's own expansion settings
        expansion = [getattr(processor, a, None) for a in ("patch_size", "num_additional_image_tokens")]
        expansion.append(getattr(processor, "vision_feature_select_strategy", None))
        parts["pixels"] += [dict(getattr(ip, "crop_size", None) or {}), *expansion]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def tokenize_split(
    ds: datasets.Dataset | datasets.IterableDataset, processor, template: PromptTemplate, num_proc: int | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """The split with TOKEN_COLUMNS added (canonical columns kept: the collator still needs the images).

    A Dataset is tokenized now, reading image sizes from the encoded images (no decode); a stream lazily, as read.
    """

    def batch_fn(batch: dict[str, list]) -> dict[str, list]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        out = [tokenize_row(row, processor, template) for row in rows]
        return {k: [o[k] for o in out] for k in TOKEN_COLUMNS}

    if isinstance(ds, datasets.IterableDataset):
        return ds.map(batch_fn, batched=True, batch_size=64)
    undecoded = ds.cast_column("images", datasets.Sequence(datasets.Image(decode=False)))
    fingerprint = _fingerprint(ds, processor, template)
    folder = _token_folder(undecoded)
    if folder is not None:
        _drop_unverified_token_files(folder, fingerprint)
    tokens = undecoded.map(
        batch_fn,
        batched=True,
        batch_size=256,
        remove_columns=ds.column_names,  # only the token columns are written (a small cache file)
        features=TOKEN_FEATURES,
        num_proc=num_proc,
        new_fingerprint=fingerprint,
        desc="Tokenizing (once per example)",
    )
    if folder is not None:
        _record_token_files(folder, fingerprint)
    return datasets.concatenate_datasets([ds, tokens], axis=1)


def _token_folder(ds: datasets.Dataset) -> Path | None:
    """Where Dataset.map keeps its result for ds (beside ds's first Arrow file); None when it keeps none."""
    if not (datasets.is_caching_enabled() and ds.cache_files):
        return None
    return Path(ds.cache_files[0]["filename"]).parent


def _token_files(folder: Path, fingerprint: str) -> list[Path]:
    """The tokenized Arrow files of fingerprint: cache-<fp>.arrow, or cache-<fp>_<rank>_of_<n>.arrow per process."""
    return sorted(folder.glob(f"cache-{fingerprint}*.arrow"))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _token_file_problem(path: Path) -> str | None:
    """Why the tokenized file at path cannot be trusted (None: its size and SHA-256 are those recorded)."""
    record_path = path.with_name(path.name + TOKEN_RECORD_SUFFIX)
    try:
        record = json.loads(record_path.read_text())
        size, sha256 = record["size"], record["sha256"]
    except FileNotFoundError:
        return f"no {record_path.name} beside it (written before checksums were recorded, or removed)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its record {record_path.name} is unreadable ({type(e).__name__}: {e})"
    got = path.stat().st_size
    if got != size:
        return f"{got} bytes, {size} when written (truncated or damaged)"
    if _sha256(path) != sha256:
        return "SHA-256 differs from the one recorded when it was written (modified since)"
    return None


def _drop_unverified_token_files(folder: Path, fingerprint: str) -> None:
    """Remove the tokenized files of fingerprint (all of them, with their records) when one differs from its record,
    so that the map tokenizes the split again; logs each file and why."""
    files = _token_files(folder, fingerprint)
    problems = {path: problem for path in files if (problem := _token_file_problem(path))}
    for path, problem in problems.items():
        logger.warning("tokenized split %s: %s; tokenizing the split again", path, problem)
    for path in files if problems else []:
        path.unlink(missing_ok=True)
        path.with_name(path.name + TOKEN_RECORD_SUFFIX).unlink(missing_ok=True)


def _record_token_files(folder: Path, fingerprint: str) -> None:
    """Write the size and SHA-256 beside each tokenized file that has no record yet (it was just written)."""
    for path in _token_files(folder, fingerprint):
        record_path = path.with_name(path.name + TOKEN_RECORD_SUFFIX)
        if record_path.exists():
            continue
        record = {"size": path.stat().st_size, "sha256": _sha256(path)}
        write_json_atomic(record_path, record, indent=None, sort_keys=False)  # killed: no record, tokenized again


@dataclass
class TokenizedCollator:
    """Batches rows of `tokenize_split`: right padding, labels -100 except the last `completion_length` tokens.

    Masked: system/user turns, image tokens, the assistant header and the padding. Never truncates: a row longer than
    `max_length` raises naming its uid. The pixels' image tokens must match the ids' (else the processor's settings
    changed since tokenizing), checked per batch. With `vision_cache_keys` (set by training.vision_cache) the batch
    also carries one key per image (its digest, else uid and index; pixel settings; grid) under `KEYS_FIELD`.
    """

    processor: Any
    max_length: int | None = None
    vision_cache_keys: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(rows, key=lambda r: len(r["input_ids"]))
        if self.max_length is not None and len(longest["input_ids"]) > self.max_length:
            raise DataError(
                f"uid {longest['uid']}",
                f"{len(longest['input_ids'])} tokens (images expanded) exceed max_length={self.max_length}; raise "
                "max_length or lower max_pixels instead of cutting inside image tokens",
            )
        pad = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), len(longest["input_ids"])), pad, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, row in enumerate(rows):
            ids, n = torch.tensor(row["input_ids"], dtype=torch.long), len(row["input_ids"])
            input_ids[i, :n], attention_mask[i, :n] = ids, 1
            start = n - row["completion_length"]
            labels[i, start:n] = ids[start:]
        images = [img if img.mode == "RGB" else img.convert("RGB") for row in rows for img in row["images"]]
        # pixel_values [N, C, H, W] (+ image_grid_thw [N, 3] for Qwen2-VL, which flattens the patches instead)
        pixels = self.processor.image_processor(images=images, return_tensors="pt")
        image_tokens = input_ids == self.processor.image_token_id
        if pixel_image_tokens(self.processor, pixels, len(images)) != int(image_tokens.sum()):
            uids = ", ".join(str(r["uid"]) for r in rows)
            raise DataError(
                f"batch of uids {uids}",
                "image tokens in the ids differ from the pixels' grid: the image processor's settings changed "
                "since the split was tokenized",
            )
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **pixels}
        if "mm_token_type_ids" in self.processor.model_input_names:  # Qwen2VLProcessor returns it; LlavaProcessor not
            batch["mm_token_type_ids"] = image_tokens.long()  # 1 on image tokens
        if self.vision_cache_keys:  # list of (identity, settings, t, h, w); the backbone takes it out of the forward
            uids, counts = [r["uid"] for r in rows], [len(r["images"]) for r in rows]
            digests = [d for r in rows for d in r.get("image_digests") or [""] * len(r["images"])]
            ip, grid = self.processor.image_processor, pixels.get("image_grid_thw")
            batch[KEYS_FIELD] = ImageKeys(tuple(image_keys(uids, counts, ip, grid, digests)))
        return batch


@dataclass
class TrainingData:
    train: datasets.Dataset | datasets.IterableDataset
    eval: datasets.Dataset | datasets.IterableDataset | None
    collator: TokenizedCollator
    budget: TokenBudget | None  # the pre-flight's counts (None when off)
    train_skips: SkipLog  # the train read's bad and unlabeled examples (a later read of the same split has its own)


def labeled_tokenized_split(data_args: DataArguments, split: str, limit, processor, template, training_args):
    """load_split -> require_labels (unlabeled rows fail, or are skipped and counted) -> tokenize_split."""
    ds = require_labels(load_split(data_args, split, limit=limit), data_args, split)
    on_disk = isinstance(ds, datasets.Dataset) and bool(ds.cache_files)  # the map result is cached beside it
    first = training_args.main_process_first(desc=f"tokenizing {split}") if on_disk else contextlib.nullcontext()
    with first:  # one process writes the cache-*.arrow file, the others read it
        return tokenize_split(ds, processor, template, num_proc=training_args.dataset_num_proc)


def training_data(data_args: DataArguments, training_args, processor, template: PromptTemplate) -> TrainingData:
    """What training/sft.py trains on: the labelled train (and eval) split tokenized once, checked by the token-budget
    pre-flight (data_args.preflight), and the padding collator. Sets the SFTConfig fields this needs."""
    train = labeled_tokenized_split(
        data_args, data_args.dataset_train_split, data_args.max_train_examples, processor, template, training_args
    )
    train_skips = skip_log(data_args, data_args.dataset_train_split)  # a stream keeps logging into it as it is read
    budget = None
    if data_args.preflight:
        budget = check_token_budget(train, training_args.max_length, data_args.preflight_examples)
    eval_ds = None
    if training_args.eval_strategy != "no":
        eval_ds = labeled_tokenized_split(
            data_args, data_args.dataset_eval_split, data_args.max_eval_examples, processor, template, training_args
        )
    # The collator reads the canonical and token columns; TRL's own preparation would re-tokenize.
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    return TrainingData(train, eval_ds, TokenizedCollator(processor, training_args.max_length), budget, train_skips)
