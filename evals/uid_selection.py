"""Choosing uids for error analysis from evaluation runs: wrong answers, flips between two runs, categories, p_true
bands. An unparseable prediction counts as wrong, as in evals/run_metrics.py and evals/comparison.py."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from evals.comparison import FLIPS, run_name
from evals.prediction_files import load_labels, load_run, predictions_file, read_prediction_records
from utils.errors import DataError


@dataclass
class Run:
    """One run's predictions.jsonl (or official CSV) as {uid: record}; CSV records hold uid and prediction only."""

    path: Path
    name: str
    records: dict[str, dict]


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    runs = []
    for p in paths:
        path = predictions_file(p)
        if path.suffix.lower() == ".csv":
            records = {u: {"uid": u, "prediction": v} for u, v in load_run(path).predictions.items()}
        elif path.suffix.lower() in (".jsonl", ".json"):
            records = {r["uid"]: r for r in read_prediction_records(path)}
        else:
            raise DataError(str(path), "unknown predictions format: expected .jsonl (or the official .csv)")
        runs.append(Run(path, run_name(path), records))
    names = [r.name for r in runs]
    for i, run in enumerate(runs):  # two runs named alike (same folder name) get their position appended
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({i + 1})"
    return runs


def gold_labels(runs: Sequence[Run], labels_file: str | Path | None = None) -> dict[str, bool]:
    """Labels the runs carry (refused when two runs disagree), or those of an official NLVR2 JSON-lines file."""
    if labels_file is not None:
        return load_labels(labels_file)[0]
    labels: dict[str, bool] = {}
    for run in runs:
        for uid, rec in run.records.items():
            if rec.get("label") is None:
                continue
            if labels.setdefault(uid, rec["label"]) != rec["label"]:
                raise DataError(str(run.path), f"uid {uid}: label differs from another run's; pass --labels")
    return labels


def is_right(record: Mapping | None, label: bool | None) -> bool | None:
    """True/False when the run predicted the uid and its label is known, else None."""
    if record is None or label is None:
        return None
    return record["prediction"] is not None and record["prediction"] == label


def wrong(run: Run, labels: Mapping[str, bool]) -> list[str]:
    """uids the run got wrong (unparseable included), in the run's order; unlabeled uids are left out."""
    return [u for u, rec in run.records.items() if is_right(rec, labels.get(u)) is False]


def flips(run_a: Run, run_b: Run, labels: Mapping[str, bool], flip: str) -> list[str]:
    """wrong_to_right (A wrong, B right) or right_to_wrong over the uids both runs predicted, in A's order."""
    if flip not in FLIPS:
        raise ValueError(f"flip {flip!r} unknown; choose one of {list(FLIPS)}")
    out = []
    for uid, rec in run_a.records.items():
        a, b = is_right(rec, labels.get(uid)), is_right(run_b.records.get(uid), labels.get(uid))
        if a is not None and b is not None and (a, b) == ((False, True) if flip == "wrong_to_right" else (True, False)):
            out.append(uid)
    return out


def p_true_band(run: Run, uids: Iterable[str], lo: float, hi: float) -> list[str]:
    """uids whose p_true in `run` lies in [lo, hi] (uids without a p_true are left out)."""
    return [u for u in uids if (p := (run.records.get(u) or {}).get("p_true")) is not None and lo <= p <= hi]


def run_categories(runs: Sequence[Run], uid: str, annotations: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Categories the runs record for `uid`, plus the annotated phenomena of its sentence (first-seen order)."""
    names: list[str] = []
    for run in runs:
        rec = run.records.get(uid) or {}
        if rec.get("category"):
            names.append(rec["category"])
        if annotations and isinstance(rec.get("sentence"), str):
            names.extend(annotations.get(rec["sentence"].strip(), []))
    return list(dict.fromkeys(names))
