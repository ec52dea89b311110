"""NLVR2 metrics from uid-keyed predictions and labels, no model and no images: accuracy, consistency, accuracy per
linguistic phenomenon (or synthetic category), accuracy and consistency per balanced/unbalanced subset, each with a
seeded bootstrap CI. The command line: evals/metrics.py.

Definitions, as NLVR2's own evaluation script (nlvr2/eval/metrics.py) computes them:
- accuracy (the paper's "precision"): correct predictions / examples; an unparseable prediction (null) counts as
  wrong, never as a guess.
- consistency: examples grouped by identifier with the pair_id removed (split-set_id-*-sentence_id: one sentence
  judged on up to four image pairs of its set; not grouped by sentence text); the fraction of groups whose every
  example is right. Uids that are not NLVR2 identifiers are left out of it and counted (n_consistency_excluded).
- a subset (balanced_dev.json, unbalanced_dev.json): both over the subset's own examples, its groups formed from them
  alone, as the official script gives with the subset file as its labels."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from evals.prediction_files import (
    Prediction,
    load_annotations,
    load_labels,
    load_run,
    write_predictions_csv,
)
from utils.errors import DataError
from vlm_datasets.labels import parse_identifier

LIST_LIMIT = 20  # uids named in an error message or an intersection note
_BOOTSTRAP_CHUNK = 100  # resamples drawn at once: [chunk, n] indices


def name_some(uids: Sequence[str]) -> str:
    """The first LIST_LIMIT uids, comma-separated, and how many more."""
    more = f" ... ({len(uids) - LIST_LIMIT} more)" if len(uids) > LIST_LIMIT else ""
    return ", ".join(uids[:LIST_LIMIT]) + more


def align_uids(
    predictions: Mapping[str, Prediction], labels: Mapping[str, bool], intersection: bool = False, where: str = "?"
) -> tuple[list[str], dict]:
    """The uids to score (labels' order) and a coverage note; refuses missing or extra uids unless intersection."""
    missing = [u for u in labels if u not in predictions]
    extra = [u for u in predictions if u not in labels]
    if (missing or extra) and not intersection:
        raise DataError(
            where,
            f"predictions and labels hold different uids: {len(missing)} missing (labeled, no prediction)"
            f"{': ' + name_some(missing) if missing else ''}; {len(extra)} extra (predicted, no label)"
            f"{': ' + name_some(extra) if extra else ''}. Use --intersection (intersection=True) to score the "
            "shared uids only.",
        )
    uids = [u for u in labels if u in predictions]
    if not uids:
        raise DataError(where, "no uid is both predicted and labeled")
    coverage = {"scored_on": "intersection" if missing or extra else "all", "n_missing": len(missing)}
    coverage["n_extra"] = len(extra)
    if missing or extra:
        coverage |= {"missing_uids": missing[:LIST_LIMIT], "extra_uids": extra[:LIST_LIMIT]}
    return uids, coverage


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95):
    """Percentile bootstrap CI [lo, hi] of the mean of `values` (resampled with replacement); None when empty."""
    values = np.asarray(values, dtype=float)
    if values.size == 0 or n_resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, _BOOTSTRAP_CHUNK):
        stop = min(start + _BOOTSTRAP_CHUNK, n_resamples)
        means[start:stop] = values[rng.integers(0, values.size, size=(stop - start, values.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return [float(q) for q in np.quantile(means, [alpha, 1 - alpha])]


def accuracy_block(uids: Sequence[str], correct: Mapping[str, bool], predictions: Mapping, boot: dict) -> dict:
    """n, n_correct, n_unparseable, accuracy and its bootstrap CI over `uids`."""
    hits = [correct[u] for u in uids]
    return {
        "n": len(uids),
        "n_correct": sum(hits),
        "n_unparseable": sum(predictions[u] is None for u in uids),
        "accuracy": sum(hits) / len(hits) if hits else None,
        "accuracy_ci": bootstrap_ci(hits, **boot),
    }


def consistency_groups(uids: Iterable[str]) -> dict[str, list[str]]:
    """{identifier without pair_id: [uid, ...]} over the uids that are NLVR2 identifiers; the others are left out."""
    groups = defaultdict(list)
    for uid in uids:
        try:
            groups[parse_identifier(uid).consistency_group].append(uid)
        except DataError:  # a foreign uid (another dataset's) has no group; it must not switch consistency off
            continue
    return dict(groups)


def consistency_block(uids: Sequence[str], correct: Mapping[str, bool], boot: dict) -> dict:
    """Fraction of consistency groups with every example correct (None when no uid is an NLVR2 identifier), the
    bootstrap resampling groups; n_consistency_excluded counts the uids left out (not NLVR2 identifiers)."""
    groups = consistency_groups(uids)
    excluded = len(uids) - sum(len(members) for members in groups.values())
    if not groups:
        return {"consistency": None, "consistency_ci": None, "n_groups": None, "n_consistency_excluded": excluded}
    whole = [all(correct[u] for u in members) for members in groups.values()]
    return {
        "consistency": sum(whole) / len(whole),
        "consistency_ci": bootstrap_ci(whole, **boot),
        "n_groups": len(whole),
        "n_consistency_excluded": excluded,
    }


def subset_uids(name: str, subset: Iterable[str], uids: Sequence[str], labels: Mapping[str, bool]) -> list[str]:
    """The scored uids (in `uids`' order) that subset `name` lists; refuses identifiers the labels lack."""
    subset = set(subset)
    unknown = sorted(subset - set(labels))
    if unknown:
        raise DataError(f"subset {name!r}", f"{len(unknown)} identifiers not in the labels: {name_some(unknown)}")
    return [u for u in uids if u in subset]


def consistency_note(metrics: dict) -> str:
    """One line on the uids left out of consistency (not NLVR2 identifiers), for the CLI and the report."""
    n = metrics["n_consistency_excluded"]
    return (
        f"consistency is over the NLVR2 identifiers only: {n} of {metrics['n']} scored uids are not of the form "
        "split-set_id-pair_id-sentence_id and were left out of it (accuracy counts them)"
    )


def category_members(
    uids: Iterable[str],
    sentences: Mapping[str, str] | None = None,
    annotations: Mapping[str, Sequence[str]] | None = None,
    categories: Mapping[str, str | Sequence[str] | None] | None = None,
) -> dict[str, list[str]]:
    """{category: [uid, ...]}, sorted by name: phenomena of each uid's sentence text + the uid's own categories."""
    members = defaultdict(list)
    for uid in uids:
        names = list(annotations.get(sentences.get(uid), ())) if annotations and sentences else []
        own = (categories or {}).get(uid)
        names += [own] if isinstance(own, str) else list(own or ())
        for name in dict.fromkeys(names):
            members[name].append(uid)
    return dict(sorted(members.items()))


def compute_metrics(
    predictions: Mapping[str, Prediction],
    labels: Mapping[str, bool],
    sentences: Mapping[str, str] | None = None,
    annotations: Mapping[str, Sequence[str]] | None = None,
    categories: Mapping[str, str | Sequence[str] | None] | None = None,
    subsets: Mapping[str, Iterable[str]] | None = None,
    *,
    intersection: bool = False,
    where: str = "predictions",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Accuracy, consistency, per-category accuracy, per-subset accuracy and consistency (each with a bootstrap CI)
    on uid-keyed data.

    annotations: {sentence text: [phenomenon]} (needs sentences: {uid: text}); categories: {uid: name or [names]}
    (synthetic data); subsets: {name: uids}, e.g. the balanced and unbalanced dev identifiers.
    """
    uids, coverage = align_uids(predictions, labels, intersection, where)
    bad = [u for u in uids if not isinstance(labels[u], bool) or not isinstance(predictions[u], bool | None)]
    if bad:
        raise DataError(where, f"a label not True/False or a prediction not True/False/None for uids: {name_some(bad)}")
    correct = {u: predictions[u] is not None and predictions[u] == labels[u] for u in uids}
    boot = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    metrics = accuracy_block(uids, correct, predictions, boot) | consistency_block(uids, correct, boot)
    metrics["categories"] = {
        name: accuracy_block(members, correct, predictions, boot)
        for name, members in category_members(uids, sentences, annotations, categories).items()
    }
    metrics["subsets"] = {}
    for name, subset in (subsets or {}).items():
        # Groups from the subset's own examples only, as the official script gives with the subset file as labels
        members = subset_uids(name, subset, uids, labels)
        block = accuracy_block(members, correct, predictions, boot)
        metrics["subsets"][name] = block | consistency_block(members, correct, boot)
    return metrics | coverage | {"bootstrap": boot}


def confusion_counts(predictions: Mapping[str, Prediction], labels: Mapping[str, bool], uids: Iterable[str]) -> dict:
    """{label: {prediction: count}}: labels "True"/"False", predictions "True"/"False"/"unparseable"."""
    counts = {str(y): {"True": 0, "False": 0, "unparseable": 0} for y in (True, False)}
    for uid in uids:
        pred = predictions[uid]
        counts[str(labels[uid])]["unparseable" if pred is None else str(pred)] += 1
    return counts


def calibration(p_true: Sequence[float], labels: Sequence[bool], n_bins: int = 10) -> dict:
    """Equal-width bins of p_true: count, mean p_true and observed frequency of label True per bin; ECE."""
    p, y = np.asarray(p_true, dtype=float), np.asarray(labels, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)  # p = 1.0 falls in the last bin
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = index == b
        n = int(mask.sum())
        mean_p = float(p[mask].mean()) if n else None
        freq = float(y[mask].mean()) if n else None
        if n:
            ece += n / p.size * abs(mean_p - freq)
        bins.append(
            {"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n, "mean_p_true": mean_p, "freq_true": freq}
        )
    return {"n": int(p.size), "bins": bins, "ece": ece if p.size else None}


def file_metrics(
    predictions: str | Path,
    labels: str | Path | None = None,
    annotations: str | Path | None = None,
    balanced: str | Path | None = None,
    unbalanced: str | Path | None = None,
    intersection: bool = False,
    csv_out: str | Path | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Score a predictions file (run folder, .jsonl or .csv) against labels (official JSON, or the jsonl's own)."""
    run = load_run(predictions)
    gold, sentences = load_labels(labels) if labels is not None else (run.labels, run.sentences)
    if labels is None and run.path.suffix.lower() == ".csv":
        raise DataError(str(run.path), "CSV predictions carry no labels: give LABELS (official JSON lines)")
    subsets = {name: load_labels(p)[0].keys() for name, p in (("balanced", balanced), ("unbalanced", unbalanced)) if p}
    metrics = compute_metrics(
        run.predictions,
        gold,
        sentences,
        load_annotations(annotations) if annotations else None,
        run.categories,
        subsets,
        intersection=intersection,
        where=str(run.path),
        n_resamples=n_resamples,
        seed=seed,
    )
    metrics |= {"predictions_file": str(run.path), "labels_file": str(labels or run.path)}
    if csv_out:
        metrics["csv_out"] = str(write_predictions_csv(run.predictions, csv_out))
    return metrics
