"""Caption metrics as the COCO caption evaluation computes them: BLEU-4, CIDEr (CIDEr-D) and ROUGE-L.

The scores come from pycocoevalcap's own scorers (the maintained coco-caption code; a runtime requirement):
pycocoevalcap.bleu.bleu.Bleu(4), pycocoevalcap.cider.cider.Cider (which is CIDEr-D: clipped TF-IDF n-gram cosine
with a Gaussian length penalty, times 10) and pycocoevalcap.rouge.rouge.Rouge (LCS F-measure, beta 1.2). This module
only tokenizes, checks the inputs and turns lists into the {id: [sentences]} dicts those scorers take.
- BLEU is corpus-level (option "closest", no smoothing); per-candidate values exist but are not exposed here.
- CIDEr-D's document frequencies are taken over the references of the candidates scored together.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

_PUNCT = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")  # punctuation, and quotes not inside a word (keep "don't")

Coco = dict[int, list[str]]


def tokenize(text: str) -> list[str]:
    """Lowercase, drop punctuation, split on whitespace."""
    # Stands in for coco-caption's PTBTokenizer, which runs Stanford CoreNLP (Java) in a subprocess.
    return _PUNCT.sub(" ", text.lower()).split()


def _check(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("no candidates to score")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"candidate {i}: references must be a non-empty list of strings")


def _coco(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[Coco, Coco]:
    """Checked and tokenized inputs as pycocoevalcap's (gts, res): {i: [references]}, {i: [candidate]}."""
    _check(candidates, references)
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(tokenize(c))] for i, c in enumerate(candidates)}
    return gts, res


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n (pycocoevalcap's Bleu, option "closest"): [BLEU-1, ..., BLEU-n]."""
    gts, res = _coco(candidates, references)
    corpus, _per_candidate = Bleu(n).compute_score(gts, res, verbose=0)  # verbose=0: no "{'testlen': ...}" print
    return [float(s) for s in corpus]


def cider_scores(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> list[float]:
    """Per-candidate CIDEr-D (pycocoevalcap's Cider); the corpus score is their mean."""
    gts, res = _coco(candidates, references)
    _corpus, per_candidate = Cider(n=n, sigma=sigma).compute_score(gts, res)
    return [float(s) for s in per_candidate]


def rouge_l_scores(candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> list[float]:
    """Per-candidate ROUGE-L F (pycocoevalcap's Rouge); the corpus score is their mean."""
    gts, res = _coco(candidates, references)
    scorer = Rouge()
    scorer.beta = beta  # Rouge sets 1.2 in __init__ and has no argument for it
    _corpus, per_candidate = scorer.compute_score(gts, res)
    return [float(s) for s in per_candidate]


def caption_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"bleu4", "cider", "rouge_l", "bleu1"} over the corpus, each on coco-caption's scale (CIDEr up to ~10)."""
    bleus = bleu(candidates, references)
    cider, rouge_l = cider_scores(candidates, references), rouge_l_scores(candidates, references)
    return {
        "bleu1": bleus[0],
        "bleu4": bleus[3],
        "cider": sum(cider) / len(cider),
        "rouge_l": sum(rouge_l) / len(rouge_l),
    }
