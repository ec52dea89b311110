"""evals/vlm_eval.py's per-row scores (exact match for questions, CIDEr-D and ROUGE-L for captions) against its
corpus scores, and the predictions file training/train_vlm.py writes (evals/prediction_files.py): round trip, and a
malformed line named by file:line."""

from __future__ import annotations

import json

import pytest

from evals.prediction_files import read_generated, write_generated
from evals.vlm_eval import row_scores, score
from utils.errors import DataError
from vlm_datasets.captions import synthetic_rows


def records(rows, predictions):
    pairs = zip(rows, predictions, strict=True)
    return [{"uid": r["uid"], "task": r["task"], "prediction": p, "references": r["references"]} for r, p in pairs]


def test_row_scores_average_to_the_corpus_scores():
    rows = list(synthetic_rows(8, 0, "eval", "mixed"))  # captions at even positions, questions at odd
    predictions = [
        r["answer"] if i in (0, 1) else f"The {r['answer'].upper()}!" if i == 3 else "top left: small red circle."
        for i, r in enumerate(rows)
    ]
    per_row, corpus = row_scores(records(rows, predictions)), score(rows, predictions)
    captions = [s for s, r in zip(per_row, rows, strict=True) if r["task"] == "caption"]
    questions = [s["exact_match"] for s, r in zip(per_row, rows, strict=True) if r["task"] == "qa"]
    assert all(set(s) == {"cider", "rouge_l"} for s in captions)
    assert sum(s["cider"] for s in captions) / len(captions) == pytest.approx(corpus["caption"]["cider"], abs=1e-12)
    assert sum(s["rouge_l"] for s in captions) / len(captions) == pytest.approx(corpus["caption"]["rouge_l"])
    assert captions[0]["cider"] > max(s["cider"] for s in captions[1:])  # the exact caption scores highest
    assert questions[:2] == [1.0, 1.0]  # right as given, and right after normalization (case, article, "!")
    assert sum(questions) / len(questions) == corpus["qa"]["accuracy"]


def test_generated_predictions_round_trip_and_malformed_lines(tmp_path):
    rows = list(synthetic_rows(4, 0, "eval", "mixed"))
    path = write_generated(tmp_path / "predictions.jsonl", rows, ["a", "b", "", "d"])
    back = read_generated(path)
    assert back == records(rows, ["a", "b", "", "d"])
    good = {"uid": "u1", "task": "caption", "prediction": "x", "references": ["y"]}
    for bad, problem in [
        ({**good, "prediction": True}, "uid u1: task and prediction must be text"),
        ({**good, "references": []}, "uid u1: references must be a non-empty list of text"),
        ({**good, "uid": ""}, "no uid"),
    ]:
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=f"predictions.jsonl:1: {problem}"):
            read_generated(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match="predictions.jsonl:2: uid u1 appears twice"):
        read_generated(path)
