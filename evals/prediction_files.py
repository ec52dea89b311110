"""The files metrics are computed from: predictions (the lab's predictions.jsonl, the official NLVR2 CSV), official
NLVR2 labels (dev.json-style JSON lines) and the linguistic-phenomenon annotations (annotated_dev_examples.txt).
A composed VLM's run (training/train_vlm.py) writes generated text instead: write_generated / read_generated.

    from evals.prediction_files import load_labels, load_run, write_predictions_csv
    labels, sentences = load_labels("nlvr2/data/dev.json")  # the official NLVR2 repository's file
    write_predictions_csv(load_run("artifacts/evals/run").predictions, "artifacts/evals/run/predictions.csv")

Every malformed line is a DataError naming file:line (and the uid when there is one).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from utils.errors import DataError
from vlm_datasets.labels import parse_label

Prediction = bool | None  # None: the model's answer could not be parsed
CSV_HEADER = ["identifier", "prediction"]
_CSV_VALUES = {"true": True, "false": False, "": None}


def predictions_file(path: str | Path) -> Path:
    """A run folder -> its predictions.jsonl; a file -> itself."""
    path = Path(path)
    return path / "predictions.jsonl" if path.is_dir() else path


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) per non-blank line; DataError naming file:line for anything else."""
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}", f"not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}", "not a JSON object")
            yield line_no, row


def _iter_uid_rows(path: Path) -> Iterator[tuple[str, str, dict]]:
    """(file:line, uid, JSON object) per row of a predictions file: each row has a uid, and no uid comes twice."""
    seen = set()
    for line_no, row in _iter_jsonl(path):
        where, uid = f"{path}:{line_no}", row.get("uid")
        if not isinstance(uid, str) or not uid:
            raise DataError(where, "no uid (a non-empty string)")
        if uid in seen:
            raise DataError(where, f"uid {uid} appears twice")
        seen.add(uid)
        yield where, uid, row


def read_prediction_records(path: str | Path) -> list[dict]:
    """predictions.jsonl rows (uid, sentence, label, prediction, p_true, category, raw), checked; labels parsed."""
    path = Path(path)
    records = []
    for where, uid, row in _iter_uid_rows(path):
        if "prediction" not in row or not (row["prediction"] is None or isinstance(row["prediction"], bool)):
            raise DataError(where, f"uid {uid}: prediction {row.get('prediction')!r} is not true, false or null")
        p_true = row.get("p_true")
        if p_true is not None and (isinstance(p_true, bool) or not isinstance(p_true, int | float)):
            raise DataError(where, f"uid {uid}: p_true {p_true!r} is not a number or null")
        label = parse_label(row.get("label"), uid, where=f"{where}: uid {uid}")
        records.append({**row, "label": label})
    return records


def write_generated(path: str | Path, rows: Iterable[Mapping], predictions: Iterable[str]) -> Path:
    """A composed VLM's predictions.jsonl (training/train_vlm.py): uid, task, prediction (the generated text) and
    references per evaluation row, in the rows' order."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for r, p in zip(rows, predictions, strict=True):
            fh.write(json.dumps({"uid": r["uid"], "task": r["task"], "prediction": p, "references": r["references"]}))
            fh.write("\n")
    return path


def read_generated(path: str | Path) -> list[dict]:
    """write_generated's rows, checked: a uid (once), a task, the prediction as text, references a list of text."""
    path = Path(path)
    records = []
    for where, uid, row in _iter_uid_rows(path):
        if not isinstance(row.get("task"), str) or not isinstance(row.get("prediction"), str):
            raise DataError(where, f"uid {uid}: task and prediction must be text (a composed VLM's predictions)")
        refs = row.get("references")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise DataError(where, f"uid {uid}: references must be a non-empty list of text")
        records.append(row)
    return records


