"""The synthetic story generator: deterministic by seed and split, varied, self-consistent; the text sources."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from vlm_datasets.stories import PLOTS, generate_stories, story
from vlm_datasets.text import TextDataArguments, TextSourceUnreachableError, load_texts


def test_deterministic_by_seed_and_split():
    assert generate_stories(50, seed=3) == generate_stories(50, seed=3)
    assert generate_stories(50, seed=3) != generate_stories(50, seed=4)
    assert set(generate_stories(200, seed=3, split="train")).isdisjoint(
        generate_stories(200, seed=3, split="validation")
    )


def test_varied_enough_that_memorizing_does_not_pay():
    stories = generate_stories(2000, seed=0)
    assert len(set(stories)) / len(stories) > 0.99  # distinct stories
    words = Counter(w.strip('.,!?"').lower() for s in stories for w in s.split())
    assert len(words) > 400  # vocabulary size
    openings = Counter(s.split(".")[0] for s in stories)
    assert len(openings) > 500  # many first sentences, none dominant
    assert max(openings.values()) < 0.02 * len(stories)
    lengths = [len(s.split()) for s in stories]
    assert 50 < sum(lengths) / len(lengths) < 200 and max(lengths) > min(lengths) + 20


@pytest.mark.parametrize("plot", sorted(PLOTS))
def test_every_plot_has_dialogue_and_a_causal_turn(plot):
    rng = random.Random(plot)
    for _ in range(20):
        text = story(rng, plot)
        assert '"' in text, text
        assert re.search(r"\b(because|so|but|then|when|until)\b", text, re.IGNORECASE), text


def test_all_plots_are_drawn():
    assert len(PLOTS) >= 6
    first_plot_sentences = {plot: story(random.Random(0), plot) for plot in PLOTS}
    assert len(set(first_plot_sentences.values())) == len(PLOTS)


def test_stories_are_single_paragraphs_with_balanced_quotes_and_a_recurring_hero():
    for text in generate_stories(300, seed=1):
        assert "\n" not in text and text == text.strip()
        assert text.count('"') % 2 == 0, text
        names = Counter(re.findall(r"\b[A-Z][a-z]+\b", text))
        assert names.most_common(1)[0][1] >= 3, text  # the hero is named again and again: context pays off


def test_synthetic_source_rows():
    args = TextDataArguments(dataset_source="synthetic", synthetic_train_docs=30, max_eval_docs=7)
    train, held_out = load_texts(args)
    assert train.column_names == ["text"] and len(train) == 30 and len(held_out) == 7
    assert list(train["text"]) == generate_stories(30, 0, "train")


def test_local_text_lines_and_paragraphs(tmp_path):
    stories = generate_stories(40, seed=2)
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(stories[:20]) + "\n\n" + "\n".join(stories[20:]) + "\n", encoding="utf-8")
    train, held_out = load_texts(TextDataArguments(dataset_source="text", dataset_path=str(lines), max_eval_docs=4))
    assert len(train) == 36 and len(held_out) == 4  # the blank line is no story
    assert sorted(list(train["text"]) + list(held_out["text"])) == sorted(stories)

    paragraphs = tmp_path / "paragraphs.txt"  # a story over two lines, stories separated by blank lines
    multi = [s.replace(". ", ".\n", 1) for s in stories[:10]]
    paragraphs.write_text("\n\n".join(multi) + "\n", encoding="utf-8")
    held_out_file = tmp_path / "held_out.txt"
    held_out_file.write_text("\n\n\n".join(stories[10:16]), encoding="utf-8")  # extra blank lines are no story
    args = TextDataArguments(
        dataset_source="text",
        dataset_path=str(paragraphs),
        dataset_eval_path=str(held_out_file),
        text_sample_by="paragraph",
        max_eval_docs=5,
    )
    train, held_out = load_texts(args)
    assert list(train["text"]) == multi and list(held_out["text"]) == stories[10:15]


def test_hub_offline_fails_with_a_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextSourceUnreachableError, match="--dataset_source synthetic"):
        load_texts(TextDataArguments(dataset_source="hub", dataset_name="roneneldan/TinyStories"))
