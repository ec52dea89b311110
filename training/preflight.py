"""Token-budget pre-flight: how many image and text tokens each example of a split takes in the language model, their
distribution, the max_length that cuts nothing, and the examples a given max_length would cut, flagging those whose
cut removes image tokens ("Image features and image tokens do not match" in Qwen2-VL; FIELD_NOTES pain point 1).

It reads the columns of `training.pipeline.tokenize_split` (image tokens = prod(image_grid_thw) / merge_size**2 per
image under min/max_pixels, from the image sizes alone), so on a tokenized split it decodes no image.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import datasets
import numpy as np

from utils.errors import DataError

logger = logging.getLogger(__name__)

STREAM_SAMPLE = 1000  # examples of a stream checked when no number is given (a stream is not read twice up front)
_COLUMNS = ["uid", "length", "image_tokens", "image_end", "completion_length"]


def distribution(values: list[int]) -> dict[str, float]:
    """min / median / p95 / max of token counts."""
    a = np.asarray(values if values else [0])
    return {
        "min": int(a.min()),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": int(a.max()),
    }


@dataclass
class Cut:
    uid: str
    length: int  # tokens, images expanded
    image_end: int  # index after the last image token
    cuts_image_tokens: bool  # max_length < image_end: the cut falls inside (or before) image tokens


@dataclass
class TokenBudget:
    examples: int  # how many were counted (a sample when fewer than the split)
    image_tokens: dict[str, float]
    text_tokens: dict[str, float]
    total_tokens: dict[str, float]
    needed_max_length: int  # the smallest max_length that cuts none of the counted examples
    max_length: int | None = None
    cuts: list[Cut] = field(default_factory=list)

    @property
    def image_cuts(self) -> list[Cut]:
        return [c for c in self.cuts if c.cuts_image_tokens]

    def to_dict(self) -> dict:
        return asdict(self)


def token_columns(ds: datasets.Dataset | datasets.IterableDataset, limit: int | None = None) -> dict[str, list]:
    """The token-count columns of a tokenized split (the first `limit` rows; a stream: STREAM_SAMPLE by default)."""
    if isinstance(ds, datasets.IterableDataset):
        rows = list(ds.select_columns(_COLUMNS).take(limit or STREAM_SAMPLE))
        return {c: [r[c] for r in rows] for c in _COLUMNS}
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.select_columns(_COLUMNS).to_dict()


def token_budget(
    ds: datasets.Dataset | datasets.IterableDataset, max_length: int | None = None, limit: int | None = None
) -> TokenBudget:
    """Counts and distributions of a tokenized split, and the examples `max_length` would cut."""
    cols = token_columns(ds, limit)
    lengths, images = cols["length"], cols["image_tokens"]
    cuts = []
    if max_length is not None:
        for uid, length, end in zip(cols["uid"], lengths, cols["image_end"], strict=True):
            if length > max_length:
                cuts.append(Cut(uid, length, end, max_length < end))
    return TokenBudget(
        examples=len(lengths),
        image_tokens=distribution(images),
        text_tokens=distribution([n - i for n, i in zip(lengths, images, strict=True)]),
        total_tokens=distribution(lengths),
        needed_max_length=max(lengths, default=0),
        max_length=max_length,
        cuts=sorted(cuts, key=lambda c: -c.length),
    )


def describe_cuts(budget: TokenBudget, show: int = 10) -> str:
    """One line per cut example (the longest first), image cuts marked."""
    lines = []
    for c in budget.cuts[:show]:
        where = "INSIDE image tokens" if c.cuts_image_tokens else "in text after the images"
        lines.append(f"uid {c.uid}: {c.length} tokens, images end at {c.image_end}: cut {where}")
    if len(budget.cuts) > show:
        lines.append(f"... and {len(budget.cuts) - show} more")
    return "\n".join(lines)


def check_token_budget(
    ds: datasets.Dataset | datasets.IterableDataset, max_length: int | None, limit: int | None = None
) -> TokenBudget:
    """Refuse (DataError) a split with an example longer than max_length, before any step: the lab never truncates
    (the collator would stop at that batch), and a cut inside image tokens breaks Qwen2-VL."""
    budget = token_budget(ds, max_length, limit)
    logger.info(
        "pre-flight: %d examples, tokens min %d / median %.0f / p95 %.0f / max %d (image tokens max %d), max_length %s",
        budget.examples,
        *[budget.total_tokens[k] for k in ("min", "median", "p95", "max")],
        budget.image_tokens["max"],
        max_length,
    )
    if budget.cuts:
        image_cuts = len(budget.image_cuts)
        raise DataError(
            f"{len(budget.cuts)} of {budget.examples} training examples checked",
            f"longer than max_length={max_length} ({image_cuts} of them cut inside image tokens); set max_length to "
            f"at least {budget.needed_max_length} or lower max_pixels (scripts/preflight.py shows the distribution)"
            f":\n{describe_cuts(budget)}",
        )
    return budget