def read_predictions_csv(path: str | Path) -> dict[str, Prediction]:
    """Official CSV: `identifier,prediction` per line, True/False (an empty field: unparseable); header tolerated."""
    path = Path(path)
    predictions = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != 2:
                raise DataError(where, f"expected 2 fields identifier,prediction, got {len(row)}: {row!r}")
            uid, value = row[0].strip(), row[1].strip()
            if reader.line_num == 1 and [uid.lower(), value.lower()] == CSV_HEADER:
                continue
            if not uid:
                raise DataError(where, "empty identifier")
            if value.lower() not in _CSV_VALUES:
                raise DataError(where, f"uid {uid}: prediction {value!r} is not True or False")
            if uid in predictions:
                raise DataError(where, f"uid {uid} appears twice")
            predictions[uid] = _CSV_VALUES[value.lower()]
    return predictions


def write_predictions_csv(predictions: Mapping[str, Prediction], path: str | Path) -> Path:
    """Official CSV (no header): `identifier,True|False`; an unparseable prediction is an empty field (wrong)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        for uid, pred in predictions.items():
            writer.writerow([uid, "" if pred is None else str(bool(pred))])
    return path


def load_labels(path: str | Path) -> tuple[dict[str, bool], dict[str, str]]:
    """Official NLVR2 JSON lines (dev.json style) -> ({identifier: label}, {identifier: sentence})."""
    path = Path(path)
    labels, sentences = {}, {}
    for line_no, row in _iter_jsonl(path):
        where, uid = f"{path}:{line_no}", row.get("identifier")
        if not isinstance(uid, str) or not uid:
            raise DataError(where, "no identifier")
        if uid in labels:
            raise DataError(where, f"identifier {uid} appears twice")
        label = parse_label(row.get("label"), uid, where=f"{where}: identifier {uid}")
        if label is None:
            raise DataError(where, f"identifier {uid}: no label (an unlabeled split cannot be scored)")
        labels[uid] = label
        if isinstance(row.get("sentence"), str):
            sentences[uid] = row["sentence"]
    return labels, sentences


def gold_from_records(records: Iterable[dict]) -> tuple[dict[str, bool], dict[str, str], dict[str, str]]:
    """Labels, sentences and categories carried by predictions.jsonl records; unlabeled records are left out."""
    labels, sentences, categories = {}, {}, {}
    for r in records:
        if r.get("label") is not None:
            labels[r["uid"]] = r["label"]
        if isinstance(r.get("sentence"), str):
            sentences[r["uid"]] = r["sentence"]
        if r.get("category"):
            categories[r["uid"]] = r["category"]
    return labels, sentences, categories


class RunPredictions(NamedTuple):
    """A predictions file and what it carries: labels, sentences and categories (empty for the official CSV)."""

    path: Path
    predictions: dict[str, Prediction]
    labels: dict[str, bool]
    sentences: dict[str, str]
    categories: dict[str, str]


def load_run(path: str | Path) -> RunPredictions:
    """Predictions of a run folder, predictions.jsonl or official CSV, with the labels etc. a jsonl carries."""
    path = predictions_file(path)
    if path.suffix.lower() == ".csv":
        return RunPredictions(path, read_predictions_csv(path), {}, {}, {})
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(str(path), "unknown predictions format: expected .csv (identifier,prediction) or .jsonl")
    records = read_prediction_records(path)
    return RunPredictions(path, {r["uid"]: r["prediction"] for r in records}, *gold_from_records(records))


def load_annotations(path: str | Path) -> dict[str, list[str]]:
    """annotated_dev_examples.txt -> {sentence: [phenomenon, ...]}: blocks of a sentence line, then `* x` lines."""
    path = Path(path)
    annotations: dict[str, list[str]] = {}
    sentence = None
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where, text = f"{path}:{line_no}", line.strip()
        if not text:
            sentence = None
        elif text.startswith("*"):
            if sentence is None:
                raise DataError(where, "a `* phenomenon` line with no sentence line above it")
            phenomenon = text[1:].strip()
            if not phenomenon:
                raise DataError(where, "empty phenomenon")
            if phenomenon not in annotations[sentence]:
                annotations[sentence].append(phenomenon)
        elif sentence is not None:
            raise DataError(where, "a second sentence line in one block (blocks are separated by blank lines)")
        else:
            sentence = text
            annotations.setdefault(sentence, [])
    return annotations
