"""training/sft.py end to end on the tiny model: LoRA and Q-LoRA change only adapters; resume continues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from training.sft import main, make_parser

REPO = Path(__file__).resolve().parents[2]


def parse(config: str, *overrides: str):
    return make_parser().parse_args_and_config(["--config", str(REPO / config), *overrides])


def run_sft(tiny_model_dir, out_dir, *extra):
    args = parse(
        "training/configs/embedded_lora.yaml",
        "--model_name_or_path",
        str(tiny_model_dir),
        "--output_dir",
        str(out_dir),
        "--synthetic_train_size",
        "64",
        "--per_device_train_batch_size",
        "8",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        *extra,
    )
    return main(*args)


def base_weights(model) -> dict[str, torch.Tensor]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {n: p.detach().float().clone() for n, p in base.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_adapter_training_changes_only_adapter_parameters(tiny_model_dir, tmp_path, isolated_artifacts, quantized):
    extra = ["--load_in_4bit", "true", "--use_bnb_nested_quant", "true", "--dtype", "bfloat16"] if quantized else []
    from transformers import AutoModelForImageTextToText

    before = {
        n: p.detach().float().clone()
        for n, p in AutoModelForImageTextToText.from_pretrained(tiny_model_dir).named_parameters()
    }
    trainer = run_sft(tiny_model_dir, tmp_path / "run", *extra)
    model = trainer.model
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    # LoRA B starts at zero: any nonzero B means the adapters were trained.
    assert any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    # LoRA targets only the language model; the vision tower has none.
    assert not any(".visual." in n for n in lora)
    if not quantized:  # quantized base weights are stored differently; their freezing is checked above
        after = base_weights(model)
        for name, value in after.items():
            key = name.replace("base_layer.", "")
            assert torch.equal(value, before[key]), f"base parameter {name} changed"
    out = tmp_path / "run"
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    record = json.loads((out / "run_record.json").read_text())
    configured = yaml.safe_load((REPO / "training/configs/embedded_lora.yaml").read_text())["prompt_template"]
    assert record["prompt_template"]["name"] == configured
    assert record["seed"] == 0 and record["versions"]["trl"]
    assert record["dataset"]["settings"]["source"] == "synthetic"
    assert (out / "processor_config.json").exists() or (out / "preprocessor_config.json").exists()
    if quantized:
        config = record["config"]["ModelConfig"]
        assert config["load_in_4bit"] and config["use_bnb_nested_quant"]


def test_resume_continues_from_saved_step(tiny_model_dir, tmp_path, isolated_artifacts):
    straight = tmp_path / "straight"
    run_sft(tiny_model_dir, straight, "--max_steps", "4")
    out = tmp_path / "run"
    first = run_sft(tiny_model_dir, out, "--max_steps", "2")
    assert (out / "checkpoint-2" / "optimizer.pt").exists()
    resumed = run_sft(tiny_model_dir, out, "--max_steps", "4", "--resume_from_checkpoint", "true")  # the newest
    assert resumed.state.global_step == 4
    losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert losses[:2] == [e["loss"] for e in first.state.log_history if "loss" in e]  # restored, not retrained
    # Same data order and optimizer state: the resumed adapter matches an uninterrupted run of the same seed.
    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_gradient_checkpointing_trains_adapters(tiny_model_dir, tmp_path, isolated_artifacts, quantized):
    extra = ["--load_in_4bit", "true", "--dtype", "bfloat16"] if quantized else []
    trainer = run_sft(tiny_model_dir, tmp_path / "run", "--gradient_checkpointing", "true", "--max_steps", "2", *extra)
    grads_seen = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert grads_seen and any(p.abs().sum() > 0 for p in grads_seen)  # B left zero would mean no gradient flowed
    assert all(e["grad_norm"] > 0 for e in trainer.state.log_history if "grad_norm" in e)
