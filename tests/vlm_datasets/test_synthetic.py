"""The synthetic NLVR-style generator: deterministic, balanced, NLVR2-shaped uids, every category, truthful labels."""

from __future__ import annotations

from collections import Counter

import numpy as np

from vlm_datasets.labels import parse_identifier
from vlm_datasets.synthetic import CATEGORIES, Obj, SyntheticConfig, _count, count_table, generate, pretraining_rows


def test_deterministic_by_seed_and_split():
    a, b = list(generate("dev", 40, seed=1)), list(generate("dev", 40, seed=1))
    assert [(x.uid, x.sentence, x.label) for x in a] == [(x.uid, x.sentence, x.label) for x in b]
    assert all(
        np.array_equal(np.array(p), np.array(q))
        for x, y in zip(a, b, strict=True)
        for p, q in zip(x.images, y.images, strict=True)
    )
    other = list(generate("dev", 40, seed=2))
    assert [x.sentence for x in a] != [x.sentence for x in other]
    assert {x.uid.split("-")[0] for x in generate("test", 8, seed=1)} == {"syn_test"}


def test_balanced_labels_groups_and_categories():
    examples = list(generate("train", 256, seed=0))
    assert Counter(x.label for x in examples) == {True: 128, False: 128}
    assert {x.meta["category"] for x in examples} == set(CATEGORIES)
    groups = Counter(parse_identifier(x.uid).consistency_group for x in examples)
    assert set(groups.values()) == {4}  # one sentence judged on four image pairs, as in NLVR2
    for group in groups:
        members = [x for x in examples if parse_identifier(x.uid).consistency_group == group]
        assert len({x.sentence for x in members}) == 1
        assert Counter(x.label for x in members) == {True: 2, False: 2}


def test_images_match_the_grid_and_scenes():
    cfg = SyntheticConfig(grid=2)
    ex = next(generate("dev", 1, seed=0, config=cfg))
    assert [im.size for im in ex.images] == [(56, 56), (56, 56)] and all(im.mode == "RGB" for im in ex.images)
    for image, scene in zip(ex.images, ex.meta["scenes"], strict=True):
        pixels = np.array(image)
        for obj in scene:  # the cell centre holds the object's colour, an empty cell stays background
            cy, cx = obj["row"] * 28 + 14, obj["col"] * 28 + 14
            assert pixels[cy, cx].tolist() != [245, 245, 240]


def test_existential_labels_agree_with_the_scenes():
    for ex in generate("dev", 200, seed=4, config=SyntheticConfig(categories=("existential quantifier",))):
        words = ex.sentence.rstrip(".").split()
        if not words[0] == "There":
            continue
        side = 0 if "left" in words else 1
        scene = [Obj(**o) for o in ex.meta["scenes"][side]]
        noun = words[3:-3]  # "There is a red circle in the left image"
        color = next((w for w in noun if w in ("red", "green", "blue", "yellow")), None)
        shape = next((w for w in noun if w in ("circle", "square", "triangle")), None)
        assert (_count(tuple(scene), color, shape) > 0) == ex.label, ex.sentence


def test_pretraining_rows_are_other_tasks():
    rows = list(pretraining_rows(200, seed=0))
    assert all(len(r["images"]) == 2 and r["answer"] for r in rows)
    kinds = Counter(r["question"].split()[0] for r in rows)
    assert set(kinds) == {"Count", "Describe", "Is", "True"}
    scene = (Obj(0, 0, "red", "circle", "small"), Obj(1, 1, "red", "square", "large"))
    assert count_table(scene, "color") == "red two, green zero, blue zero, yellow zero."
