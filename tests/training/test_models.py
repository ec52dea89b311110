"""Model loading: offline hub errors, 4-bit settings, LoRA targets, gradient checkpointing with PEFT and 4-bit."""

from __future__ import annotations

import pytest
from trl import ModelConfig

from training.models import (
    LORA_TARGETS,
    LabModelArguments,
    ModelNotAvailableError,
    load_model,
    load_processor,
    lora_config,
    quantization_config,
)


def test_hub_model_offline_names_the_model_and_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "Qwen/Qwen2-VL-2B-Instruct-not-cached-here"
    with pytest.raises(ModelNotAvailableError, match="embedded default") as err:
        load_model(ModelConfig(model_name_or_path=name))
    assert name in str(err.value)
    with pytest.raises(ModelNotAvailableError, match=name):
        load_processor(name)


def test_qlora_keeps_the_vision_tower_out_of_4bit_unless_asked(tiny_model_dir):
    args = ModelConfig(model_name_or_path=str(tiny_model_dir), load_in_4bit=True, use_bnb_nested_quant=True,
                       dtype="bfloat16")  # fmt: skip
    q = quantization_config(args, LabModelArguments())
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    for quantize_vision, vision_type in ((False, "Linear"), (True, "Linear4bit")):
        inner = load_model(args, LabModelArguments(quantize_vision_tower=quantize_vision)).model
        assert type(inner.language_model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
        assert type(inner.visual.blocks[0].mlp.fc1).__name__ == vision_type
        assert type(inner.visual.merger.mlp[0]).__name__ == vision_type
    assert quantization_config(ModelConfig(model_name_or_path="x"), LabModelArguments()) is None


def test_default_lora_targets_are_the_language_model_linears(tiny_model_dir):
    config = lora_config(ModelConfig(model_name_or_path=str(tiny_model_dir), use_peft=True))
    assert config.target_modules == LORA_TARGETS["qwen2_vl"]
    from peft import get_peft_model

    model = get_peft_model(load_model(ModelConfig(model_name_or_path=str(tiny_model_dir))), config)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert wrapped and all(".language_model." in n for n in wrapped)
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip


def test_full_finetuning_freezes_the_vision_tower(tiny_model_dir):
    model = load_model(ModelConfig(model_name_or_path=str(tiny_model_dir)), LabModelArguments())
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".visual." in f".{n}")
    assert all(p.requires_grad for n, p in model.named_parameters() if "language_model" in n)
