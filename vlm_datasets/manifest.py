"""Generic local JSONL manifest source (uid, images, sentence, label, extras -> meta), plus the helpers that
the local sources share: record -> canonical example, and content-fingerprinted Arrow materialization."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetGenerationError

from utils.artifacts import artifact_dir
from utils.errors import DataError
from vlm_datasets.bad_examples import SkipLog, new_skip_log
from vlm_datasets.config import DataArguments
from vlm_datasets.example import CANONICAL_FEATURES, Example
from vlm_datasets.images import open_image
from vlm_datasets.labels import parse_label, parse_sentence, parse_uid

# Keys a dataset_column_map may hold (hub and JSONL): images is one list column, or left_image + right_image.
COLUMN_MAP_KEYS = ("uid", "sentence", "label", "images", "left_image", "right_image")
# Bump when the rows a local source produces change, so fingerprinted Arrow caches are not reused.
_ROWS_VERSION = "1"


def check_column_map(column_map: dict | None) -> dict[str, Any]:
    """Validate a dataset_column_map: known keys only; images and left_image/right_image are exclusive."""
    mapping = dict(column_map or {})
    unknown = set(mapping) - set(COLUMN_MAP_KEYS)
    if unknown:
        raise ValueError(f"dataset_column_map: unknown keys {sorted(unknown)}; known: {list(COLUMN_MAP_KEYS)}")
    pair = [k for k in ("left_image", "right_image") if k in mapping]
    if pair and "images" in mapping:
        raise ValueError("dataset_column_map: give either 'images' or 'left_image' + 'right_image', not both")
    if len(pair) == 1:
        raise ValueError("dataset_column_map: 'left_image' and 'right_image' go together")
    return mapping


@dataclass(frozen=True)
class LocalItem:
    """One checked annotation record whose image files exist; `to_example` opens the images."""

    uid: str
    paths: list[Path]
    names: list[str]  # as recorded in meta["image_files"]
    sentence: str
    label: bool | None
    meta: dict[str, Any]

    def to_example(self) -> Example:
        """Open the images by content (errors name the uid and file); meta gains image files and sizes."""
        images = [open_image(p, where=f"uid {self.uid}, image {p}") for p in self.paths]
        meta = {**self.meta, "image_files": self.names, "image_sizes": [list(im.size) for im in images]}
        return Example(uid=self.uid, images=images, sentence=self.sentence, label=self.label, meta=meta)


def content_fingerprint(kind: str, text_file: Path, image_paths: Iterable[Path]) -> str:
    """sha256 of the annotation file's bytes and each image's path, size and mtime: changes when files do."""
    h = hashlib.sha256(f"{kind}:{_ROWS_VERSION}:{text_file.resolve()}\n".encode())
    with open(text_file, "rb") as f:
        h.update(hashlib.file_digest(f, "sha256").digest())
    for p in image_paths:
        st = os.stat(p)
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def arrow_dir() -> Path:
    """Where the local sources write their Arrow files: <artifact root>/datasets/.arrow, beside the dataset caches,
    instead of datasets' own cache (HF_DATASETS_CACHE, ~/.cache/huggingface/datasets)."""
    return artifact_dir("datasets") / ".arrow"


def dataset_from_examples(items: list[LocalItem], fingerprint: str, split: str, log: SkipLog) -> datasets.Dataset:
    """Open the items' images and write the examples to Arrow with `Dataset.from_generator`, streamed to disk.

    from_generator reuses its cache (under arrow_dir()) by fingerprint; ours hashes the input files' contents and
    stats, so a changed file gives a fresh build while unchanged files reuse the Arrow files. An item whose images
    fail to open goes to `log` (raised under bad_examples=fail); when the Arrow files are reused, the items missing
    from them are opened again so that the log names them and their reason as the first build did.
    """

    failed: set[str] = set()

    def rows() -> Iterator[dict[str, Any]]:
        for item in items:
            try:
                example = item.to_example()
            except DataError as e:
                log.bad(e, uid=item.uid)
                failed.add(item.uid)
                continue
            yield example.to_row()

    fingerprint = hashlib.sha256(f"{fingerprint}:{split}".encode()).hexdigest()  # one file, several splits
    try:
        ds = datasets.Dataset.from_generator(
            rows,
            features=CANONICAL_FEATURES,
            fingerprint=fingerprint,
            split=datasets.NamedSplit(split),
            cache_dir=str(arrow_dir()),
        )
    except DatasetGenerationError as e:  # datasets wraps errors raised in the generator: surface ours as is
        if isinstance(e.__cause__, DataError):
            raise e.__cause__ from None
        raise
    if len(ds) + len(failed) != len(items):  # the Arrow files were reused: which items are not in them?
        kept = set(ds["uid"])
        for item in items:
            if item.uid not in kept:
                try:
                    item.to_example()
                except DataError as e:
                    log.bad(e, uid=item.uid)
                    continue
                raise RuntimeError(f"{split}: uid {item.uid} is missing from the Arrow cache but reads fine")
    return ds


