"""The official NLVR2 layout: <split>.json (a JSON object per line) + an image folder with official names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from utils.errors import DataError
from vlm_datasets.bad_examples import SkipLog, new_skip_log
from vlm_datasets.config import DataArguments
from vlm_datasets.labels import parse_identifier, parse_label, parse_sentence, parse_uid
from vlm_datasets.manifest import LocalItem, content_fingerprint, dataset_from_examples, read_jsonl

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
REQUIRED_FIELDS = ("identifier", "sentence")  # label too, except in unlabeled (hidden test) files
NUM_IMAGES = 2  # left, right


def _readable_uid(value: Any) -> str | None:
    """The record's identifier when it is a valid uid (named in errors about the record's other fields), else None."""
    try:
        return parse_uid(value, "")
    except DataError:
        return None


def _read_numbered(json_path: Path, log: SkipLog | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, record in read_jsonl(json_path, log):
        missing = [key for key in REQUIRED_FIELDS if record.get(key) is None]
        if missing:
            uid = _readable_uid(record.get("identifier"))
            error = DataError(where if uid is None else f"{where}, uid {uid}", f"missing field {missing[0]!r}")
            if log is None:
                raise error
            log.bad(error, uid=uid)
            continue
        yield where, record


def index_images(image_dir: str | Path) -> dict[str, Path]:
    """Walk image_dir once, recursively (split and numbered subfolders): official file stem -> path."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(str(image_dir), "image folder not found (set dataset_image_dir)")
    index: dict[str, Path] = {}
    for root, dirs, files in os.walk(image_dir, followlinks=True):
        dirs.sort()  # deterministic, so the duplicate error below names the same pair every time
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in IMAGE_SUFFIXES or name.startswith("."):
                continue
            path = Path(root, name)
            if stem in index:
                raise DataError(str(image_dir), f"two images for {stem}: {index[stem]} and {path}")
            index[stem] = path
    return index


def official_items(
    json_path: Path, image_dir: Path, index: dict[str, Path] | None = None, log: SkipLog | None = None
) -> list[LocalItem]:
    """Check every record of a split (fields, label, both images present) before any image is opened; bad records
    go to log (raised under bad_examples=fail, the default without a log)."""
    index = index_images(image_dir) if index is None else index
    log = SkipLog("fail", str(json_path)) if log is None else log
    items, seen = [], {}
    for where, rec in _read_numbered(json_path, log):
        uid = None
        try:
            uid = parse_uid(rec["identifier"], where)
            where = f"{where}, uid {uid}"
            if uid in seen:
                raise DataError(where, f"duplicate identifier (first at {seen[uid]})")
            seen[uid] = where
            try:
                ident = parse_identifier(uid)
            except DataError as e:  # its message names the uid (quoted): add the file and line
                raise DataError(f"{where.rsplit(', uid ', 1)[0]}, {e.where}", e.problem) from None
            paths = []
            for i in range(NUM_IMAGES):
                stem = ident.image_stem(i)
                if stem not in index:
                    raise DataError(where, f"missing image {stem}.png (searched {image_dir} and its subfolders)")
                paths.append(index[stem])
            sentence = parse_sentence(rec["sentence"], uid, where=where)
            label = parse_label(rec.get("label"), uid, where=where)
        except DataError as e:
            log.bad(e, uid=uid)
            continue
        meta = {k: v for k, v in rec.items() if k not in ("identifier", "sentence", "label")}
        names = [str(p.relative_to(image_dir)) for p in paths]
        items.append(LocalItem(uid, paths, names, sentence, label, meta))
    return items


def split_files(args: DataArguments, split: str) -> tuple[Path, Path]:
    """(<dataset_path>/<split>.json, image folder: dataset_image_dir or <dataset_path>/images)."""
    if not args.dataset_path:
        raise ValueError("dataset_source=nlvr2 needs dataset_path (the folder holding dev.json, train.json, ...)")
    root = Path(args.dataset_path)
    json_path = root / f"{split}.json"
    if not json_path.is_file():
        raise DataError(str(json_path), f"annotation file for split {split!r} not found")
    return json_path, Path(args.dataset_image_dir) if args.dataset_image_dir else root / "images"


def nlvr2_split(args: DataArguments, split: str) -> datasets.Dataset:
    """The official layout as an Arrow dataset in CANONICAL_FEATURES (rebuilt whenever a file changes); bad records
    and unreadable images per args.bad_examples."""
    json_path, image_dir = split_files(args, split)
    log = new_skip_log(args, split)
    items = official_items(json_path, image_dir, log=log)
    fingerprint = content_fingerprint("nlvr2", json_path, [p for it in items for p in it.paths])
    return dataset_from_examples(items, fingerprint, split, log)
