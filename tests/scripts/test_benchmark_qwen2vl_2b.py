"""scripts/benchmark_qwen2vl_2b.py: the real-size config is Qwen2-VL-2B's, and --tiny runs every cell on the CPU."""

from __future__ import annotations

import json

from scripts.benchmark_qwen2vl_2b import TEXT_2B, VISION_2B, Arguments, batch_of, main
from training.flops import ParamCounts, peak_tflops, step_flops


def test_real_size_config_matches_the_reference():
    assert TEXT_2B["hidden_size"] == 1536 and TEXT_2B["num_hidden_layers"] == 28 and TEXT_2B["vocab_size"] == 151936
    head_dim = TEXT_2B["hidden_size"] // TEXT_2B["num_attention_heads"]
    assert sum(TEXT_2B["rope_scaling"]["mrope_section"]) == head_dim // 2
    assert VISION_2B["depth"] == 32 and VISION_2B["embed_dim"] == 1280 and VISION_2B["hidden_size"] == 1536
    batch = batch_of(Arguments(), 2, "cpu")
    image_tokens = int((batch["input_ids"] == 151655).sum())
    assert image_tokens == 2 * 2 * 256  # two 448x448 images per example, 256 tokens each
    assert batch["pixel_values"].shape == (2 * 2 * 1024, 1176)  # 32x32 patches of 3*2*14*14 per image


def test_flops_formula():
    counts = ParamCounts(vision=10, language_body=100, lm_head=1000, lora=1)
    # 2*N*T forward everywhere; backward: 1x for frozen LM weights, 2x for LoRA, none for the frozen ViT
    assert step_flops(counts, patches=7, tokens=5, labels=2) == 2 * 10 * 7 + 4 * 100 * 5 + 6 * 1 * 5 + 4 * 1000 * 2
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("a CPU") is None


def test_tiny_grid_runs_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "grid.json"
    args = Arguments(tiny=True, batch_sizes="1,2", work_dir=str(tmp_path / "model"), output_json=str(out))
    rows = main(args)
    assert len(rows) == 2 * 2 * 2  # lora/qlora x gc off/on x batch 1/2
    for row in rows:
        assert "error" not in row and row["samples_per_s"] > 0 and row["tflops_per_s"] > 0
        assert row["params"]["lora"] > 0 and row["params"]["vision"] > 0
    assert json.loads(out.read_text()) == rows
    assert capsys.readouterr().out.count("samples/s") == 8
