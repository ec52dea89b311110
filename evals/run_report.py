"""A report of one evaluation run, readable without the lab: report.md + three PNGs named and titled after the run
(<run>_accuracy_by_category.png: accuracy per category with CIs; <run>_confusion_matrix.png: counts and row rates;
<run>_reliability.png: reliability diagram of p_true), from the run folder's predictions.jsonl and metrics.json; <run>
is the folder's name. The command line: evals/report.py.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure  # no pyplot: a bare Figure saves .png through the Agg canvas, no GUI backend

from evals.prediction_files import gold_from_records, load_annotations, read_prediction_records
from evals.run_metrics import calibration, compute_metrics, confusion_counts, consistency_note
from utils.errors import DataError

PLOTS = {"categories": "accuracy_by_category", "confusion": "confusion_matrix", "reliability": "reliability"}


def run_name(run_dir: Path) -> str:
    """The run's name in plot titles and file names: its folder's name."""
    return Path(run_dir).resolve().name


def plot_files(run_dir: str | Path) -> dict[str, Path]:
    """{plot: <run_dir>/<run>_<plot name>.png} for the PLOTS."""
    run_dir = Path(run_dir)
    return {key: run_dir / f"{run_name(run_dir)}_{name}.png" for key, name in PLOTS.items()}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2%}"


def _ci(ci: list[float] | None) -> str:
    return "n/a" if ci is None else f"{ci[0]:.2%} to {ci[1]:.2%}"


def confusion_columns(confusion: dict) -> list[str]:
    """Prediction columns: True, False, and unparseable only when there are any."""
    return ["True", "False"] + (["unparseable"] if any(r["unparseable"] for r in confusion.values()) else [])


def confusion_rates(confusion: dict) -> dict:
    """{label: {prediction: share of the label's examples}}, each row summing to 1; None for a label with none."""
    return {
        label: {col: n / sum(row.values()) if sum(row.values()) else None for col, n in row.items()}
        for label, row in confusion.items()
    }


def plot_categories(metrics: dict, path: Path, run: str) -> Path:
    """Horizontal bars: overall accuracy and each category's, with bootstrap CI error bars and n in the labels."""
    rows = [("all", metrics)] + list(metrics["categories"].items())
    acc = np.array([r["accuracy"] for _, r in rows])
    ci = np.array([r["accuracy_ci"] or [r["accuracy"]] * 2 for _, r in rows])
    fig = Figure(figsize=(7, 1.2 + 0.35 * len(rows)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    colors = ["tab:gray"] + ["tab:blue"] * (len(rows) - 1)
    ax.barh(y, acc, xerr=[acc - ci[:, 0], ci[:, 1] - acc], color=colors, error_kw={"capsize": 3})
    ax.set_yticks(y, [f"{name} (n={r['n']})" for name, r in rows])
    ax.axvline(0.5, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95% bootstrap CI); dashed: chance")
    ax.set_title(f"{run}: accuracy per category")
    fig.savefig(path, dpi=100)
    return path


def plot_confusion(confusion: dict, path: Path, run: str) -> Path:
    """Label (rows) x prediction (columns): count and share of the label's examples, shaded by the share; an
    unparseable column only when there are any."""
    labels, columns, rates = ("True", "False"), confusion_columns(confusion), confusion_rates(confusion)
    shares = np.array([[rates[y][c] or 0.0 for c in columns] for y in labels])
    fig = Figure(figsize=(1.8 + 1.4 * len(columns), 3.2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, y), (j, c) in itertools.product(enumerate(labels), enumerate(columns)):
        color = "white" if shares[i, j] > 0.5 else "black"
        ax.text(j, i, f"{confusion[y][c]}\n{_pct(rates[y][c])}", ha="center", va="center", color=color)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks([0, 1], labels)
    ax.set_xlabel("prediction")
    ax.set_ylabel("label")
    ax.set_title(f"{run}: confusion matrix (share of each label)")
    fig.savefig(path, dpi=100)
    return path


def plot_reliability(calib: dict | None, path: Path, run: str) -> Path:
    """Observed frequency of label True per p_true bin against the bin's mean p_true; ECE in the title."""
    fig = Figure(figsize=(4.8, 4.8), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8, label="perfect calibration")
    if calib is None:
        ax.text(0.5, 0.5, "no p_true in predictions\n(generation scoring)", ha="center", va="center")
        ax.set_title(f"{run}: reliability of p_true, n/a")
    else:
        full = [b for b in calib["bins"] if b["n"]]
        ax.plot([b["mean_p_true"] for b in full], [b["freq_true"] for b in full], marker="o", label="observed")
        ax.bar(
            [(b["lo"] + b["hi"]) / 2 for b in calib["bins"]],
            [b["n"] / calib["n"] for b in calib["bins"]],
            width=1 / len(calib["bins"]),
            alpha=0.2,
            color="tab:gray",
            label="share of examples",
        )
        ax.set_title(f"{run}: reliability of p_true (ECE = {calib['ece']:.3f}, n = {calib['n']})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean p_true in bin")
    ax.set_ylabel("frequency of label True")
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=100)
    return path


def confusion_table(confusion: dict) -> list[str]:
    """Markdown rows of the confusion matrix: each cell the count and the share of the label's examples."""
    columns, rates = confusion_columns(confusion), confusion_rates(confusion)
    lines = ["| label \\ prediction | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for y in ("True", "False"):
        lines.append(f"| {y} | " + " | ".join(f"{confusion[y][c]} ({_pct(rates[y][c])})" for c in columns) + " |")
    return lines


def render_markdown(run_dir: Path, info: dict, metrics: dict, confusion: dict, calib: dict | None, n: int) -> str:
    """report.md: run description, headline metrics with CIs, categories table, confusion, links to the PNGs."""
    boot = metrics["bootstrap"]
    links = {key: quote(path.name) for key, path in plot_files(run_dir).items()}  # beside report.md
    lines = [
        f"# Evaluation report: {run_name(run_dir)}",
        "",
        "| | |",
        "| --- | --- |",
        f"| model | {info.get('model', 'unknown')} |",
        f"| adapter | {info.get('adapter') or 'none (base model)'} |",
        f"| split | {info.get('split', 'unknown')} |",
        f"| scoring | {info.get('scoring', 'unknown')} |",
        f"| prompt template | {info.get('prompt_template', 'unknown')} |",
        f"| examples | {n} predicted, {metrics['n']} labeled and scored |",
    ]
    if info.get("n_skipped") is not None:  # written by evals/evaluate.py; the list is in run_record.json
        lines.append(
            f"| bad examples | {info['n_skipped']} skipped (bad_examples: {info.get('bad_examples', 'unknown')}; "
            "listed in run_record.json) |"
        )
    lines += [
        "",
        "## Results",
        "",
        f"- **accuracy**: {_pct(metrics['accuracy'])} (95% CI {_ci(metrics['accuracy_ci'])}), "
        f"{metrics['n_correct']} of {metrics['n']} correct",
    ]
    if metrics["consistency"] is not None:
        lines.append(
            f"- **consistency**: {_pct(metrics['consistency'])} (95% CI {_ci(metrics['consistency_ci'])}) over "
            f"{metrics['n_groups']} groups: one sentence judged on up to four image pairs (the identifier without its "
            "pair id); a group counts only when every example in it is right"
        )
        if metrics["n_consistency_excluded"]:
            lines.append(f"  - note: {consistency_note(metrics)}")
    else:
        lines.append("- **consistency**: n/a (the uids are not NLVR2 identifiers split-set_id-pair_id-sentence_id)")
    lines.append(f"- **unparseable predictions**: {metrics['n_unparseable']} (counted as wrong)")
    if calib is not None:
        lines.append(f"- **calibration**: expected calibration error {calib['ece']:.3f} over {calib['n']} examples")
    if info.get("accuracy") is not None and abs(info["accuracy"] - metrics["accuracy"]) > 1e-9:
        lines.append(f"- note: metrics.json says accuracy {_pct(info['accuracy'])}; predictions.jsonl gives the above")
    lines += ["", "## Accuracy per category", ""]
    if metrics["categories"]:
        lines += ["| category | n | accuracy | 95% CI | unparseable |", "| --- | ---: | ---: | --- | ---: |"]
        for name, c in metrics["categories"].items():
            lines.append(
                f"| {name} | {c['n']} | {_pct(c['accuracy'])} | {_ci(c['accuracy_ci'])} | {c['n_unparseable']} |"
            )
    else:
        lines.append("No categories: the examples carry none and no annotations were given.")
    lines += [
        "",
        f"![accuracy per category]({links['categories']})",
        "",
        "## Confusion matrix",
        "",
        "Each cell: the count and, in brackets, its share of the label's examples (each row sums to 100%).",
        "",
        *confusion_table(confusion),
        "",
        f"![confusion matrix]({links['confusion']})",
        "",
        "## Calibration of p_true",
        "",
        "Examples binned by the model's probability of True; a calibrated model's bins lie on the diagonal.",
        "",
        f"![reliability diagram]({links['reliability']})",
        "",
        f"Confidence intervals: percentile bootstrap, {boot['n_resamples']} resamples, seed {boot['seed']} (groups "
        "resampled for consistency). Written by evals/report.py from predictions.jsonl and metrics.json.",
        "",
    ]
    return "\n".join(lines)


def write_report(
    run_dir: str | Path, annotations: str | Path | None = None, n_resamples: int = 1000, seed: int = 0
) -> Path:
    """Write <run_dir>/report.md and its three PNGs (plot_files) from predictions.jsonl (+ metrics.json); return
    report.md."""
    run_dir = Path(run_dir)
    records = read_prediction_records(run_dir / "predictions.jsonl")
    info_path = run_dir / "metrics.json"
    try:
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
    except json.JSONDecodeError as e:
        raise DataError(str(info_path), f"not valid JSON ({e.msg})") from None
    labels, sentences, categories = gold_from_records(records)
    if not labels:
        raise DataError(str(run_dir / "predictions.jsonl"), "no labeled example: nothing to score")
    predictions = {r["uid"]: r["prediction"] for r in records if r["uid"] in labels}
    metrics = compute_metrics(
        predictions,
        labels,
        sentences,
        load_annotations(annotations) if annotations else None,
        categories,
        where=str(run_dir / "predictions.jsonl"),
        n_resamples=n_resamples,
        seed=seed,
    )
    confusion = confusion_counts(predictions, labels, labels)
    with_p = [r for r in records if r["uid"] in labels and r.get("p_true") is not None]
    calib = calibration([r["p_true"] for r in with_p], [r["label"] for r in with_p]) if with_p else None
    files, run = plot_files(run_dir), run_name(run_dir)
    plot_categories(metrics, files["categories"], run)
    plot_confusion(confusion, files["confusion"], run)
    plot_reliability(calib, files["reliability"], run)
    path = run_dir / "report.md"
    path.write_text(render_markdown(run_dir, info, metrics, confusion, calib, len(records)))
    return path
