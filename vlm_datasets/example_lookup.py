"""Examples by uid from the dataset a data config names (the gallery, inspector and playground reach data this way).

A config is any of the lab's YAML files (evals/configs/*.yaml, training/configs/*.yaml): its DataArguments keys are
read (through HfArgumentParser, like the training and evaluation scripts), the other keys are left to their owners.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import datasets
import yaml

from utils.errors import DataError
from vlm_datasets.config import DataArguments
from vlm_datasets.example import Example, row_to_example
from vlm_datasets.loading import load_split
from vlm_datasets.manifest import manifest_path
from vlm_datasets.nlvr2_official import split_files

TEXT_COLUMNS = ["uid", "sentence", "label", "meta"]  # everything but the images: cheap to read for a whole split


def read_config(path: str | Path | None) -> dict[str, Any]:
    """The mapping a YAML config holds ({} for no path)."""
    if path is None:
        return {}
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DataError(str(path), f"config unreadable ({e})") from None
    if not isinstance(values, dict):
        raise DataError(str(path), "config is not a YAML mapping of field: value")
    return values


def data_arguments(config: str | Path | dict | None = None, **overrides) -> DataArguments:
    """DataArguments from a config (path or mapping; keys of other dataclasses ignored) and overrides (None: keep)."""
    fields = {f.name for f in dataclasses.fields(DataArguments)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"not DataArguments fields: {unknown}")
    values = dict(config) if isinstance(config, dict) else read_config(config)
    values.update({k: v for k, v in overrides.items() if v is not None})
    from transformers import HfArgumentParser  # here, not at import: the commands' --help needs no transformers

    (args,) = HfArgumentParser(DataArguments).parse_dict(values, allow_extra_keys=True)
    return args


def _where(args: DataArguments, split: str) -> str:
    return f"split {split!r} of dataset_source {args.dataset_source}"


def split_index(args: DataArguments, split: str) -> dict[str, dict]:
    """{uid: {"sentence", "label", "meta"}} for the whole split, in its order, without decoding any image."""
    ds = load_split(args, split)
    index = {}
    for row in ds.select_columns(TEXT_COLUMNS):
        meta = json.loads(row["meta"]) if row["meta"] else {}
        index[row["uid"]] = {"sentence": row["sentence"], "label": row["label"], "meta": meta}
    return index


def find_examples(args: DataArguments, split: str, uids: list[str]) -> dict[str, Example]:
    """The examples of `uids` (images decoded for those only); DataError naming the split and every missing uid."""
    wanted = list(dict.fromkeys(uids))
    ds = load_split(args, split)
    found: dict[str, Example] = {}
    if isinstance(ds, datasets.Dataset):
        position = {u: i for i, u in enumerate(ds["uid"])}  # one column, no image decoding
        rows = ds.select([position[u] for u in wanted if u in position])
        found = {ex.uid: ex for ex in map(row_to_example, rows)}
        first = ds[0]["uid"] if len(ds) else None
    else:  # streaming: read until every wanted uid has been seen
        first, missing = None, set(wanted)
        for row in ds:
            first = first or row["uid"]
            if row["uid"] in missing:
                found[row["uid"]] = row_to_example(row)
                missing.discard(row["uid"])
                if not missing:
                    break
    missing = [u for u in wanted if u not in found]
    if missing:
        shown = ", ".join(repr(u) for u in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        hint = f" (its uids look like {first!r}; pick the split with --split)" if first else " (the split is empty)"
        raise DataError(_where(args, split), f"uid {shown} not found{hint}")
    return {u: found[u] for u in wanted}


def find_example(args: DataArguments, split: str, uid: str) -> Example:
    return find_examples(args, split, [uid])[uid]


def image_files(args: DataArguments, split: str, example: Example) -> list[Path] | None:
    """The original image files of an example from a local source (nlvr2, jsonl: meta["image_files"], resolved the
    way those sources resolve them), or None: hub and synthetic examples have none, and files may have moved."""
    names = example.meta.get("image_files")
    if not names or args.dataset_source not in ("nlvr2", "jsonl"):
        return None
    base = split_files(args, split)[1] if args.dataset_source == "nlvr2" else manifest_path(args, split).parent
    paths = [Path(n) if Path(n).is_absolute() else base / n for n in names]
    return paths if all(p.is_file() for p in paths) else None


def random_draw(uids: list[str], n: int, seed: int) -> list[str]:
    """`n` uids drawn without replacement by a seeded generator, kept in their original order (all when n >= len)."""
    if n >= len(uids):
        return list(uids)
    chosen = set(random.Random(seed).sample(range(len(uids)), n))
    return [u for i, u in enumerate(uids) if i in chosen]
