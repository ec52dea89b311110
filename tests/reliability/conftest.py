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
