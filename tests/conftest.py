"""Shared fixtures: a tiny untrained embedded-architecture Qwen2-VL saved in HF format, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
