"""scripts/sweep.py end to end on the tiny untrained model: a real three-cell sweep (two SFT steps, eight evaluation
examples per run) interrupted after its first cell and started again skips what is complete and redoes the rest;
runs saved with other settings are refused."""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from evals import modes
from scripts.sweep import main
from scripts.sweeps import SweepArguments
from training import fine_tuning
from utils.errors import UsageError


def tiny_sweep(tmp_path: Path, tiny_model_dir: Path, **kwargs) -> SweepArguments:
    overrides = {
        "model_name_or_path": str(tiny_model_dir),
        "synthetic_train_size": 32,
        "per_device_train_batch_size": 8,
        "max_steps": 2,
        "save_steps": 1,
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "eval.max_eval_examples": 8,
        "eval.batch_size": 8,
        "eval.report": False,
    }
    return SweepArguments(
        train_config="training/configs/embedded_lora.yaml",
        eval_config="evals/configs/embedded_finetuned.yaml",
        output_dir=str(tmp_path / "sweep"),
        grid={"lora_r": [2, 4, 8]},
        seeds=[0],
        overrides=overrides,
        **kwargs,
    )


@pytest.fixture
def calls(monkeypatch):
    """The cells trained and evaluated, by name; the evaluation of the second cell is killed once if asked."""
    seen = {"train": [], "eval": [], "kill_second_eval": False}
    train, evaluate = fine_tuning.run_sft, modes.finetuned

    def spy_train(*args, **kwargs):
        seen["train"].append(Path(args[1].output_dir).parts[-3])
        return train(*args, **kwargs)

    def spy_eval(*args):
        seen["eval"].append(Path(args[0].output_dir).parts[-2])
        if seen["kill_second_eval"] and len(seen["eval"]) == 2:
            raise KeyboardInterrupt  # as a kill while the second cell is being evaluated
        return evaluate(*args)

    monkeypatch.setattr(fine_tuning, "run_sft", spy_train)
    monkeypatch.setattr(modes, "finetuned", spy_eval)
    return seen


def test_interrupted_sweep_resumes(tiny_model_dir, tmp_path, isolated_artifacts, calls):
    args = tiny_sweep(tmp_path, tiny_model_dir, keep_checkpoints=True)
    out = Path(args.output_dir)
    calls["kill_second_eval"] = True
    with pytest.raises(KeyboardInterrupt):
        main(args, command="sweep")
    assert calls["train"] == ["lora_r-2", "lora_r-4"] and calls["eval"] == ["lora_r-2", "lora_r-4"]
    first = out / "lora_r-2" / "seed-0" / "metrics.json"
    second = out / "lora_r-4" / "seed-0"
    assert first.exists() and not (second / "metrics.json").exists() and not (out / "lora_r-8").exists()
    assert "| lora_r-2 | 2 | 1/1 |" in (out / "results.md").read_text()  # the table after the first run
    assert (second / "train" / "checkpoint-1").is_dir() and (second / "train" / "checkpoint-2").is_dir()
    # As if killed during the second step: no train_summary.json, no checkpoint-2.
    (second / "train_summary.json").unlink()
    shutil.rmtree(second / "train" / "checkpoint-2")
    stamp = first.stat().st_mtime_ns

    calls.update(train=[], eval=[], kill_second_eval=False)
    time.sleep(0.01)
    results_md = main(replace(args, keep_checkpoints=False), command="sweep")
    assert calls["train"] == ["lora_r-4", "lora_r-8"] and calls["eval"] == ["lora_r-4", "lora_r-8"]
    assert first.stat().st_mtime_ns == stamp  # the complete run was left alone
    summary = json.loads((second / "train_summary.json").read_text())
    assert summary["resumed"] and summary["global_step"] == 2  # continued from checkpoint-1
    assert not list((out / "lora_r-8" / "seed-0" / "train").glob("checkpoint-*"))  # dropped once trained
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["cell"], r["lora_r"], r["complete"]) for r in rows] == [
        ("lora_r-2", "2", "True"),
        ("lora_r-4", "4", "True"),
        ("lora_r-8", "8", "True"),
    ]
    assert all(r["n_eval"] == "8" and r["eval_split"] == "test" for r in rows)
    assert results_md == out / "results.md" and (out / "plot_accuracy.png").exists()

    calls.update(train=[], eval=[])
    main(args, command="sweep")  # everything complete: nothing runs
    assert calls["train"] == [] and calls["eval"] == []

    changed = replace(args, overrides={**args.overrides, "max_steps": 3})
    with pytest.raises(UsageError, match="3 runs were made with other settings"):
        main(changed, command="sweep")
    with pytest.raises(UsageError, match="other settings"):
        main(replace(changed, collect_only=True), command="sweep")
    assert calls["train"] == [] and calls["eval"] == []
