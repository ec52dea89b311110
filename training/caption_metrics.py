"""Caption metrics as the COCO caption evaluation computes them: BLEU-4, CIDEr (CIDEr-D) and ROUGE-L.

A small implementation of the published definitions, written to give the numbers of the coco-caption scorers
(pycocoevalcap 1.2: bleu/bleu_scorer.py, cider/cider_scorer.py, rouge/rouge.py), which tests/training/
test_caption_metrics.py checks against pycocoevalcap (a test requirement). It is not a runtime dependency: it is
100 MB (Java jars for its PTB tokenizer, METEOR and SPICE); these three scorers need none of that.
- BLEU (Papineni et al. 2002): corpus-level, clipped n-gram precisions n=1..4, geometric mean, brevity penalty
  against the reference length closest to each candidate's (coco-caption's "closest"); no smoothing.
- CIDEr-D (Vedantam et al. 2015, as coco-caption implements it): TF-IDF n-gram vectors (n=1..4, document
  frequencies over the evaluated images' references), clipped cosine similarity, Gaussian length penalty
  (sigma 6), averaged over n and references, times 10.
- ROUGE-L (Lin 2004): longest common subsequence F-measure with beta 1.2, best precision and recall over the
  references, averaged over candidates.
Tokenization stands in for coco-caption's PTB tokenizer (Java): lowercase, punctuation removed, split on spaces.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_PUNCT = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")  # punctuation, and quotes not inside a word (keep "don't")

Ngrams = Counter[tuple[str, ...]]


def tokenize(text: str) -> list[str]:
    """Lowercase, drop punctuation, split on whitespace (PTB-tokenizer stand-in)."""
    return _PUNCT.sub(" ", text.lower()).split()


def ngrams(tokens: Sequence[str], n: int = 4) -> Ngrams:
    """Counts of every 1..n-gram of `tokens`."""
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def _check(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("no candidates to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"candidate {i}: references must be a non-empty list of strings")


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n (coco-caption's Bleu scorer, option "closest"): [BLEU-1, ..., BLEU-n]."""
    _check(candidates, references)
    correct, guess = [0] * n, [0] * n
    test_len = ref_len = 0
    for cand, refs in zip(candidates, references, strict=True):
        tokens = tokenize(cand)
        ref_tokens = [tokenize(r) for r in refs]
        max_ref: Counter = Counter()
        for r in ref_tokens:
            max_ref |= ngrams(r, n)  # per n-gram, the largest count in any one reference
        test_len += len(tokens)
        ref_len += min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]  # closest; ties: shorter
        for gram, count in ngrams(tokens, n).items():
            correct[len(gram) - 1] += min(max_ref[gram], count)
        for k in range(n):
            guess[k] += max(len(tokens) - k, 0)
    tiny, small = 1e-15, 1e-9  # coco-caption's guards: a zero count gives (almost) zero, never a division error
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _tfidf(counts: Ngrams, df: Counter, log_n_images: float, n: int):
    """Per-order TF-IDF vectors, their norms and coco-caption's 'length' (which counts bigrams: kept for parity)."""
    vecs: list[dict] = [{} for _ in range(n)]
    norms = [0.0] * n
    length = 0
    for gram, tf in counts.items():
        k = len(gram) - 1
        vecs[k][gram] = tf * (log_n_images - math.log(max(1.0, df[gram])))
        norms[k] += vecs[k][gram] ** 2
        if k == 1:
            length += tf
    return vecs, [math.sqrt(x) for x in norms], length


def cider_scores(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> list[float]:
    """Per-candidate CIDEr-D (coco-caption's Cider scorer); the corpus score is their mean."""
    _check(candidates, references)
    refs_counts = [[ngrams(tokenize(r), n) for r in refs] for refs in references]
    df: Counter = Counter()
    for counts in refs_counts:  # document frequency: in how many images' references an n-gram occurs
        df.update(set().union(*(c.keys() for c in counts)))
    log_n = math.log(float(len(candidates)))
    scores = []
    for cand, counts in zip(candidates, refs_counts, strict=True):
        vec, norm, length = _tfidf(ngrams(tokenize(cand), n), df, log_n, n)
        total = np.zeros(n)
        for ref in counts:
            vec_r, norm_r, length_r = _tfidf(ref, df, log_n, n)
            penalty = math.exp(-((length - length_r) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vec_r[k].get(g, 0.0)) * vec_r[k].get(g, 0.0) for g, w in vec[k].items())
                if norm[k] != 0 and norm_r[k] != 0:
                    val /= norm[k] * norm_r[k]
                total[k] += val * penalty
        scores.append(float(total.mean() / len(counts) * 10.0))
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, start=1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l_scores(candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> list[float]:
    """Per-candidate ROUGE-L F (coco-caption's Rouge scorer); the corpus score is their mean."""
    _check(candidates, references)
    scores = []
    for cand, refs in zip(candidates, references, strict=True):
        tokens = tokenize(cand)
        precisions, recalls = [0.0], [0.0]
        for ref in refs:
            r = tokenize(ref)
            lcs = _lcs(r, tokens)
            precisions.append(lcs / len(tokens) if tokens else 0.0)
            recalls.append(lcs / len(r) if r else 0.0)
        p, r = max(precisions), max(recalls)
        scores.append((1 + beta**2) * p * r / (r + beta**2 * p) if p and r else 0.0)
    return scores


def caption_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"bleu4", "cider", "rouge_l", "bleu1"} over the corpus, each on coco-caption's scale (CIDEr up to ~10)."""
    bleus = bleu(candidates, references)
    return {
        "bleu1": bleus[0],
        "bleu4": bleus[3],
        "cider": float(np.mean(cider_scores(candidates, references))),
        "rouge_l": float(np.mean(rouge_l_scores(candidates, references))),
    }
