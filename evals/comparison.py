"""Paired comparison of two evaluation runs on the uids both scored: accuracy of each, delta (B - A) with a paired
bootstrap CI, McNemar's exact test, per-category deltas, and the flip lists as uid files a gallery can read.

compare_runs writes <out>/compare.json, <out>/wrong_to_right.txt (A wrong, B right) and <out>/right_to_wrong.txt, one
uid a line; default out: <artifact root>/analysis/compare/<A name>__vs__<B name>. The command line: evals/compare.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from evals.prediction_files import Prediction, RunPredictions, load_annotations, load_labels, load_run
from evals.run_metrics import LIST_LIMIT, bootstrap_ci, category_members, name_some
from utils.artifacts import artifact_dir
from utils.errors import DataError

FLIPS = ("wrong_to_right", "right_to_wrong")  # A wrong and B right; A right and B wrong


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: binomial(b + c, 1/2) on the discordant pairs b and c."""
    n = b + c
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0); C(n, k + 1) = C(n, k) * (n - k) / (k + 1), exact in integers
    for k in range(min(b, c)):
        term = term * (n - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)  # exact integer ratio, correctly rounded even for large n


def paired_block(uids: Sequence[str], right_a: Mapping[str, bool], right_b: Mapping[str, bool], boot: dict) -> dict:
    """n, accuracy of A and B, delta B - A with its paired bootstrap CI, flip counts and McNemar's p over `uids`."""
    n = len(uids)
    diffs = [int(right_b[u]) - int(right_a[u]) for u in uids]  # the mean of the differences is the delta
    to_right, to_wrong = diffs.count(1), diffs.count(-1)
    return {
        "n": n,
        "accuracy_a": sum(right_a[u] for u in uids) / n,
        "accuracy_b": sum(right_b[u] for u in uids) / n,
        "delta": sum(diffs) / n,
        "delta_ci": bootstrap_ci(diffs, **boot),
        "n_wrong_to_right": to_right,
        "n_right_to_wrong": to_wrong,
        "mcnemar_p": mcnemar_exact(to_wrong, to_right),
    }


def compare_predictions(
    predictions_a: Mapping[str, Prediction],
    predictions_b: Mapping[str, Prediction],
    labels: Mapping[str, bool],
    sentences: Mapping[str, str] | None = None,
    annotations: Mapping[str, Sequence[str]] | None = None,
    categories: Mapping[str, str | Sequence[str] | None] | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Paired comparison on the uids both predicted (A's order); an unparseable prediction is wrong."""
    shared = [u for u in predictions_a if u in predictions_b]
    only_a = [u for u in predictions_a if u not in predictions_b]
    only_b = [u for u in predictions_b if u not in predictions_a]
    if not shared:
        raise DataError("comparison", "the two runs share no uid")
    unlabeled = [u for u in shared if u not in labels]
    if unlabeled:
        raise DataError("comparison", f"{len(unlabeled)} shared uids have no label: {name_some(unlabeled)}")
    right_a = {u: predictions_a[u] is not None and predictions_a[u] == labels[u] for u in shared}
    right_b = {u: predictions_b[u] is not None and predictions_b[u] == labels[u] for u in shared}
    boot = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    result = paired_block(shared, right_a, right_b, boot) | {
        "n_only_a": len(only_a),
        "n_only_b": len(only_b),
        "only_a_uids": only_a[:LIST_LIMIT],
        "only_b_uids": only_b[:LIST_LIMIT],
        "n_unparseable_a": sum(predictions_a[u] is None for u in shared),
        "n_unparseable_b": sum(predictions_b[u] is None for u in shared),
    }
    result["categories"] = {
        name: paired_block(members, right_a, right_b, boot)
        for name, members in category_members(shared, sentences, annotations, categories).items()
    }
    result["flips"] = {
        "wrong_to_right": [u for u in shared if right_b[u] and not right_a[u]],
        "right_to_wrong": [u for u in shared if right_a[u] and not right_b[u]],
    }
    return result | {"bootstrap": boot}


def merged_gold(a: RunPredictions, b: RunPredictions) -> tuple[dict, dict, dict]:
    """Labels, sentences and {uid: [categories]} of two runs; refuses runs whose labels disagree on a uid."""
    clash = [u for u in a.labels if u in b.labels and a.labels[u] != b.labels[u]]
    if clash:
        raise DataError(f"{a.path} vs {b.path}", f"labels differ for {len(clash)} uids: {name_some(clash)}")
    categories: dict[str, list[str]] = {}
    for run in (a, b):
        for uid, name in run.categories.items():
            names = categories.setdefault(uid, [])
            if name not in names:
                names.append(name)
    return {**b.labels, **a.labels}, {**b.sentences, **a.sentences}, categories


def run_name(path: Path) -> str:
    """A run's name for the default output folder: its folder name (file: parent folder + stem)."""
    path = path.resolve()
    return path.parent.name if path.name == "predictions.jsonl" else f"{path.parent.name}-{path.stem}"


def write_comparison(result: dict, out_dir: str | Path) -> Path:
    """compare.json + one uid-per-line text file per flip list; returns the compare.json path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for flip in FLIPS:
        (out_dir / f"{flip}.txt").write_text("".join(f"{u}\n" for u in result["flips"][flip]))
    path = out_dir / "compare.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def summary_text(result: dict) -> str:
    """A few human-readable lines: accuracies, delta with CI, McNemar, not-shared counts, per-category deltas."""
    lo, hi = result["delta_ci"]
    lines = [
        f"A: {result['run_a']}  accuracy {result['accuracy_a']:.2%} ({result['n_unparseable_a']} unparseable)",
        f"B: {result['run_b']}  accuracy {result['accuracy_b']:.2%} ({result['n_unparseable_b']} unparseable)",
        f"shared uids: {result['n']} (not shared: {result['n_only_a']} only in A, {result['n_only_b']} only in B)",
        f"delta B - A: {100 * result['delta']:+.2f} points (95% CI {100 * lo:+.2f} to {100 * hi:+.2f})",
        f"McNemar exact: {result['n_wrong_to_right']} wrong->right, {result['n_right_to_wrong']} right->wrong, "
        f"p = {result['mcnemar_p']:.4g}",
    ]
    for name, c in result["categories"].items():
        delta = f"{100 * c['delta']:+.2f} points, p = {c['mcnemar_p']:.3g}"
        lines.append(f"  {name:<24} n={c['n']:<5} {c['accuracy_a']:.2%} -> {c['accuracy_b']:.2%} ({delta})")
    return "\n".join(lines)


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    out: str | Path | None = None,
    labels: str | Path | None = None,
    annotations: str | Path | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Compare two runs, write compare.json and the flip lists, return the comparison (with out_dir)."""
    a, b = load_run(run_a), load_run(run_b)
    gold, sentences, categories = merged_gold(a, b)
    if labels is not None:
        gold, sentences = load_labels(labels)
    result = compare_predictions(
        a.predictions,
        b.predictions,
        gold,
        sentences,
        load_annotations(annotations) if annotations else None,
        categories,
        n_resamples=n_resamples,
        seed=seed,
    )
    result = {"run_a": str(a.path), "run_b": str(b.path)} | result
    out_dir = Path(out) if out else artifact_dir("analysis") / "compare" / f"{run_name(a.path)}__vs__{run_name(b.path)}"
    result["out_dir"] = str(out_dir)
    write_comparison(result, out_dir)
    return result
