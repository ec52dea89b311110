"""The single entry point for data: `load_split(args, split)` dispatches on the source and cached mode."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import datasets

from utils.errors import DataError
from vlm_datasets.bad_examples import SkipLog, skip_log
from vlm_datasets.cache import NotCachedError, build_cache, load_cached_split, resolve_cache_dir
from vlm_datasets.config import DataArguments
from vlm_datasets.example import Example, row_to_example
from vlm_datasets.hub import hub_split
from vlm_datasets.manifest import jsonl_split
from vlm_datasets.nlvr2_official import nlvr2_split
from vlm_datasets.synthetic_source import synthetic_split
from vlm_datasets.training_mix import shape_training_split

logger = logging.getLogger(__name__)

SplitReader = Callable[[DataArguments, str], datasets.Dataset | datasets.IterableDataset]
READERS: dict[str, SplitReader] = {
    "hub": hub_split,
    "nlvr2": nlvr2_split,
    "jsonl": jsonl_split,
    "synthetic": synthetic_split,
}


def source_split(args: DataArguments, split: str) -> datasets.Dataset | datasets.IterableDataset:
    """One split read straight from args.dataset_source (no dataset cache)."""
    if args.dataset_source not in READERS:
        raise ValueError(f"dataset_source {args.dataset_source!r} unknown; choose one of {list(READERS)}")
    return READERS[args.dataset_source](args, split)


def cached_split(args: DataArguments, split: str) -> datasets.Dataset:
    """The split from the verified cache; built (or extended by this split) first when absent from it."""
    cache_dir = resolve_cache_dir(args)
    try:
        return load_cached_split(args, split, cache_dir)  # any other CacheError (a bad cache) propagates
    except NotCachedError:
        logger.info("dataset cache %s: no split %r yet, building it from the source (first use)", cache_dir, split)
    build_cache(args, [split], cache_dir)
    return load_cached_split(args, split, cache_dir)


def load_split(
    args: DataArguments, split: str, limit: int | None = None
) -> datasets.Dataset | datasets.IterableDataset:
    """Canonical rows of one split (CANONICAL_FEATURES) from the configured source; at most `limit` rows. The
    training split gets the ablation knobs (train_image_pairs, train_instructions; the synthetic generator applies
    them itself)."""
    ds = cached_split(args, split) if args.dataset_cached else source_split(args, split)
    if split == args.dataset_train_split and args.dataset_source != "synthetic":
        ds = shape_training_split(args, ds, split)
    if limit is None:
        return ds
    if isinstance(ds, datasets.IterableDataset):
        return ds.take(limit)
    return ds.select(range(min(limit, len(ds))))


def iter_examples(ds: Iterable[dict]) -> Iterator[Example]:
    """Canonical examples from the rows of a split (any iterable of canonical rows)."""
    for row in ds:
        yield row_to_example(row)


def require_labels(ds: datasets.Dataset | datasets.IterableDataset, args: DataArguments, split: str):
    """A training split without unlabeled rows: the first one fails here, before any step (bad_examples=fail), or
    they are dropped and counted in the split's skip report (skip). A stream is filtered as it is read."""
    log = skip_log(args, split)

    def labeled(row: dict) -> bool:
        if row["label"] is None:
            log.bad(DataError(f"uid {row['uid']}", f"unlabeled example in training split {split!r}"), uid=row["uid"])
        return row["label"] is not None

    if isinstance(ds, datasets.IterableDataset):
        return ds.filter(labeled)
    unlabeled = [i for i, label in enumerate(ds["label"]) if label is None]  # one column: no image decoded
    if not unlabeled:
        return ds
    for uid in ds.select_columns(["uid"]).select(unlabeled)["uid"]:
        labeled({"uid": uid, "label": None})  # raises on the first one under bad_examples=fail
    return ds.select(sorted(set(range(len(ds))) - set(unlabeled)))


def _sources_summary(manifest: dict) -> dict:
    """The manifest's source records counted, not listed (one entry per image would swell the run record)."""
    return {
        split: {"annotations": sorted(rec["annotations"]), "images": sum(len(v) for v in rec["images"].values())}
        for split, rec in (manifest.get("sources") or {}).items()
    }


def dataset_manifest(args: DataArguments, split: str, skips: SkipLog | None = None) -> dict:
    """What a run records about its data: the source settings, the bad examples skipped (uid + reason; `skips`, or
    the latest read of the split's) and the verified cache manifest in cached mode (whose "skipped" lists those the
    cache build left out)."""
    from vlm_datasets.cache import cache_settings, verify_cache

    record = {"source": args.dataset_source, "split": split, "settings": cache_settings(args)}
    record["skipped"] = (skips or skip_log(args, split)).report()
    if args.dataset_cached:
        cache_dir = resolve_cache_dir(args)
        record["cache_dir"] = str(cache_dir)
        manifest = verify_cache(args, cache_dir, level="quick", splits=[split])  # loaded (and verified) just now
        record["cache_manifest"] = {**manifest, "sources": _sources_summary(manifest)}
        built = record["cache_manifest"].get("skipped", {}).get(split, {"count": 0, "examples": []})
        record["skipped"] = {
            "policy": args.bad_examples,
            "count": built["count"] + record["skipped"]["count"],
            "examples": built["examples"] + record["skipped"]["examples"],
        }
    return record
