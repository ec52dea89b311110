"""Shared fixtures: a tiny untrained embedded-architecture Qwen2-VL saved in HF format, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Fixtures that build a model: every test using one (directly or through another fixture) is an integration test, so
# a new test that loads, trains or evaluates a model lands in that tier without a mark of its own.
MODEL_FIXTURES = {"tiny_model_dir", "tiny_composed_vlm"}


def pytest_collection_modifyitems(items):
    """Mark `integration` each test that uses a model fixture or is real_size (make test-fast runs the rest)."""
    for item in items:
        if MODEL_FIXTURES & set(item.fixturenames) or item.get_closest_marker("real_size"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A freshly built (untrained) small Qwen2-VL + processor, saved like the embedded default."""
    from training.embedded import build_model, build_processor, build_tokenizer

    out = tmp_path_factory.mktemp("tiny-qwen2vl")
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, max_pixels=56 * 56)
    build_model(tokenizer).save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture
def isolated_artifacts(tmp_path, monkeypatch):
    """The artifact root and datasets' cache in a temporary folder."""
    import datasets

    monkeypatch.setenv("VLM_STUDIES_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    return tmp_path / "artifacts"


@pytest.fixture(scope="session")
def tiny_composed_vlm(tmp_path_factory):
    """A composed GPT-2v (training/compose.py) at toy size, random init, saved as training/train_vlm.py loads it."""
    from training.compose import ComposeArguments, build, save

    out = tmp_path_factory.mktemp("tiny-gpt2v")
    vision = dict(model_type="clip_vision_model", image_size=56, patch_size=28, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=1, num_attention_heads=2)  # fmt: skip
    text = dict(model_type="gpt2", n_embd=32, n_layer=1, n_head=2, n_positions=128)
    args = ComposeArguments(vision_config=vision, text_config=text, vision_feature_layer=-1, tokenizer_vocab_size=300,
                            output_dir=str(out))  # fmt: skip
    return save(*build(args), out, args)
