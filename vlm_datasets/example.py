"""The canonical example every source yields, and its Arrow (datasets) form."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    import datasets


@functools.cache
def _canonical_features() -> datasets.Features:
    """Arrow schema shared by every source: meta is a JSON string because its keys differ between sources."""
    import datasets

    return datasets.Features(
        {
            "uid": datasets.Value("string"),
            "images": datasets.Sequence(datasets.Image()),
            "sentence": datasets.Value("string"),
            "label": datasets.Value("bool"),  # None when unlabeled
            "meta": datasets.Value("string"),
        }
    )


def __getattr__(name: str):
    """CANONICAL_FEATURES is built on first use: Example alone (a parser, a script's --help) needs no datasets."""
    if name == "CANONICAL_FEATURES":
        return _canonical_features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Example:
    """One NLVR2-style example: images are RGB, left then right (1..N for generic sets)."""

    uid: str
    images: list[Image.Image]
    sentence: str
    label: bool | None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "images": list(self.images),
            "sentence": self.sentence,
            "label": self.label,
            "meta": json.dumps(self.meta, sort_keys=True),
        }


def row_to_example(row: dict[str, Any]) -> Example:
    """Inverse of `Example.to_row` (images decoded by datasets come back as PIL images)."""
    images = [img if img.mode == "RGB" else img.convert("RGB") for img in row["images"]]
    return Example(
        uid=row["uid"],
        images=images,
        sentence=row["sentence"],
        label=row["label"],
        meta=json.loads(row["meta"]) if row["meta"] else {},
    )


def examples_to_dataset(examples, split: str | None = None) -> datasets.Dataset:
    """Materialize canonical examples (any iterable) into an Arrow-backed `datasets.Dataset`."""
    import datasets

    return datasets.Dataset.from_list([ex.to_row() for ex in examples], features=_canonical_features(), split=split)
