"""The demo wires build -> zero-shot -> LoRA SFT -> fine-tuned eval and ends by printing summary.json's path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scripts import build_embedded_model, demo
from training.models import cpu_has_native_bf16


def test_build_reuses_a_matching_build_and_rebuilds_otherwise(tmp_path):
    args = build_embedded_model.BuildArguments(output_dir=str(tmp_path / "m"), vision_steps=2, steps=0)
    out = build_embedded_model.main(args)
    info = json.loads((out / "build_info.json").read_text())
    assert info["settings"]["vision_steps"] == 2 and (out / "model.safetensors").exists()
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    build_embedded_model.main(args)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    args.vision_steps = 0
    build_embedded_model.main(args)
    assert json.loads((out / "build_info.json").read_text())["settings"]["vision_steps"] == 0
    assert not (tmp_path / "m.building").exists()


def test_demo_end_to_end_small(tmp_path, capsys, isolated_artifacts):
    args = demo.DemoArguments(
        output_dir=str(tmp_path / "demo"),
        model_dir=str(tmp_path / "model"),
        sft_max_steps=2,
        max_eval_examples=16,
        build_vision_steps=0,
        build_steps=0,
    )
    path = demo.main(args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(path)
    summary = json.loads(Path(path).read_text())
    assert {"zero_shot_accuracy", "finetuned_accuracy", "n_eval", "wall_seconds"} <= summary.keys()
    assert summary["n_eval"] == 16 and summary["sft_steps"] == 2 and summary["sft_batch_size"] == 96
    assert summary["sft_learning_rate"] == 1.5e-3
    assert summary["sft_bf16"] == (not torch.cuda.is_available() and cpu_has_native_bf16())
    ft = [json.loads(x) for x in (tmp_path / "demo" / "finetuned" / "predictions.jsonl").read_text().splitlines()]
    assert summary["finetuned_accuracy"] == sum(p["prediction"] == p["label"] for p in ft) / 16
    assert any("zero-shot" in line and "LoRA" in line for line in lines)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU flags; on a GPU bf16 needs no use_cpu")
@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_only_where_it_is_native_unless_asked(monkeypatch, native):
    monkeypatch.setattr(demo, "cpu_has_native_bf16", lambda: native)
    assert demo._precision_overrides("auto") == (["--bf16", "true", "--use_cpu", "true"] if native else [])
    assert demo._precision_overrides("true") == ["--bf16", "true", "--use_cpu", "true"]
    assert demo._precision_overrides("false") == []
