"""Hub source: load an NLVR2 mirror with `datasets.load_dataset`, map its columns to the canonical ones."""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub.constants
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from PIL import Image

from utils.errors import DataError
from vlm_datasets.bad_examples import SkipLog, new_skip_log
from vlm_datasets.config import DataArguments
from vlm_datasets.example import CANONICAL_FEATURES, Example
from vlm_datasets.images import normalize_image, open_image
from vlm_datasets.labels import parse_label, parse_sentence, parse_uid
from vlm_datasets.manifest import check_column_map

logger = logging.getLogger(__name__)

# Column names tried, in order, when dataset_column_map does not name one (mirrors of NLVR2 differ).
CANDIDATES = {
    "uid": ("identifier", "uid", "id"),
    "sentence": ("sentence", "question", "text"),
    "label": ("label", "answer"),
}
IMAGE_LIST_CANDIDATES = ("images",)
IMAGE_PAIR_CANDIDATES = (("left_image", "right_image"), ("image_0", "image_1"), ("left", "right"))
IMAGE_SINGLE_CANDIDATES = ("image",)  # mirrors that store the pair as one side-by-side image


class HubUnreachableError(RuntimeError):
    """The hub cannot be reached (offline or no network) and the dataset is not in the local HF cache."""

    def __init__(self, name: str, reason: str):
        super().__init__(
            f"the hub source '{name}' cannot be reached offline ({reason}); use dataset_cached=true with an "
            "existing cache (dataset_cache_dir), a local source (dataset_source=nlvr2 or jsonl) or the "
            "embedded default (dataset_source=synthetic)"
        )


@dataclass(frozen=True)
class ColumnMap:
    """Which mirror columns hold the canonical fields; images: one list column or one column per image."""

    uid: str
    sentence: str
    label: str | None  # None: the split is unlabeled (only when dataset_column_map says "label": null)
    images: tuple[str, ...]
    images_is_list: bool


def _is_image_feature(feature: Any) -> bool:
    inner = getattr(feature, "feature", None)  # List / Sequence of images
    return isinstance(feature, datasets.Image) or isinstance(inner, datasets.Image)


def _undecoded(feature: Any) -> Any:
    undecoded = datasets.Image(decode=False)
    return undecoded if isinstance(feature, datasets.Image) else replace(feature, feature=undecoded)


def resolve_column_map(columns: list[str], explicit: dict | None = None, where: str = "dataset") -> ColumnMap:
    """Detect the mirror's columns; keys given in `explicit` (dataset_column_map) override detection."""
    explicit = check_column_map(explicit)
    present = set(columns)

    def pick(key: str, candidates: tuple[str, ...]) -> str:
        if key in explicit:
            if explicit[key] not in present:
                raise DataError(
                    where,
                    f"column {explicit[key]!r} (dataset_column_map[{key!r}]) not found; columns: {columns}",
                )
            return explicit[key]
        for name in candidates:
            if name in present:
                return name
        raise DataError(
            where,
            f"no {key!r} column (looked for {list(candidates)}; columns: {columns}); name it in dataset_column_map",
        )

    uid = pick("uid", CANDIDATES["uid"])
    sentence = pick("sentence", CANDIDATES["sentence"])
    label = None if "label" in explicit and explicit["label"] is None else pick("label", CANDIDATES["label"])
    if "images" in explicit or "left_image" in explicit:
        if "images" in explicit:
            return ColumnMap(uid, sentence, label, (pick("images", ()),), True)
        return ColumnMap(uid, sentence, label, (pick("left_image", ()), pick("right_image", ())), False)
    for name in IMAGE_LIST_CANDIDATES:
        if name in present:
            return ColumnMap(uid, sentence, label, (name,), True)
    for pair in IMAGE_PAIR_CANDIDATES:
        if set(pair) <= present:
            return ColumnMap(uid, sentence, label, pair, False)
    for name in IMAGE_SINGLE_CANDIDATES:
        if name in present:
            return ColumnMap(uid, sentence, label, (name,), False)
    looked = list(IMAGE_LIST_CANDIDATES) + [" + ".join(p) for p in IMAGE_PAIR_CANDIDATES]
    raise DataError(
        where,
        f"no image columns (looked for {looked}; columns: {columns}); "
        "name them in dataset_column_map (images, or left_image + right_image)",
    )


def _to_rgb(value: Any, where: str) -> Image.Image:
    """An image cell (PIL, {"bytes", "path"}, bytes or a local path) -> a fresh RGB PIL image."""
    if isinstance(value, Image.Image):
        return normalize_image(value, where)  # a copy without .format, so datasets stores it losslessly (PNG)
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return open_image(value["bytes"] or value["path"], where)
    if isinstance(value, bytes | bytearray | str | Path):
        return open_image(bytes(value) if isinstance(value, bytearray) else value, where)
    raise DataError(where, f"not an image: {type(value).__name__}")


_SKIP = object()


