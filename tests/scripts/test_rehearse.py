"""scripts/rehearse.py: a real config rehearsed on the CPU (a 1-layer real-width folder, random weights, real NLVR2
annotations with stand-in images), every phase a subprocess with its peak RSS; the stand-in images; the projection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from scripts.rehearse import RehearseArguments, main
from training.projection import project, real_size
from vlm_datasets.stand_in_images import write_official_layout

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "tests" / "data" / "nlvr2" / "dev.json"


def first_uids(n: int) -> list[str]:
    return [json.loads(line)["identifier"] for line in DEV.read_text().splitlines()[:n]]


def test_stand_ins_have_nlvr2_sizes_names_and_jpeg_under_png(tmp_path):
    written = write_official_layout(DEV, tmp_path / "a", "dev", 3, seed=1)
    assert (tmp_path / "a" / "dev.json").read_text().splitlines() == DEV.read_text().splitlines()[:3]
    names = {w["name"] for w in written}
    assert {"dev-850-0-img0.png", "dev-850-0-img1.png", "dev-850-2-img0.png", "dev-850-2-img1.png"} <= names
    kinds = {w["kind"] for w in written}
    assert {"photo", "wide", "tall", "large"} <= kinds
    for w in written:
        with Image.open(tmp_path / "a" / "images" / w["name"]) as im:
            assert (im.format, im.size) == (w["format"], (w["width"], w["height"]))
        if w["kind"] == "wide":
            assert w["width"] >= 3 * w["height"]
        if w["kind"] == "tall":
            assert w["height"] >= 3 * w["width"]
    assert any(w["format"] == "JPEG" for w in written)  # JPEG bytes under a .png name, as in NLVR2
    again = write_official_layout(DEV, tmp_path / "b", "dev", 3, seed=1)
    assert again == written  # seeded
    for w in written:
        assert (tmp_path / "a" / "images" / w["name"]).read_bytes() == (
            tmp_path / "b" / "images" / w["name"]
        ).read_bytes()


def test_projection_flags_the_t4_and_shrinks_the_batch_when_it_does_not_fit():
    size = real_size(16)
    assert size.parameters > 2.2e9 and size.counts.lora > 0
    tokens = {"total_max": 600, "total_median": 550, "image_max": 512, "image_median": 500}
    config = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4, "gradient_checkpointing": True}
    rows = project(size, config, tokens)
    assert set(rows) == {"T4 16 GB", "A100 40 GB", "H100 80 GB"}
    assert rows["T4 16 GB"]["compute"] == "fp32" and "overflows" in rows["T4 16 GB"]["flag"]
    assert rows["H100 80 GB"]["hours_per_epoch"] < rows["A100 40 GB"]["hours_per_epoch"]
    big = project(size, config | {"gradient_checkpointing": False, "per_device_train_batch_size": 16}, tokens)
    t4 = big["T4 16 GB"]
    assert not t4["fits"] and "gradient_checkpointing true" in t4["fits_with"]
    qlora = project(size, config | {"load_in_4bit": True}, tokens)
    assert qlora["A100 40 GB"]["memory"]["weights_gb"] < rows["A100 40 GB"]["memory"]["weights_gb"] / 1.5


@pytest.fixture(scope="module")
def one_layer_folder(request, tmp_path_factory) -> Path:
    """Real widths, vocabulary and processor; 1 text layer and ViT depth 1 (as tests/training/test_real_shape.py)."""
    from training.real_shape import build_folder

    cache = getattr(request.config, "cache", None)
    wheels = os.environ.get("VLM_STUDIES_WHEELS") or (
        cache.mkdir("vlm_studies_wheels") if cache is not None else tmp_path_factory.mktemp("wheels")
    )
    out = tmp_path_factory.mktemp("qwen2vl-2b-shape-1layer")
    build_folder(out, num_hidden_layers=1, vision_depth=1, wheel_cache=wheels)
    return out


@pytest.mark.real_size
def test_rehearsal_of_the_lora_config(one_layer_folder, tmp_path):
    work = tmp_path / "rehearsal"
    args = RehearseArguments(
        config=str(REPO / "training/configs/qwen2vl_2b_lora.yaml"),
        model_name_or_path=str(one_layer_folder),
        annotations=str(DEV),
        work_dir=str(work),
        num_examples=2,
        max_steps=1,
        max_pixels=50176,  # the configs' min_pixels: 64 tokens per image
        scorings="likelihood",
    )
    report = main(args)
    assert report["ok"] and not report["not_run"]
    assert json.loads((work / "report.json").read_text()) == report
    want = ["preflight", "train", "resume", "zero_shot-likelihood", "finetuned-likelihood"]
    assert list(report["phases"])[:5] == want and {"playground", "inspector", "gallery"} <= set(report["phases"])
    for name, phase in report["phases"].items():
        assert phase["returncode"] == 0 and not phase["missing"], name
        # measured, not zero: every phase but the gallery (images and predictions only) loads the tokenizer, > 0.3 GB
        assert phase["peak_rss_gb"] > (0.05 if name == "gallery" else 0.3), name
    assert (work / "train" / "adapter_model.safetensors").exists() and report["adapter"]["trainable_parameters"] > 0
    train, resume = report["phases"]["train"], report["phases"]["resume"]
    assert train["global_step"] == 1 and [s["step"] for s in train["steps"]] == [1]
    assert resume["global_step"] == 2 and [s["step"] for s in resume["steps"]] == [2]  # continued, not restarted
    assert train["decisions"]["vision_feature_cache"]["enabled"] is True  # auto on the CPU
    uids = first_uids(2)
    assert set(report["predictions"]) == {"zero_shot-likelihood", "finetuned-likelihood"}
    for preds in report["predictions"].values():
        assert list(preds) == uids and all(p in (True, False) for p in preds.values())
    assert (
        0 < report["tokens"]["image_tokens"]["max"] <= 2 * 64 and report["tokens"]["examples"] == 2
    )  # 224x224 at most
    assert set(report["projection"]["gpus"]) == {"T4 16 GB", "A100 40 GB", "H100 80 GB"}
    md = (work / "report.md").read_text()
    assert "**Random weights**" in md and "1 text layers, ViT depth 1" in md and "peak_rss_gb" in md
