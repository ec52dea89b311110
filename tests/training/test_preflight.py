"""Token-budget pre-flight: counts and distributions, the max_length that cuts nothing, cuts inside image tokens
flagged, training/sft.py refusing to start on one, and the scripts/preflight.py report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from training.models import load_processor
from training.pipeline import tokenize_split
from training.preflight import check_token_budget, token_budget
from utils.errors import DataError
from vlm_datasets.example import Example, examples_to_dataset
from vlm_datasets.prompts import get_template

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_processor(str(tiny_model_dir), max_pixels=112 * 112)


@pytest.fixture
def split(processor, isolated_artifacts):
    """Text first, then the images (so a cut can fall inside them): 2x 56x56 (4 tokens each), 2x 112x112 (16)."""
    small, large = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (112, 112), "blue")
    examples = [
        Example("small-0", [small, small], "A red square.", True),
        Example("large-0", [large, large], "A blue square on the left and a blue square on the right.", False),
    ]
    return tokenize_split(examples_to_dataset(examples), processor, get_template("statement_then_images"))


def test_counts_distribution_and_needed_max_length(split):
    budget = token_budget(split)
    assert budget.examples == 2
    assert budget.image_tokens == pytest.approx({"min": 8, "median": 20.0, "p95": 30.8, "max": 32})
    lengths = split["length"]
    assert budget.total_tokens["max"] == budget.needed_max_length == max(lengths)
    assert budget.text_tokens["max"] == max(n - i for n, i in zip(lengths, split["image_tokens"], strict=True))
    assert not token_budget(split, max_length=max(lengths)).cuts
    stream = split.to_iterable_dataset()  # a stream: its first examples (here all of them)
    assert token_budget(stream, limit=5) == budget
    assert token_budget(split, limit=1).examples == 1


def test_a_cut_inside_image_tokens_is_flagged_and_refused(split):
    large = split.filter(lambda r: r["uid"] == "large-0")[0]
    inside = token_budget(split, max_length=large["image_end"] - 3)
    assert [c.uid for c in inside.cuts] == ["large-0"] and inside.cuts[0].cuts_image_tokens
    text_only = token_budget(split, max_length=large["image_end"] + 1)
    assert [(c.uid, c.cuts_image_tokens) for c in text_only.cuts] == [("large-0", False)]
    with pytest.raises(DataError, match=r"1 of them cut inside image tokens.*\n.*uid large-0.*INSIDE image tokens"):
        check_token_budget(split, large["image_end"] - 3)
    with pytest.raises(DataError, match=r"0 of them cut inside image tokens.*\n.*uid large-0.*in text after"):
        check_token_budget(split, large["image_end"] + 1)
    assert check_token_budget(split, large["length"]).needed_max_length == large["length"]


def sft_args(tiny_model_dir, tmp_path, *extra):
    from training.sft import make_parser

    return make_parser().parse_args_and_config(
        [
            "--config",
            str(REPO / "training/configs/embedded_lora.yaml"),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(tmp_path / "run"),
            "--synthetic_train_size",
            "16",
            "--per_device_train_batch_size",
            "4",
            "--max_steps",
            "1",
            "--report_to",
            "none",
            "--prompt_template",
            "statement_then_images",
            *extra,
        ]
    )


def test_sft_refuses_to_start_when_a_cut_falls_inside_image_tokens(tiny_model_dir, tmp_path, isolated_artifacts):
    from training.pipeline import training_data
    from training.sft import main

    args = sft_args(tiny_model_dir, tmp_path, "--max_length", "30")  # images end after ~45 tokens
    with pytest.raises(DataError, match=r"16 of 16 training examples checked: .*16 of them cut inside image tokens"):
        main(*args)
    assert not list((tmp_path / "run").glob("checkpoint-*"))
    # preflight: false leaves it to the collator, at the first batch that holds such a row
    data_args, training_args = sft_args(tiny_model_dir, tmp_path, "--max_length", "30", "--preflight", "false")[:2]
    processor = load_processor(str(tiny_model_dir), max_pixels=data_args.max_pixels)
    data = training_data(data_args, training_args, processor, get_template(data_args.prompt_template))
    assert data.budget is None
    with pytest.raises(DataError, match="exceed max_length=30"):
        data.collator([data.train[0]])


def test_preflight_script_reports_the_budget(tiny_model_dir, tmp_path, isolated_artifacts, capsys):
    from scripts.preflight import main, make_parser

    report = tmp_path / "budget.json"
    args = make_parser().parse_args_and_config(
        [
            "--config",
            str(REPO / "training/configs/embedded_lora.yaml"),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--synthetic_train_size",
            "24",
            "--prompt_template",
            "statement_then_images",
            "--max_length",
            "40",
            "--report_json",
            str(report),
        ]
    )
    budget = main(*args)
    out = capsys.readouterr().out
    assert "24 examples of split 'train'" in out and "max_length that cuts nothing" in out
    assert budget.image_tokens["max"] == 8  # two 56x56 images at max_pixels 3136: 2x2 tokens each
    assert f"at max_length=40: 24 examples cut, {len(budget.image_cuts)} of them inside image tokens" in out
    assert budget.image_cuts and json.loads(report.read_text())["needed_max_length"] == budget.needed_max_length
