"""The reliability tests: datasets' Arrow cache and the artifact root in temporary folders; helpers importable."""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reliability_corpus, reliability_report


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets_cache")))
    monkeypatch.setenv("VLM_STUDIES_ROOT", str(tmp_path_factory.mktemp("artifacts")))


@pytest.fixture(scope="session")
def tiny_composed_vlm(tmp_path_factory) -> Path:
    """A composed GPT-2v (training/compose.py) at toy size, random init, saved as training/train_vlm.py loads it."""
    from training.compose import ComposeArguments, build, save

    out = tmp_path_factory.mktemp("tiny-gpt2v")
    vision = dict(model_type="clip_vision_model", image_size=56, patch_size=28, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=1, num_attention_heads=2)  # fmt: skip
    text = dict(model_type="gpt2", n_embd=32, n_layer=1, n_head=2, n_positions=128)
    args = ComposeArguments(vision_config=vision, text_config=text, vision_feature_layer=-1, tokenizer_vocab_size=300,
                            output_dir=str(out))  # fmt: skip
    return save(*build(args), out, args)
