"""Paired comparison of two evaluation runs on the uids both scored: accuracy of each, delta (B - A) with a paired
bootstrap CI, McNemar's exact test; NLVR2 consistency of each and its delta with a paired bootstrap CI over sentence
groups; per-category deltas with McNemar p-values, raw and Holm-Bonferroni adjusted over the categories; the flip lists
as uid files a gallery can read.

compare_runs writes <out>/compare.json, <out>/wrong_to_right.txt (A wrong, B right), <out>/right_to_wrong.txt (one uid
a line) and <out>/<A name>__vs__<B name>_deltas.png (the deltas with their CIs); default out:
<artifact root>/analysis/compare/<A name>__vs__<B name>. The command line: evals/compare.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: a bare Figure saves .png through the Agg canvas, no GUI backend

from evals.prediction_files import (
    Prediction,
    RunPredictions,
    load_annotations,
    load_labels,
    load_run,
    predictions_file,
)
from evals.run_metrics import LIST_LIMIT, bootstrap_ci, category_members, consistency_groups, name_some
from utils.artifacts import artifact_dir
from utils.errors import DataError

FLIPS = ("wrong_to_right", "right_to_wrong")  # A wrong and B right; A right and B wrong
_GROUP_KEYS = {"n": "n_groups", "accuracy_a": "consistency_a", "accuracy_b": "consistency_b"}  # paired_block on groups


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


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order: the k-th smallest of m times (m - k + 1), kept
    non-decreasing in that order, capped at 1. Valid under any dependence (categories may share examples)."""
    m = len(p_values)
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


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


def consistency_comparison(
    uids: Sequence[str], right_a: Mapping[str, bool], right_b: Mapping[str, bool], boot: dict
) -> dict:
    """Consistency of A and B over the NLVR2 sentence groups of `uids` (run_metrics.consistency_groups: the share of
    groups whose every example is right), delta B - A with a paired bootstrap CI over groups, the groups that became
    (wrong_to_right) or stopped being (right_to_wrong) wholly right and McNemar's p on them; n_excluded counts the
    uids that are not NLVR2 identifiers. Values None when no uid is one."""
    groups = consistency_groups(uids)
    excluded = len(uids) - sum(len(members) for members in groups.values())
    if not groups:
        none = dict.fromkeys(["consistency_a", "consistency_b", "delta", "delta_ci", "mcnemar_p"])
        return {"n_groups": 0, **none, "n_wrong_to_right": 0, "n_right_to_wrong": 0, "n_excluded": excluded}
    whole_a = {g: all(right_a[u] for u in members) for g, members in groups.items()}
    whole_b = {g: all(right_b[u] for u in members) for g, members in groups.items()}
    block = paired_block(list(groups), whole_a, whole_b, boot)
    return {_GROUP_KEYS.get(k, k): v for k, v in block.items()} | {"n_excluded": excluded}


def category_blocks(categories: Mapping[str, Sequence[str]], right_a: Mapping, right_b: Mapping, boot: dict) -> dict:
    """{category: paired_block + mcnemar_p_holm}: McNemar's p adjusted (Holm) over the categories compared."""
    blocks = {name: paired_block(members, right_a, right_b, boot) for name, members in categories.items()}
    for block, adjusted in zip(blocks.values(), holm([b["mcnemar_p"] for b in blocks.values()]), strict=True):
        block["mcnemar_p_holm"] = adjusted
    return blocks


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
    result["consistency"] = consistency_comparison(shared, right_a, right_b, boot)
    members = category_members(shared, sentences, annotations, categories)
    result["categories"] = category_blocks(members, right_a, right_b, boot)
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


