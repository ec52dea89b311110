"""Zero-shot and fine-tuned evaluation on the tiny model: predictions map back to uids, metrics match them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals import finetuned, zero_shot
from evals.evaluate import make_parser, summarize
from vlm_datasets.synthetic import generate

REPO = Path(__file__).resolve().parents[2]


def parse(config: str, *overrides: str):

    parser = make_parser()
    return parser.parse_args_and_config(["--config", str(REPO / config), *overrides])


def read_predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("scoring", ["likelihood", "generate"])
def test_zero_shot_predictions_keyed_by_uid(tiny_model_dir, tmp_path, isolated_artifacts, scoring):
    out = tmp_path / "eval"
    args = parse(
        "evals/configs/embedded_zero_shot.yaml",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--output_dir",
        str(out),
        "--synthetic_eval_size",
        "24",
        "--batch_size",
        "8",
        "--scoring",
        scoring,
    )
    metrics = zero_shot.main(*args)
    expected = list(generate("test", 24, seed=args[1].synthetic_seed))
    preds = read_predictions(out)
    assert [p["uid"] for p in preds] == [ex.uid for ex in expected]
    assert [p["label"] for p in preds] == [ex.label for ex in expected]
    assert [p["sentence"] for p in preds] == [ex.sentence for ex in expected]
    if scoring == "likelihood":
        assert all(0.0 <= p["p_true"] <= 1.0 and p["prediction"] == (p["p_true"] >= 0.5) for p in preds)
        assert metrics["n_unparseable"] == 0
    else:
        assert all("raw" in p for p in preds)
        assert metrics["n_unparseable"] == sum(p["prediction"] is None for p in preds)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["n"] == 24 and on_disk["accuracy"] == summarize(preds)["accuracy"]
    assert on_disk["accuracy"] == sum(p["prediction"] == p["label"] for p in preds) / 24
    assert (out / "run_record.json").exists()


def test_finetuned_evaluation_applies_the_adapter(tiny_model_dir, tmp_path, isolated_artifacts):
    from training.sft import main as sft_main
    from training.sft import make_parser

    run = tmp_path / "run"
    sft_args = make_parser().parse_args_and_config(
        [
            "--config",
            str(REPO / "training/configs/embedded_lora.yaml"),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(run),
            "--synthetic_train_size",
            "32",
            "--per_device_train_batch_size",
            "8",
            "--max_steps",
            "3",
            "--learning_rate",
            "0.05",
            "--report_to",
            "none",
        ]
    )
    sft_main(*sft_args)
    common = [
        "--model_name_or_path",
        str(tiny_model_dir),
        "--synthetic_eval_size",
        "16",
        "--batch_size",
        "16",
    ]
    zero_shot.main(*parse("evals/configs/embedded_zero_shot.yaml", *common, "--output_dir", str(tmp_path / "zs")))
    finetuned.main(
        *parse(
            "evals/configs/embedded_finetuned.yaml",
            *common,
            "--adapter_path",
            str(run),
            "--output_dir",
            str(tmp_path / "ft"),
        )
    )
    zs, ft = read_predictions(tmp_path / "zs"), read_predictions(tmp_path / "ft")
    assert [p["uid"] for p in zs] == [p["uid"] for p in ft]
    # The adapter changes the model's answer probabilities.
    assert any(abs(a["p_true"] - b["p_true"]) > 1e-4 for a, b in zip(zs, ft, strict=True))
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["adapter"] == str(run)


def test_zero_shot_refuses_an_adapter_and_finetuned_requires_one(tiny_model_dir, tmp_path):
    base = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match="finetuned.py"):
        zero_shot.main(*parse("evals/configs/embedded_zero_shot.yaml", *base, "--adapter_path", str(tmp_path)))
    with pytest.raises(ValueError, match="adapter_path"):
        finetuned.main(*parse("evals/configs/embedded_zero_shot.yaml", *base))


def test_examples_with_their_own_templates_are_refused(tiny_model_dir, tmp_path, isolated_artifacts):
    """train_instructions: multi gives training examples their own templates; scoring compares one template's
    answers, so evaluating such a split (here: the training split itself) is refused, naming the templates."""
    args = parse(
        "evals/configs/embedded_zero_shot.yaml",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--output_dir",
        str(tmp_path / "eval"),
        "--dataset_eval_split",
        "train",
        "--synthetic_train_size",
        "16",
        "--train_instructions",
        "multi",
    )
    with pytest.raises(ValueError, match="carry their own prompt templates.*multi_"):
        zero_shot.main(*args)
