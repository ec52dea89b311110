"""The shared-prefix forward: the batch's common leading tokens run once, and training gives the full forward's loss,
gradients and adapter; anything it cannot share (left padding, a cache, hidden states asked for) runs in full;
dropout or gradient checkpointing turn it off (auto) or are refused (true)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.training.test_vision_cache import run_sft
from training import shared_prefix
from training.collators import ExampleCollator
from training.models import LORA_TARGETS, LabModelArguments, load_processor
from training.shared_prefix import decide, install, installed, shared_prefix_length, uninstall, use_shared_prefix
from vlm_datasets.example import examples_to_dataset
from vlm_datasets.prompts import get_template
from vlm_datasets.synthetic_source import generate


def lora_model(tiny_model_dir, dropout: float = 0.0):
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, use_safetensors=True)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=LORA_TARGETS["qwen2_vl"])
    config.init_lora_weights = False  # B != 0: the adapter changes the output, so its gradients are not trivial
    return get_peft_model(base, config)


def batch(tiny_model_dir, n: int = 6, left_padded: bool = False) -> dict:
    """The lab collator's batch (right padding); left_padded moves each row's padding to its start."""
    processor = load_processor(tiny_model_dir)
    rows = examples_to_dataset(list(generate("test", n, 0)))
    collator = ExampleCollator(processor, get_template("nlvr2_labeled_images"), max_length=256)
    out = dict(collator([rows[i] for i in range(n)]))
    out.pop("uids", None)
    if left_padded:
        pads = (out["attention_mask"] == 0).sum(dim=1)
        assert pads.max() > 0, "rows of one length: nothing to move"
        for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids"):
            out[key] = torch.stack([row.roll(int(p)) for row, p in zip(out[key], pads, strict=True)])
    return out


def loss_and_grads(model, inputs) -> tuple[float, torch.Tensor, dict]:
    model.zero_grad()
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(out.loss), out.logits.detach(), grads


def test_shared_prefix_gives_the_full_forward_and_gradients(tiny_model_dir):
    model, inputs = lora_model(tiny_model_dir), batch(tiny_model_dir)
    model.train()
    full_loss, full_logits, full_grads = loss_and_grads(model, inputs)
    stats = install(model)
    loss, logits, grads = loss_and_grads(model, inputs)
    assert stats.shared_calls == 1 and stats.full_calls == 0
    # the prefix ends where the rows first differ: the first image token (its features differ per image)
    first_image = int((inputs["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    assert stats.last_prefix == first_image > shared_prefix.MIN_TOKENS
    assert stats.stats()["positions_saved_share"] == pytest.approx(
        (len(inputs["input_ids"]) - 1) * first_image / inputs["input_ids"].numel(), abs=1e-4
    )
    assert abs(loss - full_loss) < 1e-5
    assert (logits - full_logits).abs().max() < 1e-4
    assert set(grads) == set(full_grads) and len(grads) > 0
    for name, grad in grads.items():
        scale = full_grads[name].abs().max().clamp_min(1e-8)
        assert ((grad - full_grads[name]).abs().max() / scale) < 1e-4, name
    uninstall(model)
    assert installed(model) is None
    assert abs(loss_and_grads(model, inputs)[0] - full_loss) < 1e-6


def test_what_cannot_be_shared_runs_in_full(tiny_model_dir):
    model = lora_model(tiny_model_dir).eval()
    left = batch(tiny_model_dir, left_padded=True)  # rows differ from the first token: nothing shared
    with torch.no_grad():
        expected = model(**left).logits
        stats = install(model)
        assert torch.allclose(model(**left).logits, expected, atol=1e-5)
        assert (stats.shared_calls, stats.full_calls) == (0, 1)
        right = batch(tiny_model_dir)
        hidden = model(**right, output_hidden_states=True)  # per-layer states asked for: the full forward
        assert len(hidden.hidden_states) == model.config.text_config.num_hidden_layers + 1
        assert (stats.shared_calls, stats.full_calls) == (0, 2)
        shared = model(**right).logits  # eval mode shares too (no dropout to differ)
        assert stats.shared_calls == 1
        assert torch.allclose(shared, hidden.logits, atol=1e-5)
        generated = model.generate(**right, max_new_tokens=2, do_sample=False)  # a cache: never shared
        assert generated.shape[1] == right["input_ids"].shape[1] + 2
        assert stats.shared_calls == 1


def test_dropout_and_gradient_checkpointing_turn_it_off_or_are_refused(tiny_model_dir, caplog):
    with_dropout = lora_model(tiny_model_dir, dropout=0.1)
    on, reason = decide("auto", with_dropout, "cpu")
    assert not on and "dropout in the language model" in reason and "lora_dropout" in reason
    with pytest.raises(ValueError, match="shared_prefix: true needs .*dropout"):
        decide("true", with_dropout, "cpu")
    with pytest.raises(ValueError, match="must be one of"):
        decide("sometimes", with_dropout, "cpu")
    # installed anyway on a dropout model, training mode runs in full (one mask per row, as without it)
    stats = install(with_dropout)
    with_dropout.train()
    with_dropout(**batch(tiny_model_dir))
    assert (stats.shared_calls, stats.full_calls) == (0, 1)

    plain = lora_model(tiny_model_dir)
    cpu = SimpleNamespace(device=torch.device("cpu"))
    trainer = SimpleNamespace(model=plain, args=SimpleNamespace(gradient_checkpointing=True), accelerator=cpu)
    with caplog.at_level(logging.INFO, logger="training.shared_prefix"):
        report = use_shared_prefix(trainer, LabModelArguments(shared_prefix="auto"))
    assert not report.enabled and "gradient checkpointing" in report.reason and installed(plain) is None
    assert "shared prefix: off (auto: gradient checkpointing)" in caplog.text
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        use_shared_prefix(trainer, LabModelArguments(shared_prefix="true"))
    trainer.args.gradient_checkpointing = False
    assert use_shared_prefix(trainer, LabModelArguments(shared_prefix=False)).record() == {
        "setting": "false",
        "enabled": False,
        "reason": "off (shared_prefix: false)",
    }
    with pytest.raises(ValueError, match="shared_prefix must be auto, true or false"):
        LabModelArguments(shared_prefix="yes")


def test_auto_is_on_only_where_measured_and_true_anywhere(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    on, reason = decide("auto", model, "cpu")
    assert on and reason.startswith("on (auto on cpu:")
    for device in ("cuda", "xpu", "mps"):
        off = f"auto: off on {device}, not measured there; set true to try it"
        assert decide("auto", model, device) == (False, off)
        on, reason = decide("true", model, device)
        assert on and reason.startswith(f"on (true on {device}")
    # through use_shared_prefix: the trainer's device decides, and the record says why
    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    trainer = SimpleNamespace(model=model, args=SimpleNamespace(gradient_checkpointing=False), accelerator=gpu)
    report = use_shared_prefix(trainer, LabModelArguments(shared_prefix="auto"))
    assert report.record() == {
        "setting": "auto",
        "enabled": False,
        "reason": "auto: off on cuda, not measured there; set true to try it",
    }
    assert installed(model) is None
    assert use_shared_prefix(trainer, LabModelArguments(shared_prefix="true")).enabled and installed(model)


def test_prefix_length_compares_embeddings_mask_and_positions():
    embeds = torch.zeros(3, 6, 4)
    embeds[1, 4] = 1.0  # row 1 differs at position 4
    mask = torch.ones(3, 6, dtype=torch.long)
    positions = torch.arange(6).expand(3, 3, 6).clone()
    assert shared_prefix_length(embeds, mask, positions) == 4
    mask[2, 2] = 0
    assert shared_prefix_length(embeds, mask, positions) == 2
    mask[2, 2] = 1
    positions[1, 0, 1] = 7  # one of the three rope rows differs in one row
    assert shared_prefix_length(embeds, mask, positions) == 1
    same = torch.zeros(2, 5, 4)
    assert shared_prefix_length(same, torch.ones(2, 5), torch.arange(5).expand(2, 5)) == 4  # one left for the rest


def test_training_with_it_equals_training_without(tiny_model_dir, tmp_path, isolated_artifacts, monkeypatch):
    plain, plain_losses = run_sft(tiny_model_dir, tmp_path / "plain", monkeypatch, "--shared_prefix", "false")
    shared, shared_losses = run_sft(tiny_model_dir, tmp_path / "shared", monkeypatch)
    assert installed(plain.model) is None
    assert len(shared_losses) == len(plain_losses) == 5
    assert max(abs(a - b) for a, b in zip(shared_losses, plain_losses, strict=True)) < 1e-5
    plain_lora = {n: p for n, p in plain.model.named_parameters() if "lora_" in n}
    for name, param in shared.model.named_parameters():
        if "lora_" in name:
            assert torch.allclose(param, plain_lora[name], atol=1e-5), name
    record = json.loads((tmp_path / "shared" / "run_record.json").read_text())["shared_prefix"]
    assert record["enabled"] and record["setting"] == "auto"
    assert record["shared_calls"] == 5 and record["full_calls"] == 0 and record["positions_saved_share"] > 0.1
    off = json.loads((tmp_path / "plain" / "run_record.json").read_text())["shared_prefix"]
    assert off == {"setting": "false", "enabled": False, "reason": "off (shared_prefix: false)"}


def test_base_pretraining_with_it_equals_pretraining_without(tiny_model_dir, tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    from training.pretrain_embedded import PretrainSettings, train_language_model
    from vlm_datasets.synthetic import SyntheticConfig

    processor = load_processor(tiny_model_dir)
    runs = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, use_safetensors=True)
        settings = PretrainSettings(steps=4, batch_size=8, warmup_steps=1, shared_prefix=on)
        runs[on] = (model, train_language_model(model, processor, settings, SyntheticConfig(), tmp_path / str(on)))
    losses = {on: [e["loss"] for e in r["log_history"] if "loss" in e] for on, (_, r) in runs.items()}
    assert len(losses[True]) == len(losses[False]) == 4
    assert max(abs(a - b) for a, b in zip(losses[True], losses[False], strict=True)) < 1e-5
    stats = runs[True][1]["shared_prefix"]
    assert stats["shared_calls"] == 4 and stats["full_calls"] == 0 and stats["last_prefix_length"] > 0
    assert "shared_prefix" not in runs[False][1] and installed(runs[True][0]) is None  # uninstalled after training
    trained = dict(runs[False][0].named_parameters())
    for name, param in runs[True][0].named_parameters():
        # A key bias has no gradient in exact math (softmax ignores a shift shared by all keys); Adam scales its
        # rounding noise, which the summation order changes, up to learning-rate-sized steps.
        if not name.endswith("k_proj.bias"):
            assert torch.allclose(param, trained[name], atol=1e-5), name
