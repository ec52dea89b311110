"""The training split's ablation knobs on the sources other than synthetic (whose generator applies them itself): a
budget of distinct image pairs at a fixed number of examples (train_image_pairs) and one prompt template per example,
drawn from paraphrased True/False and yes/no instructions (train_instructions: multi).

Both are fixed by the data alone (a SHA-256 of each identifier), not by the training seed, so every seed of a sweep
cell trains on the same examples.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict

import datasets

from utils.errors import DataError
from vlm_datasets.config import DataArguments
from vlm_datasets.labels import parse_identifier
from vlm_datasets.prompts import instruction_pool

logger = logging.getLogger(__name__)

# Real statements can be re-worded, not turned into which-image or counting questions: those need generated ones.
REWORDABLE_FORMATS = ("true_false", "yes_no")


def _rank(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def image_pair_key(uid: str) -> str:
    """The image pair of an NLVR2 identifier, which its statements share: dev-850-0-0 -> dev-850-0."""
    ident = parse_identifier(uid)
    return f"{ident.split}-{ident.set_id}-{ident.pair_id}"


def select_image_pairs(ds: datasets.Dataset, num_pairs: int, total: int, where: str = "train") -> datasets.Dataset:
    """`total` examples from `num_pairs` distinct image pairs, total / num_pairs statements each (the first
    total % num_pairs pairs one more); pairs and statements picked by a hash of their identifiers."""
    if isinstance(ds, datasets.IterableDataset):
        raise DataError(
            where,
            "train_image_pairs needs the whole split to group it by image pair: set dataset_streaming: false "
            "or dataset_cached: true",
        )
    if not 1 <= num_pairs <= total:
        raise DataError(where, f"train_image_pairs must be between 1 and the example budget {total}, got {num_pairs}")
    uids = list(ds["uid"])  # one column: no image is decoded
    groups: dict[str, list[int]] = defaultdict(list)
    for index, uid in enumerate(uids):
        groups[image_pair_key(uid)].append(index)
    per_pair = -(-total // num_pairs)  # the most statements a chosen pair must hold
    eligible = sorted((key for key, members in groups.items() if len(members) >= per_pair), key=_rank)
    if len(eligible) < num_pairs:
        raise DataError(
            where,
            f"{num_pairs} image pairs with {per_pair} statements each requested, but only {len(eligible)} of the "
            f"split's {len(groups)} image pairs hold that many (use more image pairs or a smaller budget)",
        )
    chosen = []
    for k, key in enumerate(eligible[:num_pairs]):
        size = total // num_pairs + (k < total % num_pairs)
        members = sorted(groups[key], key=lambda i: _rank(uids[i]))
        chosen += members[:size]
    logger.info("%s: %d examples from %d image pairs (of %d)", where, len(chosen), num_pairs, len(groups))
    return ds.select(sorted(chosen))


def assign_instructions(
    ds: datasets.Dataset | datasets.IterableDataset, base_template: str
) -> datasets.Dataset | datasets.IterableDataset:
    """Each row's meta gains prompt_template and task_format: a re-wordable format, then one of its templates
    (vlm_datasets.prompts.instruction_pool, the run's own template among them), both by a hash of the uid."""
    pool = instruction_pool(base_template, REWORDABLE_FORMATS)
    formats = list(pool)

    def add(uids: list[str], metas: list[str]) -> dict[str, list[str]]:
        out = []
        for uid, meta in zip(uids, metas, strict=True):
            rank = _rank(uid)
            fmt = formats[rank % len(formats)]
            names = pool[fmt]
            record = json.loads(meta) if meta else {}
            record |= {"prompt_template": names[(rank // len(formats)) % len(names)], "task_format": fmt}
            out.append(json.dumps(record, sort_keys=True))
        return {"meta": out}

    return ds.map(add, input_columns=["uid", "meta"], batched=True)


def shape_training_split(args: DataArguments, ds, split: str):
    """The training split of a non-synthetic source with train_image_pairs / train_instructions applied."""
    if args.train_image_pairs is not None:
        if args.max_train_examples is None:
            raise DataError(
                split, "train_image_pairs on a non-synthetic source needs max_train_examples (the fixed total)"
            )
        ds = select_image_pairs(ds, args.train_image_pairs, args.max_train_examples, where=f"split {split!r}")
    if args.train_instructions == "multi":
        ds = assign_instructions(ds, args.prompt_template)
    return ds
