"""Evaluation resume after a real SIGKILL, refusal to mix settings, and the image-order probe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evals import zero_shot
from evals.evaluate import make_parser, read_partial_predictions
from utils.errors import DataError

REPO = Path(__file__).resolve().parents[2]
CONFIG = "evals/configs/embedded_zero_shot.yaml"


def args_for(model_dir, out, *overrides):
    return [
        "--config",
        str(REPO / CONFIG),
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--report",
        "false",
        *overrides,
    ]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_predictions(got: list[dict], expected: list[dict]) -> None:
    """Same uids in the same order, same answers; p_true up to padding noise (batches are composed differently)."""
    assert [r["uid"] for r in got] == [r["uid"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["prediction"] == b["prediction"] and a["p_true"] == pytest.approx(b["p_true"], abs=1e-4)


def test_killed_evaluation_resumes_without_duplicates_or_gaps(tiny_model_dir, tmp_path, isolated_artifacts):
    size = ["--synthetic_eval_size", "384", "--batch_size", "1"]
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "evals/zero_shot.py"), *args_for(tiny_model_dir, out, *size)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pred = out / "predictions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if pred.exists() and pred.read_text().count("\n") >= 10:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the evaluation finished (or failed) before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written_before = pred.read_text().count("\n")
    assert 10 <= written_before < 384

    metrics = zero_shot.main(*make_parser().parse_args_and_config(args_for(tiny_model_dir, out, *size)))
    assert metrics["n"] == 384 and metrics["n_scored_this_run"] <= 384 - written_before
    resumed = lines(pred)
    assert len({r["uid"] for r in resumed}) == len(resumed) == 384

    clean = tmp_path / "clean"
    zero_shot.main(*make_parser().parse_args_and_config(args_for(tiny_model_dir, clean, *size)))
    uninterrupted = lines(clean / "predictions.jsonl")
    assert_same_predictions(resumed, uninterrupted)


def test_torn_last_line_is_dropped_and_other_settings_refused(tiny_model_dir, tmp_path, isolated_artifacts):
    out = tmp_path / "run"
    size = ["--synthetic_eval_size", "16", "--batch_size", "8"]
    zero_shot.main(*make_parser().parse_args_and_config(args_for(tiny_model_dir, out, *size)))
    pred = out / "predictions.jsonl"
    full = pred.read_text()
    kept = full.splitlines(keepends=True)[:5]
    pred.write_text("".join(kept) + full.splitlines()[5][:17])  # killed in the middle of a line
    uids = {json.loads(line)["uid"] for line in full.splitlines()}
    assert list(read_partial_predictions(pred, uids)) == [json.loads(line)["uid"] for line in kept]
    assert pred.read_text() == "".join(kept)

    metrics = zero_shot.main(*make_parser().parse_args_and_config(args_for(tiny_model_dir, out, *size)))
    assert metrics["n_scored_this_run"] == 11
    assert_same_predictions(lines(pred), [json.loads(line) for line in full.splitlines()])

    with pytest.raises(DataError, match="scoring"):
        zero_shot.main(
            *make_parser().parse_args_and_config(args_for(tiny_model_dir, out, *size, "--scoring", "generate"))
        )
    metrics = zero_shot.main(
        *make_parser().parse_args_and_config(
            args_for(tiny_model_dir, out, *size, "--scoring", "generate", "--overwrite", "true")
        )
    )
    assert metrics["n_scored_this_run"] == 16 and all("raw" in r for r in lines(pred))


def test_metrics_carry_consistency_and_confidence_intervals(tiny_model_dir, tmp_path, isolated_artifacts):
    out = tmp_path / "run"
    metrics = zero_shot.main(
        *make_parser().parse_args_and_config(
            args_for(tiny_model_dir, out, "--synthetic_eval_size", "32", "--batch_size", "16", "--report", "true")
        )
    )
    records = lines(out / "predictions.jsonl")
    groups = {}
    for r in records:  # syn_test-{set}-{pair}-0: a group is one sentence on its image pairs
        split, set_id, _pair, sentence_id = r["uid"].split("-")
        groups.setdefault((split, set_id, sentence_id), []).append(r["prediction"] == r["label"])
    assert metrics["consistency"] == pytest.approx(sum(all(v) for v in groups.values()) / len(groups))
    assert metrics["n_consistency_excluded"] == 0
    lo, hi = metrics["accuracy_ci"]
    assert lo <= metrics["accuracy"] <= hi
    assert set(metrics["categories"]) == set(metrics["accuracy_by_category"])
    assert (out / "report.md").exists() and (out / "run_reliability.png").stat().st_size > 0


def test_image_order_probe_swaps_only_statements_without_sides(tiny_model_dir, tmp_path, isolated_artifacts):
    out = tmp_path / "probe"
    metrics = zero_shot.main(
        *make_parser().parse_args_and_config(
            args_for(tiny_model_dir, out, "--synthetic_eval_size", "64", "--image_order_probe", "true")
        )
    )
    probe = lines(out / "image_order_probe.jsonl")
    sentences = {r["uid"]: r["sentence"] for r in lines(out / "predictions.jsonl")}
    side_free = [u for u, s in sentences.items() if "left" not in s.lower() and "right" not in s.lower()]
    assert side_free and sorted(r["uid"] for r in probe) == sorted(side_free)
    changed = sum(r["prediction"] != r["swapped_prediction"] for r in probe)
    assert metrics["image_order_probe"] == {
        "n": len(probe),
        "n_changed": changed,
        "share_changed": changed / len(probe),
    }
    # The untrained model's p_true depends on image order: the swap really reached the model.
    assert any(abs(r["p_true"] - r["swapped_p_true"]) > 1e-6 for r in probe)


def test_a_foreign_predictions_file_is_refused(tiny_model_dir, tmp_path, isolated_artifacts):
    out = tmp_path / "run"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"uid": "dev-1-0-0", "prediction": true}\n')
    with pytest.raises(DataError, match="other settings"):
        zero_shot.main(*make_parser().parse_args_and_config(args_for(tiny_model_dir, out)))