def read_jsonl(path: Path, log: SkipLog | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ("<path> line <n>", record) per non-blank line; a line that is not UTF-8 JSON holding an object is a
    DataError, raised, or given to `log` (which raises it under bad_examples=fail) and the line skipped."""
    if not path.is_file():
        raise DataError(str(path), "file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path} line {lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a leading BOM is not part of the JSON
                if not line.strip():
                    continue
                record = json.loads(line.rstrip("\r\n"))  # error positions then read "line 1 column k"
                if not isinstance(record, dict):
                    raise DataError(where, f"expected a JSON object, got {type(record).__name__}")
            except UnicodeDecodeError as e:
                error = DataError(where, f"not valid UTF-8 ({e.reason} at byte {e.start})")
            except json.JSONDecodeError as e:
                error = DataError(where, f"malformed JSON: {e}")
            except DataError as e:
                error = e
            else:
                yield where, record
                continue
            if log is None:
                raise error
            log.bad(error)


def _require(record: dict[str, Any], key: str, where: str) -> Any:
    if record.get(key) is None:
        raise DataError(where, f"missing field {key!r}")
    return record[key]


def record_uid(record: dict[str, Any], key: str, where: str) -> str:
    """The record's uid (see labels.parse_uid); missing -> DataError naming the file and line."""
    return parse_uid(_require(record, key, where), where)


def _manifest_items(path: Path, column_map: dict | None, log: SkipLog | None = None) -> list[LocalItem]:
    """Parse and check every line (fields, label, images exist) before any image is opened; bad lines go to log."""
    log = SkipLog("fail", str(path)) if log is None else log
    keys = {"uid": "uid", "sentence": "sentence", "label": "label", "images": "images"}
    keys.update(check_column_map(column_map))
    pair = (keys["left_image"], keys["right_image"]) if "left_image" in keys else None
    used = {keys["uid"], keys["sentence"], keys["label"], *(pair or (keys["images"],))}
    items, seen = [], {}
    for where, rec in read_jsonl(path, log):
        uid = None
        try:
            uid = record_uid(rec, keys["uid"], where)
            where = f"{where} (uid {uid})"
            if uid in seen:
                raise DataError(where, f"duplicate uid (first at {seen[uid]})")
            seen[uid] = where
            sentence = parse_sentence(_require(rec, keys["sentence"], where), uid, keys["sentence"], where=where)
            label = parse_label(rec.get(keys["label"]), uid, where=where)
            names = [_require(rec, k, where) for k in pair] if pair else _require(rec, keys["images"], where)
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                raise DataError(where, f"field {keys['images']!r} must be a non-empty list of image paths")
            paths = [Path(n) if Path(n).is_absolute() else path.parent / n for n in names]
            for p in paths:
                if not p.is_file():
                    raise DataError(where, f"image not found: {p}")
        except DataError as e:
            log.bad(e, uid=uid)
            continue
        meta = {k: v for k, v in rec.items() if k not in used}
        items.append(LocalItem(uid, paths, names, sentence, label, meta))
    return items


def manifest_path(args: DataArguments, split: str) -> Path:
    """args.dataset_path is one manifest used for every split, or a folder holding <split>.jsonl."""
    if not args.dataset_path:
        raise ValueError("dataset_source=jsonl needs dataset_path (a .jsonl manifest or a folder of <split>.jsonl)")
    root = Path(args.dataset_path)
    path = root / f"{split}.jsonl" if root.is_dir() else root
    if not path.is_file():
        raise DataError(str(path), f"manifest for split {split!r} not found")
    return path


def jsonl_split(args: DataArguments, split: str) -> datasets.Dataset:
    """The JSONL manifest source as an Arrow dataset in CANONICAL_FEATURES (bad lines per args.bad_examples)."""
    path = manifest_path(args, split)
    log = new_skip_log(args, split)
    items = _manifest_items(path, args.dataset_column_map, log)
    fingerprint = content_fingerprint("jsonl", path, [p for it in items for p in it.paths])
    return dataset_from_examples(items, fingerprint, split, log)
