"""Caption metrics (pycocoevalcap's scorers behind the lab's tokenization) on hand-checked fixtures."""

from __future__ import annotations

import math
import random

import pytest

from training.caption_metrics import bleu, caption_metrics, cider_scores, rouge_l_scores, tokenize

CAND = "A cat on the mat."
REF = "The cat is on the mat"


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A cat, on the MAT.") == ["a", "cat", "on", "the", "mat"]
    assert tokenize("top left: large red circle.") == ["top", "left", "large", "red", "circle"]
    assert tokenize("don't stop") == ["don't", "stop"]


def test_bleu_by_hand():
    # unigrams 4/5 (a unmatched), bigrams 2/4 (on the, the mat), trigrams 1/3 (on the mat), 4-grams 0/2;
    # brevity penalty exp(1 - 6/5): the candidate has 5 tokens, the reference 6.
    b1, b2, b3, b4 = bleu([CAND], [[REF]])
    bp = math.exp(1 - 6 / 5)
    assert b1 == pytest.approx(0.8 * bp)
    assert b2 == pytest.approx(math.sqrt(0.8 * 0.5) * bp)
    assert b3 == pytest.approx((0.8 * 0.5 / 3) ** (1 / 3) * bp)
    assert b4 < 1e-3  # no 4-gram matches and no smoothing: (almost) zero, as coco-caption gives
    assert bleu([REF], [[REF]])[3] == pytest.approx(1.0)


def test_bleu_uses_the_closest_reference_length():
    # The 5-token reference is the closest: no brevity penalty. Counts clip against the largest in any one reference,
    # so every candidate unigram matches ("a" from the second reference).
    assert bleu([CAND], [[REF, "a dog on a rug"]])[0] == pytest.approx(1.0)


def test_rouge_l_by_hand():
    # LCS(candidate, reference) = "cat on the mat" = 4; P = 4/5, R = 4/6; F with beta 1.2
    p, r, beta2 = 0.8, 4 / 6, 1.2**2
    assert rouge_l_scores([CAND], [[REF]])[0] == pytest.approx((1 + beta2) * p * r / (r + beta2 * p))
    assert rouge_l_scores(["nothing shared here"], [[REF]])[0] == 0.0


def test_cider_by_hand():
    # Each candidate equals its reference and shares no n-gram with the other image's: idf = log 2 for every
    # n-gram, cosine 1 at every order, no length penalty -> 10 (coco-caption's scale). A disjoint guess scores 0.
    refs = [["red circle top left"], ["blue square bottom right"]]
    assert cider_scores(["red circle top left", "blue square bottom right"], refs) == pytest.approx([10.0, 10.0])
    assert cider_scores(["blue square bottom right", "red circle top left"], refs) == pytest.approx([0.0, 0.0])


def test_caption_metrics_bundle_and_errors():
    m = caption_metrics([CAND, REF], [[REF], [REF, CAND]])
    assert set(m) == {"bleu1", "bleu4", "cider", "rouge_l"}
    with pytest.raises(ValueError, match="candidates"):
        caption_metrics([CAND], [[REF], [REF]])
    with pytest.raises(ValueError, match="non-empty list"):
        caption_metrics([CAND], [REF])  # a string, not a list of references


def test_scores_are_case_and_punctuation_insensitive(capsys):
    # The lab's tokenization is applied before pycocoevalcap's scorers (which split on spaces only): differently
    # cased and punctuated copies of the same captions score the same, and Bleu's verbose print stays silenced.
    rng = random.Random(0)
    words = "a the cat dog sits on mat red blue circle square top left right bottom small large".split()

    def sentence():
        return " ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))

    def noisy(text):
        return " ".join(w.upper() if rng.random() < 0.3 else w for w in text.split()).replace(" ", ", ", 1) + "."

    cands = [sentence() for _ in range(20)]
    refs = [[sentence() for _ in range(rng.randint(1, 4))] for _ in range(20)]
    noisy_cands, noisy_refs = [noisy(c) for c in cands], [[noisy(r) for r in rs] for rs in refs]
    assert noisy_cands != cands
    assert bleu(noisy_cands, noisy_refs) == pytest.approx(bleu(cands, refs), abs=1e-12)
    assert cider_scores(noisy_cands, noisy_refs) == pytest.approx(cider_scores(cands, refs), abs=1e-12)
    assert rouge_l_scores(noisy_cands, noisy_refs) == pytest.approx(rouge_l_scores(cands, refs), abs=1e-12)
    assert caption_metrics(cands, refs)["cider"] > 0
    assert capsys.readouterr().out == ""
