"""The scoring benchmark's smoke run: both paths on the same examples, their agreement, `speedup:` last."""

from __future__ import annotations

import json

from evals import benchmark_scoring
from evals.evaluate import make_parser


def test_benchmark_scores_both_ways_and_prints_the_speedup_last(tiny_model_dir, tmp_path, isolated_artifacts, capsys):
    args = make_parser().parse_args_and_config(
        ["--config", "evals/configs/embedded_zero_shot.yaml", "--model_name_or_path", str(tiny_model_dir),
         "--output_dir", str(tmp_path), "--synthetic_eval_size", "16", "--max_eval_examples", "16",
         "--batch_size", "8", "--max_new_tokens", "2"]
    )  # fmt: skip
    result = benchmark_scoring.main(*args, benchmark_scoring.ScoringBenchmarkArguments(generate_batch_size=4))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"speedup: {result['speedup']:.1f}"
    assert result["generate_batch_size"] == 4 and result["batch_size"] == 8
    assert result["n"] == 16 and 0 <= result["identical_where_parsed"] <= result["generate_parsed"] <= 16
    seconds = {path: sum(parts.values()) for path, parts in result["seconds"].items()}
    assert abs(result["speedup"] - seconds["generate"] / seconds["likelihood"]) < 1e-9
    assert abs(result["likelihood_examples_per_second"] - 16 / seconds["likelihood"]) < 1e-6
    assert json.loads((tmp_path / "benchmark_scoring.json").read_text())["n"] == 16
