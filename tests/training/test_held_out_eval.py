"""Held-out figures while training: eval/loss and eval/accuracy (answer likelihood) at every eval_steps, in
TensorBoard beside train/*, the run's settings as hparams; the logged accuracy is the evaluator's on those examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals import finetuned
from evals.evaluate import make_parser as eval_parser
from training.sft import main, make_parser

REPO = Path(__file__).resolve().parents[2]
DATA = ["--synthetic_eval_size", "16", "--max_eval_examples", "8"]


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def train(tiny_model_dir, out: Path, *extra: str):
    argv = ["--config", str(REPO / "training/configs/embedded_lora.yaml"), "--model_name_or_path", str(tiny_model_dir)]
    argv += ["--output_dir", str(out), "--synthetic_train_size", "64", "--per_device_train_batch_size", "8"]
    argv += ["--max_steps", "4", "--save_steps", "4", "--logging_steps", "1", "--learning_rate", "0.02", *DATA]
    argv += ["--eval_strategy", "steps", "--eval_steps", "2", "--eval_accuracy_examples", "8", *extra]
    return main(*make_parser().parse_args_and_config(argv))


def test_eval_curves_in_tensorboard_match_the_evaluator(tiny_model_dir, tmp_path, isolated_artifacts):
    logs = tmp_path / "tb"
    trainer = train(tiny_model_dir, tmp_path / "run", "--report_to", "tensorboard", "--logging_dir", str(logs))
    curves = scalars(logs)
    assert [s for s, _ in curves["eval/loss"]] == [2, 4]
    assert [s for s, _ in curves["eval/accuracy"]] == [2, 4] and [s for s, _ in curves["eval/p_label"]] == [2, 4]
    assert "train/loss" in curves
    logged = [e for e in trainer.state.log_history if "eval_accuracy" in e][-1]

    out = tmp_path / "ft"
    argv = ["--config", str(REPO / "evals/configs/embedded_finetuned.yaml")]
    argv += ["--model_name_or_path", str(tiny_model_dir), "--adapter_path", str(tmp_path / "run")]
    argv += ["--output_dir", str(out), "--dataset_eval_split", "dev", *DATA]
    finetuned.main(*eval_parser().parse_args_and_config(argv))
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8
    assert logged["eval_accuracy"] == json.loads((out / "metrics.json").read_text())["accuracy"]
    p_label = sum(p["p_true"] if p["label"] else 1 - p["p_true"] for p in preds) / len(preds)
    assert logged["eval_p_label"] == pytest.approx(p_label, abs=1e-5)

    hparams = [p for p in (logs / "hparams").iterdir() if p.name.startswith("events")]
    assert hparams, "the run's settings as TensorBoard hparams"


def test_accuracy_off_leaves_the_loss_and_the_training(tiny_model_dir, tmp_path, isolated_artifacts):
    on = train(tiny_model_dir, tmp_path / "on", "--report_to", "none")
    off = train(tiny_model_dir, tmp_path / "off", "--report_to", "none", "--eval_accuracy_examples", "0")
    assert not [e for e in off.state.log_history if "eval_accuracy" in e]
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (on, off)]
    assert losses[0] == losses[1]  # scoring between steps changes nothing in training
    assert [e["eval_loss"] for e in on.state.log_history if "eval_loss" in e] == [
        e["eval_loss"] for e in off.state.log_history if "eval_loss" in e
    ]
