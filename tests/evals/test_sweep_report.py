"""evals/sweep_report.py on hand-made run folders: per-run rows, per-cell mean / std / Student-t 95% CI over seeds
(checked against values computed by hand), missing runs, results.md, CSVs and plots."""

from __future__ import annotations

import csv
import json
import math

import pytest

from evals.sweep_report import collect, seed_stats, summarize, t_975, write_results

METRICS = ["accuracy", "accuracy_by_category.negation"]
# cell -> (variant, lora_r, {seed: accuracy}); seed 2 of "b" never finished, "c" ran one seed
CELLS = {
    "a__lora_r-4": ("a", 4, {0: 0.5, 1: 0.6, 2: 0.7}),
    "b__lora_r-4": ("b", 4, {0: 0.8, 1: 0.9}),
    "a__lora_r-16": ("a", 16, {0: 0.55}),
}


@pytest.fixture
def sweep_dir(tmp_path):
    runs = []
    for cell, (variant, rank, accuracies) in CELLS.items():
        for seed in (0, 1, 2):
            run_dir = tmp_path / cell / f"seed-{seed}"
            runs.append({"cell": cell, "variant": variant, "axes": {"lora_r": rank}, "seed": seed, "dir": run_dir})
            if seed not in accuracies:
                continue
            run_dir.mkdir(parents=True)
            acc = accuracies[seed]
            metrics = {
                "accuracy": acc,
                "accuracy_ci": [acc - 0.05, acc + 0.05],
                "accuracy_by_category": {"negation": acc / 2},
                "n": 512,
                "split": "test",
                "wall_seconds": 2.0,
            }
            (run_dir / "metrics.json").write_text(json.dumps(metrics))
            (run_dir / "train_summary.json").write_text(
                json.dumps({"global_step": 10, "train_loss": 0.3, "seconds": 5})
            )
    sweep = {
        "name": "fixture",
        "train_config": "training/configs/embedded_lora.yaml",
        "eval_config": "evals/configs/embedded_finetuned.yaml",
        "seeds": [0, 1, 2],
        "seed_fields": ["seed"],
        "grid": {"lora_r": [4, 16]},
        "metrics": METRICS,
    }
    return tmp_path, sweep, runs


def test_seed_stats_by_hand():
    # mean 0.6, std (ddof=1) 0.1, half-width t(0.975, 2) * 0.1 / sqrt(3) = 4.303 * 0.057735 = 0.248434
    stats = seed_stats([0.5, 0.6, 0.7])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(0.6) and stats["std"] == pytest.approx(0.1)
    assert stats["ci_low"] == pytest.approx(0.6 - 0.248434, abs=1e-6)
    assert stats["ci_high"] == pytest.approx(0.6 + 0.248434, abs=1e-6)
    # two seeds: std = 0.1 / sqrt(2) = 0.0707107, half-width 12.706 * 0.0707107 / sqrt(2) = 0.6353
    two = seed_stats([0.8, None, 0.9])
    assert two["n"] == 2 and two["std"] == pytest.approx(0.0707107, abs=1e-6)
    assert (two["ci_low"], two["ci_high"]) == (pytest.approx(0.85 - 0.6353), pytest.approx(0.85 + 0.6353))
    assert seed_stats([0.55]) == {"n": 1, "mean": 0.55, "std": None, "ci_low": None, "ci_high": None}
    assert seed_stats([])["mean"] is None
    assert t_975(1) == 12.706 and t_975(30) == 2.042 and t_975(100) == 1.96


def test_summary_per_cell(sweep_dir):
    _, sweep, runs = sweep_dir
    rows = collect(runs, METRICS)
    assert len(rows) == 9 and sum(r["complete"] for r in rows) == 6
    first = rows[0]
    assert first["accuracy_ci_low"] == pytest.approx(0.45) and first["train_steps"] == 10 and first["n_eval"] == 512
    a4, b4, a16 = summarize(rows, METRICS, ["lora_r"])
    assert (a4["cell"], a4["variant"], a4["lora_r"], a4["n_seeds"], a4["n_planned"]) == ("a__lora_r-4", "a", 4, 3, 3)
    assert a4["accuracy_mean"] == pytest.approx(0.6) and a4["accuracy_std"] == pytest.approx(0.1)
    assert a4["accuracy_ci_high"] == pytest.approx(0.848434, abs=1e-6)
    assert a4["accuracy_by_category.negation_mean"] == pytest.approx(0.3)
    assert a4["accuracy_by_category.negation_std"] == pytest.approx(0.05)
    assert b4["n_seeds"] == 2 and b4["accuracy_mean"] == pytest.approx(0.85)
    assert a16["n_seeds"] == 1 and a16["accuracy_std"] is None and a16["accuracy_ci_low"] is None


def test_results_files(sweep_dir):
    out, sweep, runs = sweep_dir
    paths = write_results(out, sweep, runs, "python scripts/sweep.py --config x.yaml")
    assert [p.name for p in paths] == [
        "results.csv",
        "summary.csv",
        "results.md",
        "plot_accuracy.png",
        "plot_accuracy_by_category_negation.png",
    ]
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 and rows[0]["cell"] == "a__lora_r-4" and rows[0]["accuracy"] == "0.5"
    assert rows[5]["complete"] == "False" and rows[5]["accuracy"] == ""  # b, seed 2
    with (out / "summary.csv").open() as fh:
        summary = list(csv.DictReader(fh))
    assert math.isclose(float(summary[0]["accuracy_ci_low"]), 0.351566, abs_tol=1e-6)
    md = (out / "results.md").read_text()
    assert "`python scripts/sweep.py --config x.yaml`" in md and "split `test`, 512 examples per run" in md
    assert "| a__lora_r-4 | a | 4 | 3/3 | 0.600 | 0.100 | [0.352, 0.848] | 0.300 | 0.050 |" in md
    assert "| a__lora_r-16 | a | 16 | 1/3 | 0.550 | – | – |" in md
    assert "Not complete (3 runs): b__lora_r-4 seed 2, a__lora_r-16 seed 1, a__lora_r-16 seed 2" in md
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths[3:])


def test_an_unknown_metric_is_named(sweep_dir):
    _, _, runs = sweep_dir
    with pytest.raises(ValueError, match="no metric 'acuracy'.*accuracy, accuracy_by_category"):
        collect(runs, ["acuracy"])
