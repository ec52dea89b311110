"""Synthetic NLVR-style data, deterministic by seed: the embedded default dataset.

Each image is a grid of cells (28 px, one Qwen2-VL vision token each) holding coloured shapes. A sentence is a
predicate over the image pair whose truth is computed, written once and judged on `pairs_per_sentence` image
pairs with balanced labels, so uids and consistency groups follow NLVR2 (`split-set_id-pair_id-sentence_id`).
Categories mirror NLVR2's linguistic phenomena. `pretraining_rows` yields other tasks over the same scenes
(descriptions, counting, yes/no questions) used to give the embedded base model visual features.

Two knobs for ablations (SyntheticConfig; both off by default, and then the output is unchanged): `image_pairs`
spreads the examples over that many distinct image pairs, several statements judged on each (Q/A pairs per image
pair = examples / image_pairs), and `instructions` draws a prompt template per statement from task formats
(True/False, yes/no, which-image, counting; vlm_datasets.prompts), recorded in meta["prompt_template"].
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageDraw

from vlm_datasets.example import Example

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (225, 195, 20)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
CATEGORIES = (
    "existential quantifier",
    "hard cardinality",
    "soft cardinality",
    "comparison",
    "spatial relation",
    "negation",
    "universal quantifier",
    "coordination",
)
CELL = 28  # pixels per cell: one Qwen2-VL vision token (patch 14, 2x2 merge)
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIDES = ("left", "right")


@dataclass(frozen=True)
class Obj:
    row: int
    col: int
    color: str
    shape: str
    size: str


Scene = tuple[Obj, ...]
Pair = tuple[Scene, Scene]  # (left, right)


@dataclass
class Statement:
    text: str
    category: str
    holds: Callable[[Pair], bool]


def _noun(color: str | None, shape: str | None, plural: bool, size: str | None = None) -> str:
    words = [w for w in (size, color) if w]
    noun = shape or "object"
    words.append(noun + ("s" if plural else ""))
    return " ".join(words)


def _count(scene: Scene, color=None, shape=None, size=None) -> int:
    return sum(
        (color is None or o.color == color) and (shape is None or o.shape == shape) and (size is None or o.size == size)
        for o in scene
    )


def random_scene(rng: random.Random, grid: int, max_objects: int) -> Scene:
    n = rng.randint(1, max_objects)
    cells = rng.sample([(r, c) for r in range(grid) for c in range(grid)], n)
    objs = [Obj(r, c, rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(SIZES)) for r, c in sorted(cells)]
    return tuple(objs)


def render(scene: Scene, grid: int, rng: random.Random) -> Image.Image:
    """Draw a scene as an RGB image of grid*28 pixels a side (small positional jitter, deterministic by rng)."""
    side = grid * CELL
    img = Image.new("RGB", (side, side), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    for o in scene:
        half = 11 if o.size == "large" else 6
        cx = o.col * CELL + CELL // 2 + rng.randint(-1, 1)
        cy = o.row * CELL + CELL // 2 + rng.randint(-1, 1)
        box = (cx - half, cy - half, cx + half, cy + half)
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return img


# ---- statements, one sampler per category; attributes are drawn from the scene half of the time ----------------


def _attrs(rng: random.Random, scene: Scene, want_color=True, want_shape=True):
    if scene and rng.random() < 0.6:
        o = rng.choice(scene)
        color, shape = o.color, o.shape
    else:
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    if want_color and want_shape:
        mode = rng.choice(("color", "shape", "both"))
        return (color if mode != "shape" else None), (shape if mode != "color" else None)
    return (color if want_color else None), (shape if want_shape else None)


def _existential(rng, pair):
    s = rng.randrange(2)
    color, shape = _attrs(rng, pair[s])
    if rng.random() < 0.5:
        art = "an" if (color or shape or "o")[0] in "aeiou" else "a"
        text = f"There is {art} {_noun(color, shape, False)} in the {SIDES[s]} image."
        return text, lambda p: _count(p[s], color, shape) > 0
    text = f"At least one of the images contains a {_noun(color, shape, False)}."
    return text, lambda p: _count(p[0], color, shape) + _count(p[1], color, shape) > 0


def _hard_cardinality(rng, pair):
    s = rng.randrange(2)
    color, shape = _attrs(rng, pair[s])
    n = max(1, _count(pair[s], color, shape) + rng.choice((-1, 0, 0, 1)))
    text = f"The {SIDES[s]} image contains exactly {NUMBERS[n]} {_noun(color, shape, n != 1)}."
    return text, lambda p: _count(p[s], color, shape) == n


def _soft_cardinality(rng, pair):
    s = rng.randrange(2)
    color, shape = _attrs(rng, pair[s])
    n = rng.randint(1, 3)
    if rng.random() < 0.5:
        text = f"The {SIDES[s]} image contains at least {NUMBERS[n]} {_noun(color, shape, n != 1)}."
        return text, lambda p: _count(p[s], color, shape) >= n
    text = f"The {SIDES[s]} image contains at most {NUMBERS[n]} {_noun(color, shape, n != 1)}."
    return text, lambda p: _count(p[s], color, shape) <= n


def _comparison(rng, pair):
    color, shape = _attrs(rng, pair[0] + pair[1])
    noun = _noun(color, shape, True)
    kind = rng.choice(("more", "fewer", "same"))
    if kind == "more":
        return (
            f"The left image contains more {noun} than the right image.",
            lambda p: _count(p[0], color, shape) > _count(p[1], color, shape),
        )
    if kind == "fewer":
        return (
            f"The left image contains fewer {noun} than the right image.",
            lambda p: _count(p[0], color, shape) < _count(p[1], color, shape),
        )
    return (
        f"Both images contain the same number of {noun}.",
        lambda p: _count(p[0], color, shape) == _count(p[1], color, shape),
    )


_RELATIONS = {
    "to the left of": lambda a, b: a.col < b.col,
    "to the right of": lambda a, b: a.col > b.col,
    "above": lambda a, b: a.row < b.row,
    "below": lambda a, b: a.row > b.row,
}


def _spatial(rng, pair):
    s = rng.randrange(2)
    c1, s1 = _attrs(rng, pair[s], want_color=True, want_shape=True)
    c2, s2 = _attrs(rng, pair[s], want_color=True, want_shape=True)
    rel_name = rng.choice(list(_RELATIONS))
    rel = _RELATIONS[rel_name]

    def holds(p):
        scene = p[s]
        firsts = [o for o in scene if (c1 is None or o.color == c1) and (s1 is None or o.shape == s1)]
        seconds = [o for o in scene if (c2 is None or o.color == c2) and (s2 is None or o.shape == s2)]
        return any(rel(a, b) for a in firsts for b in seconds if a is not b)

    text = f"In the {SIDES[s]} image, a {_noun(c1, s1, False)} is {rel_name} a {_noun(c2, s2, False)}."
    return text, holds


def _negation(rng, pair):
    s = rng.randrange(2)
    color, shape = _attrs(rng, pair[s])
    if rng.random() < 0.5:
        return (
            f"The {SIDES[s]} image does not contain any {_noun(color, shape, True)}.",
            lambda p: _count(p[s], color, shape) == 0,
        )
    return (
        f"Neither image contains a {_noun(color, shape, False)}.",
        lambda p: _count(p[0], color, shape) + _count(p[1], color, shape) == 0,
    )


def _universal(rng, pair):
    s = rng.randrange(2)
    color, shape = _attrs(rng, pair[s], want_color=True, want_shape=True)
    mode = rng.choice(("color", "shape"))
    if mode == "color":
        color = color or rng.choice(list(COLORS))
        return f"All objects in the {SIDES[s]} image are {color}.", lambda p: all(o.color == color for o in p[s])
    shape = shape or rng.choice(SHAPES)
    return f"Every object in the {SIDES[s]} image is a {shape}.", lambda p: all(o.shape == shape for o in p[s])


def _coordination(rng, pair):
    c1, s1 = _attrs(rng, pair[0])
    c2, s2 = _attrs(rng, pair[1])
    if rng.random() < 0.6:
        text = (
            f"The left image contains a {_noun(c1, s1, False)} and the right image contains a {_noun(c2, s2, False)}."
        )
        return text, lambda p: _count(p[0], c1, s1) > 0 and _count(p[1], c2, s2) > 0
    text = f"The left image contains a {_noun(c1, s1, False)} or the right image contains a {_noun(c2, s2, False)}."
    return text, lambda p: _count(p[0], c1, s1) > 0 or _count(p[1], c2, s2) > 0


def _which_image(rng, pair):
    """Which-image task: something exactly one image holds. holds() is True when it is the left image, False when the
    right, None when both or neither hold it (the statement does not apply to that pair)."""
    s = rng.randrange(2)
    color, shape = _attrs(rng, pair[s])
    text = f"Exactly one image contains a {_noun(color, shape, False)}."

    def holds(p):
        left, right = _count(p[0], color, shape) > 0, _count(p[1], color, shape) > 0
        return left if left != right else None

    return text, holds


_SAMPLERS = dict(
    zip(
        CATEGORIES,
        (
            _existential,
            _hard_cardinality,
            _soft_cardinality,
            _comparison,
            _spatial,
            _negation,
            _universal,
            _coordination,
        ),
        strict=True,
    )
)


# Task formats that need statements of their own: (the category recorded, the sampler); the others use the category's.
_FORMAT_SAMPLERS = {
    "which_image": ("existential quantifier", _which_image),
    "counting": ("hard cardinality", _hard_cardinality),
}
_SCAN = 64  # image-pair mode: open pairs a sentence is tried on
_ALONE_AFTER = 200  # image-pair mode: failed sentences before one may be judged on a single pair
_TRIES_PER_CATEGORY = 50  # image-pair mode: failed sentences of one category before the next is tried


@dataclass
class SyntheticConfig:
    grid: int = 2
    max_objects: int = 4
    pairs_per_sentence: int = 4
    categories: tuple[str, ...] = CATEGORIES
    max_tries: int = 2000
    image_pairs: int | None = None  # distinct image pairs in the split; None: sentence-major, as NLVR2
    instructions: dict[str, tuple[str, ...]] | None = None  # task format -> template names; None: the run's template


def _scene_json(scene: Scene) -> list[dict]:
    return [o.__dict__ for o in scene]


def _instruction(rng: random.Random, cfg: SyntheticConfig, category: str):
    """(template name, task format, category, sampler) of the next statement; no draw without cfg.instructions."""
    if not cfg.instructions:
        return None, None, category, _SAMPLERS[category]
    fmt = rng.choice(list(cfg.instructions))
    name = rng.choice(cfg.instructions[fmt])
    category, sampler = _FORMAT_SAMPLERS.get(fmt, (category, _SAMPLERS[category]))
    return name, fmt, category, sampler


def _meta(seed: int, category: str, pair: Pair, images, template: str | None, task_format: str | None) -> dict:
    meta = {
        "source": "synthetic",
        "seed": seed,
        "category": category,
        "scenes": [_scene_json(s) for s in pair],
        "image_sizes": [list(im.size) for im in images],
    }
    if template is not None:
        meta |= {"prompt_template": template, "task_format": task_format}
    return meta


def generate(split: str, num_examples: int, seed: int, config: SyntheticConfig | None = None) -> Iterator[Example]:
    """Yield `num_examples` canonical examples with balanced labels; uids `syn_{split}-{set}-{pair}-0`."""
    cfg = config or SyntheticConfig()
    unknown = set(cfg.categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown synthetic categories {sorted(unknown)}; known: {list(CATEGORIES)}")
    if cfg.image_pairs is not None:
        yield from _generate_by_pair(split, num_examples, seed, cfg)
        return
    rng = random.Random(f"{seed}-{split}")
    produced, set_id = 0, 0
    while produced < num_examples:
        category = cfg.categories[set_id % len(cfg.categories)]
        first = (random_scene(rng, cfg.grid, cfg.max_objects), random_scene(rng, cfg.grid, cfg.max_objects))
        template, task_format, category, sampler = _instruction(rng, cfg, category)
        text, holds = sampler(rng, first)
        wanted = [True, False] * ((cfg.pairs_per_sentence + 1) // 2)
        wanted = wanted[: cfg.pairs_per_sentence]
        rng.shuffle(wanted)
        pairs = []
        for want in wanted:
            for _ in range(cfg.max_tries):
                pair = first if not pairs and holds(first) == want else None
                if pair is None:
                    pair = (
                        random_scene(rng, cfg.grid, cfg.max_objects),
                        random_scene(rng, cfg.grid, cfg.max_objects),
                    )
                if holds(pair) == want:
                    pairs.append((pair, want))
                    break
        if len(pairs) < len(wanted):  # a sentence too rare to balance: draw another
            set_id += 1
            continue
        for pair_id, (pair, label) in enumerate(pairs):
            if produced >= num_examples:
                break
            images = [render(scene, cfg.grid, rng) for scene in pair]
            yield Example(
                uid=f"syn_{split}-{set_id}-{pair_id}-0",
                images=images,
                sentence=text,
                label=label,
                meta=_meta(seed, category, pair, images, template, task_format),
            )
            produced += 1
        set_id += 1


@contextmanager
def _recording_truths(truths: dict[str, Callable[[Pair], bool]]):
    """While inside, every statement sampled records its sentence -> truth function (not thread-safe)."""
    samplers, formats = dict(_SAMPLERS), dict(_FORMAT_SAMPLERS)

    def recorded(sampler):
        def sample(rng, pair):
            text, holds = sampler(rng, pair)
            truths.setdefault(text, holds)  # a sentence's truth depends on its words only
            return text, holds

        return sample

    _SAMPLERS.update({name: recorded(f) for name, f in samplers.items()})
    _FORMAT_SAMPLERS.update({name: (cat, recorded(f)) for name, (cat, f) in formats.items()})
    try:
        yield truths
    finally:
        _SAMPLERS.update(samplers)
        _FORMAT_SAMPLERS.update(formats)


def statement_truths(
    split: str, num_examples: int, seed: int, config: SyntheticConfig | None = None
) -> tuple[list[Example], dict[str, Callable[[Pair], bool]]]:
    """The split `generate` yields and, for each of its sentences, the generator's own truth function over an
    image pair (scenes), so a sentence can be judged on other scenes (for example the pair swapped)."""
    with _recording_truths({}) as truths:
        examples = list(generate(split, num_examples, seed, config))
    return examples, {ex.sentence: truths[ex.sentence] for ex in examples}


def scenes_of(example: Example) -> Pair:
    """The (left, right) scenes of a synthetic example, from its meta."""
    left, right = (tuple(Obj(**o) for o in scene) for scene in example.meta["scenes"])
    return left, right


def _generate_by_pair(split: str, num_examples: int, seed: int, cfg: SyntheticConfig) -> Iterator[Example]:
    """`cfg.image_pairs` distinct image pairs with the examples spread over them (examples / image_pairs statements
    judged on each, labels balanced within each pair up to one). Sentence-major as NLVR2: every sentence is judged on
    as many pairs where it holds as pairs where it does not (up to `pairs_per_sentence` in all), so neither the
    sentence nor the image pair alone tells the label. uids `syn_{split}-{pair}-0-{statement}` (an image pair is the
    identifier without its sentence id, as in NLVR2); meta["sentence_id"] links one sentence's examples."""
    n_pairs = cfg.image_pairs
    if not 1 <= n_pairs <= num_examples:
        raise ValueError(f"image_pairs must be between 1 and the number of examples ({num_examples}), got {n_pairs}")
    rng = random.Random(f"{seed}-{split}-pairs")
    pool = [
        (random_scene(rng, cfg.grid, cfg.max_objects), random_scene(rng, cfg.grid, cfg.max_objects))
        for _ in range(n_pairs)
    ]
    images = [[render(scene, cfg.grid, rng) for scene in pair] for pair in pool]
    need = {True: [0] * n_pairs, False: [0] * n_pairs}  # statements each pair still needs, by label
    start = 0
    for pair_id in range(n_pairs):
        size = num_examples // n_pairs + (pair_id < num_examples % n_pairs)
        for i in range(start, start + size):
            need[i % 2 == 0][pair_id] += 1
        start += size
    left = {label: sum(need[label]) for label in (True, False)}
    open_pairs: dict[bool, list[int]] = {True: [], False: []}  # this round's pairs still to take a statement
    used: list[set[str]] = [set() for _ in range(n_pairs)]
    rows: list[list[tuple]] = [[] for _ in range(n_pairs)]
    half = max(1, cfg.pairs_per_sentence // 2)
    sentence_id = failures = 0
    while left[True] or left[False]:
        for label in (True, False):
            if not open_pairs[label]:  # a new round: every pair with a need takes at most one statement per label
                open_pairs[label] = [p for p in range(n_pairs) if need[label][p]]
                rng.shuffle(open_pairs[label])
        template, task_format, category, sampler = _instruction(
            rng, cfg, cfg.categories[(sentence_id + failures // _TRIES_PER_CATEGORY) % len(cfg.categories)]
        )
        anchor = rng.choice(open_pairs[True] or open_pairs[False])
        text, holds = sampler(rng, pool[anchor])
        found = {
            label: [p for p in open_pairs[label][:_SCAN] if text not in used[p] and holds(pool[p]) is label][:half]
            for label in (True, False)
        }
        # As many pairs where it holds as where it does not. At the very end (an odd total, or the last open pairs
        # taking no sentence both ways) a statement may go alone.
        take = {label: found[label][: min(len(found[True]), len(found[False]))] for label in (True, False)}
        if not take[True] and (left[True] + left[False] == 1 or failures >= _ALONE_AFTER):
            label = bool(found[True])
            take = {label: found[label][:1], not label: []}
        if not take[True] and not take[False]:
            failures += 1
            if failures > cfg.max_tries:
                stuck = sorted({p for label in (True, False) for p in open_pairs[label][:1]})
                raise ValueError(
                    f"synthetic image pairs {stuck}: no new statement fits them in {cfg.max_tries} tries; "
                    f"{num_examples // n_pairs} statements per pair is too many for this scene size "
                    "(use more image pairs)"
                )
            continue
        failures = 0
        for label in (True, False):
            for p in take[label]:
                rows[p].append((text, label, category, template, task_format, sentence_id))
                used[p].add(text)
                need[label][p] -= 1
                left[label] -= 1
                open_pairs[label].remove(p)
        sentence_id += 1
    for pair_id, pair_rows in enumerate(rows):
        for q, (text, label, category, template, task_format, sid) in enumerate(pair_rows):
            meta = _meta(seed, category, pool[pair_id], images[pair_id], template, task_format)
            yield Example(
                uid=f"syn_{split}-{pair_id}-0-{q}",
                images=images[pair_id],
                sentence=text,
                label=label,
                meta=meta | {"sentence_id": sid},
            )


# ---- other tasks over the same scenes, for pretraining the embedded base -----------------------------------------

_POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)


def _position_name(row: int, col: int, grid: int) -> str:
    if grid == 3:
        return _POSITIONS[row][col]
    if grid == 2:
        return f"{('top', 'bottom')[row]} {('left', 'right')[col]}"
    return f"row {row} column {col}"


def describe(scene: Scene, grid: int) -> str:
    """E.g. 'top left: large red circle. center: small blue square.' (row-major order)."""
    parts = []
    for o in scene:
        pos = _position_name(o.row, o.col, grid)
        parts.append(f"{pos}: {o.size} {o.color} {o.shape}.")
    return " ".join(parts)


def count_table(scene: Scene, by: str) -> str:
    """E.g. "red one, green zero, blue two, yellow zero." (by colour) or the same by shape."""
    if by == "color":
        return ", ".join(f"{c} {NUMBERS[_count(scene, color=c)]}" for c in COLORS) + "."
    return ", ".join(f"{sh} {NUMBERS[_count(scene, shape=sh)]}" for sh in SHAPES) + "."


def pretraining_rows(num_rows: int, seed: int, config: SyntheticConfig | None = None) -> Iterator[dict]:
    """Yield {"images": [left, right], "question": str, "answer": str}: tasks about ONE of the two images.

    Count tables (every colour or every shape counted in one answer: dense supervision of the attribute lookups
    that statements need), descriptions, yes/no existence questions and single-image existence statements.
    """
    cfg = config or SyntheticConfig()
    rng = random.Random(f"pretrain-{seed}")
    for _ in range(num_rows):
        pair = (random_scene(rng, cfg.grid, cfg.max_objects), random_scene(rng, cfg.grid, cfg.max_objects))
        s = rng.randrange(2)
        task = rng.random()
        color, shape = _attrs(rng, pair[s])
        n = _count(pair[s], color, shape)
        if task < 0.5:
            by = rng.choice(("color", "shape"))
            question = f"Count the objects of each {by} in the {SIDES[s]} image."
            answer = count_table(pair[s], by)
        elif task < 0.6:
            question, answer = f"Describe the {SIDES[s]} image.", describe(pair[s], cfg.grid)
        elif task < 0.8:
            question = f"Is there a {_noun(color, shape, False)} in the {SIDES[s]} image?"
            answer = "yes" if n else "no"
        else:
            question = f"True or false: the {SIDES[s]} image contains a {_noun(color, shape, False)}."
            answer = "True" if n else "False"
        yield {"images": [render(scene, cfg.grid, rng) for scene in pair], "question": question, "answer": answer}
