"""Paired comparison of two runs: McNemar's exact test on known tables, Holm's adjustment, flip lists, accuracy and
consistency deltas, shared-uid accounting, the deltas plot and the command line's missing-path message."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from evals import comparison
from evals.comparison import compare_predictions, holm, mcnemar_exact
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


REPO = Path(__file__).resolve().parents[2]


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


def test_holm_on_a_hand_computed_case():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04): the third kept at the second's 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 2 * 0.5 capped at 1; the larger p never adjusts below it
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_holm_is_monotonic_and_never_below_the_raw_p():
    p = np.random.default_rng(0).uniform(0, 0.2, size=12).tolist()
    adjusted = holm(p)
    in_p_order = [adjusted[i] for i in np.argsort(p)]
    assert in_p_order == sorted(in_p_order)
    assert all(raw <= adj <= 1.0 for raw, adj in zip(p, adjusted, strict=True))
    assert min(adjusted) == pytest.approx(len(p) * min(p))


def test_category_p_values_are_holm_adjusted_over_the_categories():
    # x: 6 wrong -> right (p = 2 / 2**6), y: 5 (p = 2 / 2**5), z: no flip (p = 1)
    uids = [f"u{i}" for i in range(14)]
    labels = dict.fromkeys(uids, True)
    a = dict.fromkeys(uids, False) | {"u11": True, "u12": True, "u13": True}
    b = dict.fromkeys(uids, True)
    categories = {u: "x" if i < 6 else "y" if i < 11 else "z" for i, u in enumerate(uids)}
    result = compare_predictions(a, b, labels, categories=categories, n_resamples=10)
    raw = {name: c["mcnemar_p"] for name, c in result["categories"].items()}
    assert raw == pytest.approx({"x": 0.03125, "y": 0.0625, "z": 1.0})
    adjusted = {name: c["mcnemar_p_holm"] for name, c in result["categories"].items()}
    assert adjusted == pytest.approx({"x": 3 * 0.03125, "y": 2 * 0.0625, "z": 1.0})


def test_consistency_delta_counts_the_group_that_flips(tmp_path):
    # three sentence groups of two image pairs each: A and B both miss one example of dev-3-*-0 (different ones),
    # B gets dev-2-*-0 wholly right; coco-1 is no NLVR2 identifier and stays out of consistency
    right = {
        "dev-1-0-0": (True, True),
        "dev-1-1-0": (True, True),
        "dev-2-0-0": (True, True),
        "dev-2-1-0": (False, True),
        "dev-3-0-0": (False, True),
        "dev-3-1-0": (True, False),
        "coco-1": (False, True),
    }
    labels = dict.fromkeys(right, True)
    a, b = ({u: r[i] for u, r in right.items()} for i in (0, 1))
    c = compare_predictions(a, b, labels, n_resamples=200)["consistency"]
    assert (c["n_groups"], c["n_excluded"]) == (3, 1)
    assert (c["consistency_a"], c["consistency_b"], c["delta"]) == pytest.approx((1 / 3, 2 / 3, 1 / 3))
    assert (c["n_wrong_to_right"], c["n_right_to_wrong"], c["mcnemar_p"]) == (1, 0, 1.0)
    assert 0 <= c["delta_ci"][0] <= c["delta"] <= c["delta_ci"][1] <= 1  # no group got worse: the CI stays >= 0
    foreign = compare_predictions({"coco-1": True}, {"coco-1": False}, {"coco-1": True}, n_resamples=10)
    assert foreign["consistency"]["delta"] is None and foreign["consistency"]["n_excluded"] == 1


def test_compare_runs_writes_the_deltas_plot_and_summarises_consistency(tmp_path):
    a, b = write_run(tmp_path / "zero_shot", 1), write_run(tmp_path / "finetuned", 2)
    result = comparison.compare_runs(a, b, out=tmp_path / "cmp", n_resamples=200)
    plot = tmp_path / "cmp" / "zero_shot__vs__finetuned_deltas.png"
    assert result["plot"] == str(plot)
    image = matplotlib.image.imread(plot)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # groups dev-1-*-0, dev-2-*-0, dev-3-*-0: A is wholly right on none, B on dev-1-*-0
    c = result["consistency"]
    assert (c["n_groups"], c["consistency_a"], c["consistency_b"]) == (3, 0.0, pytest.approx(1 / 3))
    text = comparison.summary_text(result)
    assert "consistency B - A: +33.33 points" in text and "0.00% -> 33.33%" in text
    assert "raw and Holm-adjusted over the 2" in text and text.count("Holm p = 1") == 2


def run_compare_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "evals" / "compare.py"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_cli_names_a_missing_path_in_one_line(tmp_path):
    write_run(tmp_path / "a", 1)
    (tmp_path / "empty").mkdir()
    for missing, named in (("wrong/path", "wrong/path"), ("empty", "empty/predictions.jsonl")):
        done = run_compare_cli("a", missing, "--out", "cmp", cwd=tmp_path)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr == f"error: no such file or folder: {named}\n"
    assert not (tmp_path / "cmp").exists()
