"""Stand-in photographs for real NLVR2 annotations: the official layout (<root>/<split>.json + images/ under the
official file names) with generated images at the sizes of NLVR2's photographs, which cannot be downloaded here.

NLVR2's images are web photographs of every size: a few hundred pixels a side to several thousand, some panoramas and
banners (very wide), some very tall, and some files named .png that hold JPEG data. The stand-ins reproduce those
properties, not the content: a colour gradient with a few shapes, seeded per file name, so the same seed writes the
same bytes. Kinds cycle over the images in the order written, so even two examples (four images) include a very wide
and a very tall one:

  photo  long side 300-2000 px, aspect 4:3, 3:2, 16:9, 1:1 or their portrait forms
  wide   long side 800-3000 px, aspect 3:1 to 6:1
  tall   long side 800-3000 px, aspect 1:3 to 1:5
  large  long side 2000-4500 px, a photo aspect
Every third image is JPEG content under its .png name.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from vlm_datasets.labels import parse_identifier

KINDS = ("photo", "wide", "tall", "large", "photo", "photo", "large", "photo")
PHOTO_ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3, 9 / 16)
JPEG_EVERY = 3  # every third image: JPEG bytes under a .png name


@dataclass
class StandIn:
    name: str  # file name under images/
    kind: str
    width: int
    height: int
    format: str  # what the bytes are: PNG or JPEG (the name always ends in .png)


def draw_size(kind: str, rng: random.Random) -> tuple[int, int]:
    """(width, height) of a stand-in of this kind."""
    if kind == "wide":
        long_side, aspect = rng.randint(800, 3000), rng.uniform(3.0, 6.0)
    elif kind == "tall":
        long_side, aspect = rng.randint(800, 3000), 1 / rng.uniform(3.0, 5.0)
    else:
        lo, hi = (2000, 4500) if kind == "large" else (300, 2000)
        long_side, aspect = rng.randint(lo, hi), rng.choice(PHOTO_ASPECTS)
    if aspect >= 1:
        return long_side, max(1, round(long_side / aspect))
    return max(1, round(long_side * aspect)), long_side


def stand_in_image(width: int, height: int, rng: random.Random) -> Image.Image:
    """A colour gradient with a few filled shapes (cheap to draw and to compress at any size)."""
    start, end = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(2)]
    ramp = Image.linear_gradient("L").resize((width, height))  # 0..255 top to bottom
    image = Image.composite(Image.new("RGB", (width, height), end), Image.new("RGB", (width, height), start), ramp)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 6)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randint(1, max(1, width // 3)), y0 + rng.randint(1, max(1, height // 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image


def write_stand_in(path: Path, index: int, seed: int, fixed_size: tuple[int, int] | None = None) -> StandIn:
    """The index-th stand-in (its kind from KINDS, or `fixed_size` (width, height)), seeded by the seed and the name."""
    rng = random.Random(f"{seed}:{path.name}")
    kind = KINDS[index % len(KINDS)] if fixed_size is None else "fixed"
    width, height = draw_size(kind, rng) if fixed_size is None else fixed_size
    image = stand_in_image(width, height, rng)
    fmt = "JPEG" if index % JPEG_EVERY == JPEG_EVERY - 1 else "PNG"
    if fmt == "JPEG":
        image.save(path, format="JPEG", quality=90)
    else:
        image.save(path, format="PNG", compress_level=1)
    return StandIn(path.name, kind, width, height, fmt)


def write_official_layout(
    annotations: Path,
    root: Path,
    split: str,
    num_examples: int | None,
    seed: int = 0,
    fixed_size: tuple[int, int] | None = None,
) -> list[dict]:
    """<root>/<split>.json: the first `num_examples` lines of `annotations` (None: all), unchanged; <root>/images/: one
    stand-in per official image name they use, at NLVR2-like sizes or all at `fixed_size` (e.g. the pixel budget's
    bound, for a token count of a whole split). Returns the stand-ins written (images.json lists the same)."""
    lines = []
    with Path(annotations).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                lines.append(line if line.endswith("\n") else line + "\n")
            if len(lines) == num_examples:
                break
    if not lines:
        raise ValueError(f"{annotations}: no annotation lines")
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    (root / f"{split}.json").write_text("".join(lines), encoding="utf-8")
    from vlm_datasets.nlvr2_official import NUM_IMAGES  # here: that module imports datasets (rehearse.py --help)

    stems = {}  # ordered, unique: sentences of one pair share its images
    for line in lines:
        ident = parse_identifier(json.loads(line)["identifier"])
        stems |= dict.fromkeys(ident.image_stem(i) for i in range(NUM_IMAGES))
    written = [asdict(write_stand_in(images / f"{stem}.png", i, seed, fixed_size)) for i, stem in enumerate(stems)]
    (root / "images.json").write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
    return written