def _json_safe(value: Any) -> Any:
    """Meta values as JSON: images and raw bytes are dropped (_SKIP), numpy/dates become lists/strings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Image.Image | bytes | bytearray) or (isinstance(value, dict) and "bytes" in value):
        return _SKIP
    if isinstance(value, dict):
        return {str(k): v for k, v in ((k, _json_safe(v)) for k, v in value.items()) if v is not _SKIP}
    if isinstance(value, list | tuple):
        return [v for v in map(_json_safe, value) if v is not _SKIP]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def to_canonical(
    ds: datasets.Dataset | datasets.IterableDataset,
    column_map: dict | None = None,
    where: str = "dataset",
    log: SkipLog | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Map any mirror-layout dataset (map-style or streaming) to CANONICAL_FEATURES; other columns -> meta.

    A malformed row (no uid or sentence, a bad label, an unreadable image) raises a DataError naming it, or with a
    skipping `log` (bad_examples=skip) is dropped and recorded there: as the rows are read, for a stream.
    """
    log = SkipLog("fail", where) if log is None else log
    features = ds.features
    columns = list(ds.column_names or features or next(iter(ds)).keys())  # streaming may lack both: peek
    cmap = resolve_column_map(columns, column_map, where)
    image_columns = {c for c in columns if features and _is_image_feature(features[c])} | set(cmap.images)
    # Undecoded image cells: we decode once, by content, exactly like the local sources do.
    for c in image_columns:
        if features and c in features and _is_image_feature(features[c]):
            ds = ds.cast_column(c, _undecoded(features[c]))
    label_names = None
    if cmap.label and features and isinstance(features.get(cmap.label), datasets.ClassLabel):
        label_names = features[cmap.label].names  # ints -> names ("True"/"False"), in the mirror's own order
    meta_columns = [c for c in columns if c not in {cmap.uid, cmap.sentence, cmap.label} | image_columns]

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        if row[cmap.uid] is None:
            raise DataError(f"{where} row {index}", f"row without a uid (column {cmap.uid!r})")
        uid = parse_uid(row[cmap.uid], f"{where} row {index}")
        at = f"{where} row {index}, uid {uid}"  # errors name the dataset, the row and the uid
        if row[cmap.sentence] is None:
            raise DataError(at, f"missing field 'sentence' (column {cmap.sentence!r})")
        sentence = parse_sentence(row[cmap.sentence], uid, cmap.sentence, where=at)
        label = row[cmap.label] if cmap.label else None
        if label_names is not None and label is not None:
            label = None if label == -1 else label_names[label]  # -1: datasets' "no label" for ClassLabel
        label = parse_label(label, uid, where=at)
        cells = row[cmap.images[0]] if cmap.images_is_list else [row[c] for c in cmap.images]
        if cells is None or len(cells) == 0 or any(c is None for c in cells):
            raise DataError(at, f"missing image (columns {list(cmap.images)})")
        images = [_to_rgb(cell, f"{at}, image {i}") for i, cell in enumerate(cells)]
        meta = {c: v for c in meta_columns if (v := _json_safe(row[c])) is not _SKIP}
        return Example(uid, images, sentence, label, meta).to_row()

    def convert_batch(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        """One row in, zero (a skipped bad row) or one row out: a batched map may drop rows."""
        out: dict[str, list] = {name: [] for name in CANONICAL_FEATURES}
        for j, index in enumerate(indices):
            row = {c: batch[c][j] for c in columns}
            try:
                converted = convert(row, index)
            except DataError as e:
                log.bad(e, uid=row[cmap.uid] if isinstance(row[cmap.uid], str) else None)
                continue
            for name, value in converted.items():
                out[name].append(value)
        return out

    kwargs = {}
    if isinstance(ds, datasets.Dataset) and log.policy == "skip":
        kwargs["load_from_cache_file"] = False  # a reused map cache would skip rows without naming them again
    return ds.map(
        convert_batch,
        batched=True,
        batch_size=1,  # a stream decodes one row at a time, not a thousand
        with_indices=True,
        remove_columns=columns,
        features=CANONICAL_FEATURES,
        **kwargs,
    )


def _is_offline() -> bool:
    # Read the variable now too: the libraries read it once, at import.
    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return env or huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE


def _in_local_cache(name: str) -> bool:
    """Whether the HF caches hold anything for this dataset id (hub file cache or datasets' Arrow cache)."""
    hub_dir = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    arrow_dir = Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___")
    return hub_dir.is_dir() or arrow_dir.is_dir() or arrow_dir.with_name(arrow_dir.name.lower()).is_dir()


def load_hub_dataset(args: DataArguments, split: str) -> datasets.Dataset | datasets.IterableDataset:
    """`datasets.load_dataset` for the hub source as is (mirror columns); HubUnreachableError when offline."""
    name = args.dataset_name
    streaming = args.dataset_streaming
    if _is_offline() and not Path(name).exists():
        if not _in_local_cache(name):
            raise HubUnreachableError(name, "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache")
        if streaming:
            logger.warning("HF_HUB_OFFLINE is set: reading %s from the local cache instead of streaming", name)
            streaming = False
    try:
        return datasets.load_dataset(
            name, args.dataset_config, split=split, revision=args.dataset_revision, streaming=streaming
        )
    except (ConnectionError, OfflineModeIsEnabled, LocalEntryNotFoundError) as e:
        raise HubUnreachableError(name, f"{type(e).__name__}: {e}") from e


def hub_split(args: DataArguments, split: str) -> datasets.Dataset | datasets.IterableDataset:
    """The hub source in CANONICAL_FEATURES (an IterableDataset when dataset_streaming)."""
    ds = load_hub_dataset(args, split)
    where = f"hub dataset {args.dataset_name} split {split}"
    return to_canonical(ds, args.dataset_column_map, where=where, log=new_skip_log(args, split))
