"""The frozen vision tower's feature cache: training with it gives the uncached losses and adapter, later epochs are
served from it, images are keyed by (uid, index, pixel settings, grid) without reading a pixel, a trainable tower or
a device without a measured gain turns auto off (true is refused with a trainable tower), and the memory cap holds."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from accelerate.utils import send_to_device
from peft import LoraConfig, get_peft_model
from trl import ModelConfig

from training import trainer as lab_trainer
from training import vision_cache
from training.models import LORA_TARGETS, LabModelArguments, load_model, load_processor
from training.pipeline import TokenizedCollator, tokenize_split
from training.sft import main, make_parser
from training.vision_cache import use_vision_cache
from vlm_datasets.config import DataArguments
from vlm_datasets.loading import load_split
from vlm_datasets.prompts import get_template

REPO = Path(__file__).resolve().parents[2]
COMPUTE_LOSS = lab_trainer.LabSFTTrainer.compute_loss  # before any test patches it


def run_sft(tiny_model_dir, out_dir, monkeypatch, *extra) -> tuple[object, list[float]]:
    """training/sft.py on 16 examples, batch 8 (2 steps an epoch), 5 steps; returns the trainer and each step's loss
    unrounded (the Trainer's log rounds it to 4 digits)."""
    losses = []

    def recorded(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = COMPUTE_LOSS(self, model, inputs, return_outputs, num_items_in_batch)
        losses.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(lab_trainer.LabSFTTrainer, "compute_loss", recorded)
    args = make_parser().parse_args_and_config(
        ["--config", str(REPO / "training/configs/embedded_lora.yaml"), "--model_name_or_path", str(tiny_model_dir)]
        + ["--output_dir", str(out_dir), "--synthetic_train_size", "16", "--per_device_train_batch_size", "8"]
        + ["--max_steps", "5", "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1"]
        + ["--report_to", "none", *extra]
    )
    return main(*args), losses


@pytest.mark.parametrize(
    "extra",
    [[], ["--gradient_checkpointing", "true"], ["--vision_feature_cache_precompute", "true"]],
    ids=["auto", "gradient_checkpointing", "precompute"],
)
def test_cached_training_equals_uncached_and_later_epochs_hit(
    tiny_model_dir, tmp_path, isolated_artifacts, monkeypatch, extra
):
    plain, plain_losses = run_sft(
        tiny_model_dir, tmp_path / "plain", monkeypatch, "--vision_feature_cache", "false", *extra
    )
    cached, cached_losses = run_sft(tiny_model_dir, tmp_path / "cached", monkeypatch, *extra)
    assert vision_cache.installed(plain.model) is None
    assert len(cached_losses) == len(plain_losses) == 5
    assert max(abs(a - b) for a, b in zip(cached_losses, plain_losses, strict=True)) < 1e-6
    plain_lora = {n: p for n, p in plain.model.named_parameters() if "lora_" in n}
    cached_lora = dict((n, p) for n, p in cached.model.named_parameters() if "lora_" in n)
    assert plain_lora.keys() == cached_lora.keys() and plain_lora
    for name, value in plain_lora.items():
        torch.testing.assert_close(cached_lora[name], value, rtol=0, atol=1e-6)

    stats = vision_cache.installed(cached.model).stats()
    # 16 examples x 2 images seen in 2.5 epochs: every image after its first sight comes from the cache
    precomputed = 16 * 2 if "--vision_feature_cache_precompute" in extra else 0  # the setup pass's lookups
    assert stats["hits"] >= 3 * 8 * 2 and stats["hits"] + stats["misses"] == 5 * 8 * 2 + precomputed
    assert stats["images"] == stats["computed"] <= 32 and stats["bypassed_calls"] == 0
    if precomputed:  # all computed at setup: training was served from the cache alone
        assert stats["hits"] == 5 * 8 * 2 and stats["misses"] == stats["computed"]
    record = json.loads((tmp_path / "cached" / "run_record.json").read_text())["vision_feature_cache"]
    assert record["enabled"] and record["setting"] == "auto" and record["hits"] == stats["hits"]
    assert not json.loads((tmp_path / "plain" / "run_record.json").read_text())["vision_feature_cache"]["enabled"]


def test_a_trainable_vision_tower_turns_auto_off_and_true_is_refused(
    tiny_model_dir, tmp_path, isolated_artifacts, monkeypatch
):
    full = load_model(ModelConfig(model_name_or_path=str(tiny_model_dir)), LabModelArguments(freeze_vision_tower=False))
    lora_in_merger = get_peft_model(
        load_model(ModelConfig(model_name_or_path=str(tiny_model_dir))),
        LoraConfig(target_modules=LORA_TARGETS["qwen2_vl"] + r"|.*visual\.merger\.mlp\.0", r=4),
    )
    saved_merger = get_peft_model(
        load_model(ModelConfig(model_name_or_path=str(tiny_model_dir))),
        LoraConfig(target_modules=LORA_TARGETS["qwen2_vl"], modules_to_save=["merger"], r=4),
    )
    for model in (full, lora_in_merger, saved_merger):
        on, reason = vision_cache.decide("auto", model, "cpu")
        assert not on and "trainable vision-tower parameters" in reason
        for device in ("cpu", "cuda"):
            with pytest.raises(ValueError, match="vision_feature_cache: true needs a frozen"):
                vision_cache.decide("true", model, device)
    frozen = get_peft_model(
        load_model(ModelConfig(model_name_or_path=str(tiny_model_dir))),
        LoraConfig(target_modules=LORA_TARGETS["qwen2_vl"], r=4),
    )
    assert vision_cache.decide("auto", frozen, "cpu")[0] and vision_cache.decide("true", frozen, "cpu")[0]
    assert not vision_cache.decide("false", frozen, "cpu")[0]
    # through training/sft.py: LoRA on the merger with true stops before training
    with pytest.raises(ValueError, match="trainable vision-tower parameters"):
        run_sft(tiny_model_dir, tmp_path / "run", monkeypatch, "--vision_feature_cache", "true",
                "--lora_target_modules", LORA_TARGETS["qwen2_vl"] + r"|.*visual\.merger\.mlp\.0")  # fmt: skip


def images_and_model(tiny_model_dir, n: int):
    """The first n synthetic images, their pixels and keys (one image per uid), and the tiny model in float32."""
    processor = load_processor(str(tiny_model_dir), max_pixels=3136)
    rows = load_split(DataArguments(synthetic_train_size=n, max_pixels=3136), "train")
    images = [img for row in rows for img in row["images"]][:n]
    pixels = processor.image_processor(images=images, return_tensors="pt")  # pixel_values [16 n, 1176]
    keys = vision_cache.image_keys([f"u{i}" for i in range(n)], [1] * n, processor.image_processor,
                                   pixels["image_grid_thw"])  # fmt: skip
    model = load_model(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"))
    return model, pixels["pixel_values"], pixels["image_grid_thw"], keys


def test_served_features_are_the_towers_and_the_cap_holds(tiny_model_dir, caplog):
    model, pixel_values, grid, keys = images_and_model(tiny_model_dir, 8)
    inner = model.model
    with torch.no_grad():
        expected = inner.get_image_features(pixel_values, grid).pooler_output  # uncached, per image
    per_image = expected[0].numel() * expected[0].element_size()
    cache = vision_cache.install(model, max_gb=3.5 * per_image / 2**30)  # room for 3 images
    with caplog.at_level(logging.WARNING, logger="training.vision_cache"), cache.keyed(keys):
        first = inner.get_image_features(pixel_values, grid, return_dict=True).pooler_output
        second = model.get_image_features(pixel_values, grid).pooler_output  # the outer model's, same path
    assert len(first) == len(second) == 8
    for got in (*first, *second):
        assert not got.requires_grad
    for a, b, want in zip(first, second, expected, strict=True):
        assert a.dtype == b.dtype == want.dtype and a.device == want.device
        assert torch.equal(a, want) and torch.equal(b, want)
    stats = cache.stats()
    assert stats["images"] == 3 and stats["full"] and cache.bytes <= cache.max_bytes
    assert stats["hits"] == 3 and stats["misses"] == 8 + 5 and stats["computed"] == 8 + 5
    assert sum("cap of" in r.message for r in caplog.records) == 1  # logged once

    # hidden states asked for, or no keys (generation): the tower runs as usual, the result is the uncached one
    with cache.keyed(keys):
        out = inner.get_image_features(pixel_values, grid, output_hidden_states=True, return_dict=True)
    assert out.hidden_states is not None and cache.bypassed_calls == 1
    assert all(torch.equal(a, b) for a, b in zip(out.pooler_output, expected, strict=True))
    unkeyed = inner.get_image_features(pixel_values, grid, return_dict=True).pooler_output
    assert all(torch.equal(a, b) for a, b in zip(unkeyed, expected, strict=True)) and cache.bypassed_calls == 2
    with cache.keyed(keys[:-1]), pytest.raises(ValueError, match="7 image keys do not match"):
        inner.get_image_features(pixel_values, grid)
    vision_cache.uninstall(model)
    assert vision_cache.installed(model) is None
    assert "get_image_features" not in vars(inner) and "forward" not in vars(inner)


def test_keys_name_the_image_its_pixel_settings_and_grid(tiny_model_dir):
    processor = load_processor(str(tiny_model_dir), max_pixels=3136)
    ip = processor.image_processor
    grid = torch.tensor([[1, 4, 4], [1, 4, 4], [1, 4, 4]])
    keys = vision_cache.image_keys(["a", "b"], [2, 1], ip, grid)
    assert [k[0] for k in keys] == [("uid", "a", 0), ("uid", "a", 1), ("uid", "b", 0)] and len(set(keys)) == 3
    assert vision_cache.image_keys(["a", "b"], [2, 1], ip, grid) == keys  # the same images: the same keys
    # the same uid under another pixel budget (or any other pixel setting) is another image
    for min_pixels, max_pixels in ((3136, 6272), (784, 3136)):
        other = load_processor(str(tiny_model_dir), min_pixels=min_pixels, max_pixels=max_pixels).image_processor
        assert not set(vision_cache.image_keys(["a", "b"], [2, 1], other, grid)) & set(keys)
    other = load_processor(str(tiny_model_dir), max_pixels=3136).image_processor
    other.image_mean = [0.5, 0.5, 0.5]
    assert vision_cache.image_keys(["a"], [1], other, grid[:1])[0] != keys[0]
    assert vision_cache.image_keys(["a"], [1], ip, torch.tensor([[1, 2, 8]]))[0] != keys[0]  # another grid
    with pytest.raises(ValueError, match="3 images in the rows, 2"):
        vision_cache.image_keys(["a", "b"], [2, 1], ip, grid[:2])
    # with the encoded files' digests: one image under two uids is one key, two images under one uid are two
    digested = vision_cache.image_keys(["a", "b"], [2, 1], ip, grid, ["d1", "d2", "d1"])
    assert [k[0] for k in digested] == [("sha1", "d1"), ("sha1", "d2"), ("sha1", "d1")] and digested[0] == digested[2]
    assert vision_cache.image_keys(["a", "b"], [2, 1], ip, grid, ["d1", "", ""])[1:] == keys[1:]  # none: uid, index
    assert vision_cache.image_keys(["a"], [1], other, grid[:1], ["d1"])[0] != digested[0]  # another pixel setting
    with pytest.raises(ValueError, match="3 images in the rows \\(2 digests\\), 3"):
        vision_cache.image_keys(["a", "b"], [2, 1], ip, grid, ["d1", "d2"])


def test_the_collator_keys_by_the_encoded_file(tiny_model_dir, isolated_artifacts):
    """The tokenized split carries each image's SHA-1 of its encoded file; the collator's keys use it, and a row
    whose images are another row's (another uid) gets that row's keys."""
    processor = load_processor(str(tiny_model_dir), max_pixels=3136)
    data_args = DataArguments(synthetic_train_size=4, max_pixels=3136)
    rows = load_split(data_args, "train")
    copy = rows.select([0]).map(lambda row: {"uid": "copy-of-0"})  # the same encoded images under another uid
    split = tokenize_split(datasets.concatenate_datasets([rows, copy]), processor, get_template("nlvr2_labeled_images"))
    cells = rows.cast_column("images", datasets.Sequence(datasets.Image(decode=False)))[0]["images"]
    assert split[0]["image_digests"] == [hashlib.sha1(c["bytes"]).hexdigest() for c in cells]
    collator = TokenizedCollator(processor, vision_cache_keys=True)
    batch = collator(list(split))
    keys = batch[vision_cache.KEYS_FIELD].keys
    assert len(keys) == 5 * 2 and keys[8:] == keys[:2] and all(k[0][0] == "sha1" for k in keys)
    # one opaque value: moved to the device as it is, not walked tuple by tuple
    assert send_to_device(batch, "cpu")[vision_cache.KEYS_FIELD] is batch[vision_cache.KEYS_FIELD]
    assert vision_cache.KEYS_FIELD not in TokenizedCollator(processor)(list(split))  # only when asked


class PixelReads(torch.overrides.TorchFunctionMode):
    """Records the name of every torch function or tensor method called with `tensor` as an argument, except while
    `paused` (inside the vision tower)."""

    current = None  # the one in use

    def __init__(self, tensor):
        super().__init__()
        self.tensor, self.calls, self.paused = tensor, [], False

    def __enter__(self):
        PixelReads.current = self
        return super().__enter__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.paused and any(a is self.tensor for a in (*args, *(kwargs or {}).values())):
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_the_keyed_path_never_copies_or_hashes_pixels(tiny_model_dir, monkeypatch):
    model, pixel_values, grid, keys = images_and_model(tiny_model_dir, 6)
    inner = model.model
    cache = vision_cache.install(model, max_gb=1)
    hashed, sha1 = [], hashlib.sha1
    monkeypatch.setattr(hashlib, "sha1", lambda *a, **k: hashed.append(a) or sha1(*a, **k))
    tower, given = type(inner).get_image_features, []

    def counted_tower(self, pixels, *args, **kwargs):  # the tower's own use of the pixels is not the cache's
        given.append(pixels is PixelReads.current.tensor)
        PixelReads.current.paused = True
        try:
            return tower(self, pixels, *args, **kwargs)
        finally:
            PixelReads.current.paused = False

    monkeypatch.setattr(type(inner), "get_image_features", counted_tower)
    first = pixel_values[: 3 * 16]
    with cache.keyed(keys[:3]), PixelReads(first) as reads:  # 3 misses: the tensor goes to the tower as it is
        inner.get_image_features(first, grid[:3])
    assert reads.calls == [] and given == [True]
    with cache.keyed(keys), PixelReads(pixel_values) as reads:  # 3 hits, 3 misses
        inner.get_image_features(pixel_values, grid)
    assert reads.calls == ["__getitem__"] * 3 and given == [True, False]  # the 3 missing images' rows, to the tower
    with cache.keyed(keys), PixelReads(pixel_values) as reads:  # all hits: the pixels are not touched at all
        served = inner.get_image_features(pixel_values, grid).pooler_output
    assert reads.calls == [] and len(given) == 2 and hashed == [] and len(served) == 6
    stats = cache.stats()
    counts = (stats["images"], stats["hits"], stats["misses"], stats["computed"], stats["bypassed_calls"])
    assert counts == (6, 3 + 6, 6, 6, 0)
    # served from the keys alone: pixels on the meta device (no data to copy) give the same features
    with cache.keyed(keys):
        meta = inner.get_image_features(pixel_values.to("meta"), grid).pooler_output
    assert all(torch.equal(a, b) for a, b in zip(meta, served, strict=True))


def test_auto_is_on_only_where_measured_and_true_anywhere(tiny_model_dir):
    frozen = get_peft_model(
        load_model(ModelConfig(model_name_or_path=str(tiny_model_dir))),
        LoraConfig(target_modules=LORA_TARGETS["qwen2_vl"], r=4),
    )
    on, reason = vision_cache.decide("auto", frozen, "cpu")
    assert on and reason.startswith("on (auto on cpu:")
    for device in ("cuda", "xpu", "mps"):
        off = f"auto: off on {device}, not measured there; set true to try it"
        assert vision_cache.decide("auto", frozen, device) == (False, off)
        on, reason = vision_cache.decide("true", frozen, device)
        assert on and reason.startswith(f"on (true on {device}")


def test_through_use_vision_cache_the_device_and_the_collator_decide(tiny_model_dir):
    frozen = get_peft_model(
        load_model(ModelConfig(model_name_or_path=str(tiny_model_dir))),
        LoraConfig(target_modules=LORA_TARGETS["qwen2_vl"], r=4),
    )
    collator = TokenizedCollator(load_processor(str(tiny_model_dir)))
    trainer = SimpleNamespace(model=frozen, data_collator=collator, accelerator=SimpleNamespace(device=None))
    trainer.accelerator.device = torch.device("cuda", 0)
    report = use_vision_cache(trainer, LabModelArguments(vision_feature_cache="auto"))
    assert report.record() == {
        "setting": "auto",
        "enabled": False,
        "reason": "auto: off on cuda, not measured there; set true to try it",
    }
    assert vision_cache.installed(frozen) is None and not collator.vision_cache_keys
    assert use_vision_cache(trainer, LabModelArguments(vision_feature_cache="true")).enabled
    assert vision_cache.installed(frozen) is not None and collator.vision_cache_keys  # the collator keys its images
    vision_cache.uninstall(frozen)
    # a collator that cannot key its images: auto off, true refused
    trainer.accelerator.device, trainer.data_collator = torch.device("cpu"), lambda rows: rows
    report = use_vision_cache(trainer, LabModelArguments(vision_feature_cache="auto"))
    assert not report.enabled and report.reason == "off (auto: function does not key its images)"
    with pytest.raises(ValueError, match="needs a collator that keys its images"):
        use_vision_cache(trainer, LabModelArguments(vision_feature_cache="true"))


def test_the_setting_is_validated():
    assert LabModelArguments(vision_feature_cache=True).vision_feature_cache == "true"  # YAML's boolean
    with pytest.raises(ValueError, match="auto, true or false"):
        LabModelArguments(vision_feature_cache="sometimes")
