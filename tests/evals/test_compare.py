"""Paired comparison of two runs: McNemar's exact test on known tables, flip lists, deltas, shared-uid accounting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evals import comparison
from evals.comparison import compare_predictions, mcnemar_exact
from evals.prediction_files import write_predictions_csv
from utils.errors import DataError

# uid: (label, prediction A, prediction B, category). Shared: the first five; dev-3-1-0 only in A, dev-4-0-0 only
# in B. A right on dev-1-0-0 and dev-2-1-0 (2/5); B right on dev-1-0-0, dev-1-1-0, dev-2-0-0 (3/5).
ROWS = {
    "dev-1-0-0": (True, True, True, "count"),  # both right
    "dev-1-1-0": (False, True, False, "count"),  # wrong -> right
    "dev-2-0-0": (True, None, True, "color"),  # unparseable -> right
    "dev-2-1-0": (False, False, True, "color"),  # right -> wrong
    "dev-3-0-0": (True, False, False, "color"),  # both wrong
    "dev-3-1-0": (False, False, "absent", "color"),
    "dev-4-0-0": (True, "absent", True, "count"),
}


def write_run(folder: Path, which: int) -> Path:
    folder.mkdir(parents=True)
    with (folder / "predictions.jsonl").open("w") as fh:
        for uid, row in ROWS.items():
            if row[which] != "absent":
                rec = {"uid": uid, "sentence": "s", "label": row[0], "prediction": row[which], "category": row[3]}
                fh.write(json.dumps(rec) + "\n")
    return folder


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [(0, 5, 0.0625), (5, 0, 0.0625), (1, 9, 22 / 1024), (9, 1, 22 / 1024), (3, 3, 1.0), (0, 0, 1.0), (1, 2, 1.0)],
)
def test_mcnemar_exact_known_tables(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize(("b", "c"), [(0, 1), (2, 7), (13, 4), (40, 61), (150, 120)])
def test_mcnemar_exact_matches_the_binomial_sum(b, c):
    n = b + c
    expected = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)
    assert mcnemar_exact(b, c) == expected


def test_mcnemar_exact_large_counts_stay_finite():
    p = mcnemar_exact(2000, 3000)
    assert 0.0 <= p < 1e-40
    assert mcnemar_exact(2500, 2500) == 1.0


def test_compare_runs_flips_deltas_and_files(tmp_path):
    a, b = write_run(tmp_path / "zero_shot", 1), write_run(tmp_path / "finetuned", 2)
    result = comparison.compare_runs(a, b, out=tmp_path / "cmp", n_resamples=200)
    assert (result["n"], result["n_only_a"], result["n_only_b"]) == (5, 1, 1)
    assert (result["only_a_uids"], result["only_b_uids"]) == (["dev-3-1-0"], ["dev-4-0-0"])
    assert (result["accuracy_a"], result["accuracy_b"]) == (pytest.approx(0.4), pytest.approx(0.6))
    assert result["delta"] == pytest.approx(0.2)
    assert result["delta_ci"][0] <= result["delta"] <= result["delta_ci"][1]
    assert result["flips"] == {"wrong_to_right": ["dev-1-1-0", "dev-2-0-0"], "right_to_wrong": ["dev-2-1-0"]}
    assert (result["n_wrong_to_right"], result["n_right_to_wrong"], result["mcnemar_p"]) == (2, 1, 1.0)
    assert (result["n_unparseable_a"], result["n_unparseable_b"]) == (1, 0)
    count, color = result["categories"]["count"], result["categories"]["color"]
    assert (count["n"], count["accuracy_a"], count["accuracy_b"], count["delta"]) == (2, 0.5, 1.0, 0.5)
    assert (color["n"], color["delta"], color["n_wrong_to_right"], color["n_right_to_wrong"]) == (3, 0.0, 1, 1)
    out = tmp_path / "cmp"
    assert json.loads((out / "compare.json").read_text()) == result
    assert (out / "wrong_to_right.txt").read_text().splitlines() == ["dev-1-1-0", "dev-2-0-0"]
    assert (out / "right_to_wrong.txt").read_text().splitlines() == ["dev-2-1-0"]
    text = comparison.summary_text(result)
    assert "shared uids: 5 (not shared: 1 only in A, 1 only in B)" in text and "+20.00 points" in text


def test_default_output_folder_is_under_the_artifact_root(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_STUDIES_ROOT", str(tmp_path / "artifacts"))
    a, b = write_run(tmp_path / "zero_shot", 1), write_run(tmp_path / "finetuned", 2)
    result = comparison.compare_runs(a, b, n_resamples=10)
    expected = tmp_path / "artifacts" / "analysis" / "compare" / "zero_shot__vs__finetuned"
    assert Path(result["out_dir"]) == expected and (expected / "compare.json").exists()


def test_csv_runs_take_labels_from_the_official_file(tmp_path):
    labels = tmp_path / "dev.json"
    labels.write_text(
        "".join(json.dumps({"identifier": u, "label": str(r[0]), "sentence": "s"}) + "\n" for u, r in ROWS.items())
    )
    for name, which in (("a.csv", 1), ("b.csv", 2)):
        write_predictions_csv({u: r[which] for u, r in ROWS.items() if r[which] != "absent"}, tmp_path / name)
    result = comparison.compare_runs(
        tmp_path / "a.csv", tmp_path / "b.csv", out=tmp_path / "cmp", labels=labels, n_resamples=10
    )
    assert result["flips"]["wrong_to_right"] == ["dev-1-1-0", "dev-2-0-0"] and result["delta"] == pytest.approx(0.2)
    with pytest.raises(DataError, match="5 shared uids have no label"):
        comparison.compare_runs(tmp_path / "a.csv", tmp_path / "b.csv", out=tmp_path / "cmp2")


def test_runs_with_different_labels_are_refused(tmp_path):
    a = write_run(tmp_path / "a", 1)
    b = tmp_path / "b"
    b.mkdir()
    (b / "predictions.jsonl").write_text(json.dumps({"uid": "dev-1-0-0", "label": False, "prediction": True}) + "\n")
    with pytest.raises(DataError, match="labels differ for 1 uids: dev-1-0-0"):
        comparison.compare_runs(a, b, out=tmp_path / "cmp")
    with pytest.raises(DataError, match="share no uid"):
        compare_predictions({"x": True}, {"y": True}, {"x": True, "y": True})
