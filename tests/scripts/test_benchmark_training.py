"""scripts/benchmark_training.py smoke run on the tiny model: both pipelines train on the same rows, the only
masking difference is TRL's newline label, the vision feature cache variants train alike, and the last line printed is
the speedup."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_run_prints_a_speedup(tiny_model_dir, tmp_path, isolated_artifacts, capsys):
    from scripts.benchmark_training import main, make_parser

    report_path = tmp_path / "bench.json"
    args = make_parser().parse_args_and_config(
        [
            "--config",
            str(REPO / "training/configs/embedded_lora.yaml"),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(tmp_path / "out"),
            "--synthetic_train_size",
            "32",
            "--per_device_train_batch_size",
            "4",
            "--max_steps",
            "4",
            "--timing_warmup_steps",
            "2",
            "--memory_steps",
            "2",
            "--check_masking",
            "true",
            "--loading_examples",
            "8",
            "--variants",
            "no_vision_cache,vision_cache_precompute",
            "--output_json",
            str(report_path),
        ]
    )
    report = main(*args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"speedup: {report['speedup']:.3f}"
    runs = report["runs"]
    for name in ("trl", "lab", "trl_newline_masked"):
        run = runs[name][0]
        assert run["steps_timed"] == 2 and len(run["losses"]) == 4
    # Same rows in the same order: with TRL's newline label masked the losses are the lab's.
    assert report["loss_lab_vs_trl_newline_masked"]["max_abs"] < 1e-4
    assert report["loss_lab_vs_trl"]["max_abs"] > 1e-3  # the newline is a real difference
    assert {"synthetic cached=False", "synthetic cached=True", "jsonl cached=False", "jsonl cached=True"} <= set(
        report["data_loading"]
    )
    assert json.loads(report_path.read_text())["speedup"] == report["speedup"]
    # The lab's default caches the frozen vision tower's features; the variants train without it and with it filled
    # at setup (32 examples x 2 images, all 4 x 4 training rows then served from it), all with the same losses.
    lab, uncached, filled = runs["lab"][0], runs["lab+no_vision_cache"][0], runs["lab+vision_cache_precompute"][0]
    assert lab["vision_feature_cache"]["misses"] > 0 and uncached["vision_feature_cache"] is None
    assert filled["vision_feature_cache"]["hits"] >= 4 * 4 * 2
    for other in (uncached, filled):
        assert max(abs(a - b) for a, b in zip(lab["losses"], other["losses"], strict=True)) < 1e-6