def plot_deltas(result: dict, path: Path) -> Path:
    """Horizontal bars in points: delta B - A of accuracy overall, of consistency (over sentence groups) and per
    category, with their paired bootstrap CIs; n and the Holm-adjusted McNemar p in the labels."""
    rows = [(f"accuracy, all (n={result['n']})", result)]
    if result["consistency"]["delta"] is not None:
        rows.append((f"consistency ({result['consistency']['n_groups']} groups)", result["consistency"]))
    rows += [(f"{name} (n={c['n']}, Holm p={c['mcnemar_p_holm']:.2g})", c) for name, c in result["categories"].items()]
    delta = 100 * np.array([r["delta"] for _, r in rows])
    ci = 100 * np.array([r["delta_ci"] or [r["delta"]] * 2 for _, r in rows])
    fig = Figure(figsize=(8, 1.2 + 0.35 * len(rows)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    colors = ["tab:gray"] * (len(rows) - len(result["categories"])) + ["tab:blue"] * len(result["categories"])
    xerr = np.clip([delta - ci[:, 0], ci[:, 1] - delta], 0, None)  # a percentile CI can miss its mean by rounding
    ax.barh(y, delta, xerr=xerr, color=colors, error_kw={"capsize": 3})
    ax.set_yticks(y, [label for label, _ in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("delta B - A in points (95% paired bootstrap CI)")
    ax.set_title(f"{result['name_a']} vs {result['name_b']}: delta B - A per category")
    fig.savefig(path, dpi=100)
    return path


def write_comparison(result: dict) -> Path:
    """Into result["out_dir"]: compare.json, one uid-per-line text file per flip list and the deltas plot
    (result["plot"]); returns the compare.json path."""
    out_dir = Path(result["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    for flip in FLIPS:
        (out_dir / f"{flip}.txt").write_text("".join(f"{u}\n" for u in result["flips"][flip]))
    plot_deltas(result, Path(result["plot"]))
    path = out_dir / "compare.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _points(delta: float, ci: list[float] | None) -> str:
    ci_text = "" if ci is None else f" (95% CI {100 * ci[0]:+.2f} to {100 * ci[1]:+.2f})"
    return f"{100 * delta:+.2f} points{ci_text}"


def consistency_line(c: dict) -> str:
    """The consistency delta with its CI, both runs' consistency and McNemar's p on the groups."""
    if c["delta"] is None:
        return "consistency: n/a (no shared uid is an NLVR2 identifier split-set_id-pair_id-sentence_id)"
    return (
        f"consistency B - A: {_points(c['delta'], c['delta_ci'])} over {c['n_groups']} sentence groups, "
        f"{c['consistency_a']:.2%} -> {c['consistency_b']:.2%}, McNemar p = {c['mcnemar_p']:.4g}"
        + (f" ({c['n_excluded']} uids not NLVR2 identifiers left out)" if c["n_excluded"] else "")
    )


def summary_text(result: dict) -> str:
    """A few human-readable lines: accuracies, delta with CI, McNemar, consistency delta, not-shared counts,
    per-category deltas with raw and Holm-adjusted p."""
    lines = [
        f"A: {result['run_a']}  accuracy {result['accuracy_a']:.2%} ({result['n_unparseable_a']} unparseable)",
        f"B: {result['run_b']}  accuracy {result['accuracy_b']:.2%} ({result['n_unparseable_b']} unparseable)",
        f"shared uids: {result['n']} (not shared: {result['n_only_a']} only in A, {result['n_only_b']} only in B)",
        f"delta B - A: {_points(result['delta'], result['delta_ci'])}",
        f"McNemar exact: {result['n_wrong_to_right']} wrong->right, {result['n_right_to_wrong']} right->wrong, "
        f"p = {result['mcnemar_p']:.4g}",
        consistency_line(result["consistency"]),
    ]
    if result["categories"]:
        lines.append(f"per category (McNemar p, raw and Holm-adjusted over the {len(result['categories'])}):")
    for name, c in result["categories"].items():
        delta = f"{100 * c['delta']:+.2f} points, p = {c['mcnemar_p']:.3g}, Holm p = {c['mcnemar_p_holm']:.3g}"
        lines.append(f"  {name:<24} n={c['n']:<5} {c['accuracy_a']:.2%} -> {c['accuracy_b']:.2%} ({delta})")
    return "\n".join(lines)


def must_exist(*paths: str | Path | None) -> None:
    """FileNotFoundError "no such file or folder: <path>" for the first given path that is not there."""
    for path in paths:
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"no such file or folder: {path}")


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    out: str | Path | None = None,
    labels: str | Path | None = None,
    annotations: str | Path | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Compare two runs, write compare.json, the flip lists and the deltas plot, return the comparison (with out_dir
    and plot)."""
    must_exist(predictions_file(run_a), predictions_file(run_b), labels, annotations)  # a folder: its predictions
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
    names = {"name_a": run_name(a.path), "name_b": run_name(b.path)}
    pair = f"{names['name_a']}__vs__{names['name_b']}"
    out_dir = Path(out) if out else artifact_dir("analysis") / "compare" / pair
    result = {"run_a": str(a.path), "run_b": str(b.path)} | names | result
    result |= {"out_dir": str(out_dir), "plot": str(out_dir / f"{pair}_deltas.png")}
    write_comparison(result)
    return result
