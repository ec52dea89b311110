"""Composing a VLM from parts (training/compose.py) and training it in stages (training/stages.py, train_vlm.py):
round trip through the Auto classes, PEFT and generate(); pretrained parts copied exactly; freezing per stage;
per-component learning rates; the MoE router loss; every compose YAML parses. Tiny parts, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from trl import ModelConfig, SFTConfig

from training.collators import CaptionCollator
from training.compose import ComposeArguments, build, parameter_counts, save, train_tokenizer
from training.stages import StageArguments, VLMTrainer, set_trainable, stage_lora_config
from vlm_datasets.captions import CaptionDataArguments, load_caption_split, synthetic_rows, to_chat

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "training" / "configs" / "compose").glob("*.yaml"))
VISION = dict(model_type="clip_vision_model", image_size=56, patch_size=28, hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=2)  # fmt: skip
GPT2 = dict(model_type="gpt2", n_embd=32, n_layer=1, n_head=2, n_positions=128)
MOE = dict(model_type="qwen2_moe", hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
           shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2, num_hidden_layers=1,
           num_attention_heads=2, num_key_value_heads=1, router_aux_loss_coef=0.02)  # fmt: skip
MIXTRAL = dict(model_type="mixtral", hidden_size=32, intermediate_size=64, num_local_experts=4,
               num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
               router_aux_loss_coef=0.02)  # fmt: skip
OLMOE = dict(model_type="olmoe", hidden_size=32, intermediate_size=64, num_experts=4, num_experts_per_tok=2,
             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, router_aux_loss_coef=0.02)  # fmt: skip
MOE_LMS = {"Qwen2MoeModel": MOE, "MixtralModel": MIXTRAL, "OlmoeModel": OLMOE}  # LM class -> tiny text config


def compose(tmp: Path, **overrides) -> Path:
    args = ComposeArguments(**{"vision_config": VISION, "text_config": GPT2, "vision_feature_layer": -1,
                               "tokenizer_vocab_size": 300, "output_dir": str(tmp), **overrides})  # fmt: skip
    model, processor = build(args)
    return save(model, processor, tmp, args)


@pytest.fixture(scope="module")
def gpt2v(tmp_path_factory) -> Path:
    return compose(tmp_path_factory.mktemp("gpt2v"))


@pytest.fixture(scope="module")
def rows():
    return datasets_rows(8)


def datasets_rows(n: int, task: str = "mixed"):
    args = CaptionDataArguments(synthetic_train_size=n, synthetic_task=task)
    return load_caption_split(args)


def batch(processor, rows):
    return CaptionCollator(processor)([rows[i] for i in range(len(rows))])


# ---- composition -----------------------------------------------------------------------------------------------------


def test_round_trip_auto_classes_same_logits_peft_and_generate(gpt2v, rows):
    model = AutoModelForImageTextToText.from_pretrained(gpt2v).eval()
    processor = AutoProcessor.from_pretrained(gpt2v)
    assert type(model).__name__ == "LlavaForConditionalGeneration" and type(processor).__name__ == "LlavaProcessor"
    assert json.loads((gpt2v / "compose.json").read_text())["image_tokens"] == 4  # 2x2 patches, CLS dropped
    inputs = batch(processor, rows)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 4 * len(rows)
    again = AutoModelForImageTextToText.from_pretrained(gpt2v).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, again(**inputs).logits)
    chat = to_chat(rows[0])
    text = processor.apply_chat_template(chat["prompt"], add_generation_prompt=True)
    assert text.endswith("Describe the image.\nASSISTANT:") or text.endswith("?\nASSISTANT:")
    prompt = processor(images=chat["images"], text=[text], return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert prompt["input_ids"].shape[1] < out.shape[1] <= prompt["input_ids"].shape[1] + 5
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=r".*language_model.*\.(c_attn|c_fc)"))
    assert peft_model.generate(**prompt, max_new_tokens=3, do_sample=False).shape[0] == 1


def test_gpt2_is_composed_untied_because_llava_ties_to_embed_tokens(gpt2v):
    model = AutoModelForImageTextToText.from_pretrained(gpt2v)
    assert not model.config.text_config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.language_model.wte.weight.data_ptr()
    # transformers 5.23 itself: Llava with a tied GPT-2 cannot even be built (this canary fails once fixed upstream)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**{k: v for k, v in VISION.items() if k != "model_type"}),
                         text_config=GPT2Config(n_embd=32, n_layer=1, n_head=2, tie_word_embeddings=True))  # fmt: skip
    with pytest.raises(AttributeError, match="embed_tokens"):
        LlavaForConditionalGeneration(config)


def test_pretrained_parts_are_copied_exactly(tmp_path, rows):
    # A GPT-2 LM saved in HF format (as training/pretrain_lm.py saves one) and a CLIP vision encoder, from folders.
    tokenizer = train_tokenizer([r["answer"] for r in synthetic_rows(300, 0, "t")], 300, [])
    lm = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tokenizer), n_positions=128))
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    vision = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in VISION.items() if k != "model_type"}))
    vision.save_pretrained(tmp_path / "vit")
    CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(
        tmp_path / "vit"
    )
    args = ComposeArguments(
        vision_model_name_or_path=str(tmp_path / "vit"), text_model_name_or_path=str(tmp_path / "lm")
    )
    model, processor = build(args)
    model.eval(), lm.eval(), vision.eval()
    assert len(processor.tokenizer) == len(tokenizer) + 1  # + <image>; pad = eos for GPT-2
    ids = tokenizer("top left: large red circle.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits[..., : len(tokenizer)], lm(input_ids=ids).logits)
        pixels = processor.image_processor(rows[0]["images"], return_tensors="pt").pixel_values
        torch.testing.assert_close(model.model.vision_tower(pixels).last_hidden_state, vision(pixels).last_hidden_state)


@pytest.mark.integration
def test_an_lm_from_pretrain_lm_composes_unchanged_and_generates(tmp_path, isolated_artifacts, rows):
    # training/pretrain_lm.py's own output (its locally trained BPE has no pad token), composed by folder with the
    # documented config, gpt2v_stories.yaml.
    from scripts.compose_vlm import make_parser as compose_parser
    from training.pretrain_lm import main as pretrain_lm
    from training.pretrain_lm import make_parser as lm_parser

    lm_dir = tmp_path / "lm"
    tiny = ["--synthetic_train_docs", "60", "--max_eval_docs", "8", "--tokenizer_vocab_size", "300", "--n_embd", "32",
            "--n_layer", "1", "--n_head", "2", "--n_positions", "64", "--block_size", "32", "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--eval_strategy", "no", "--save_strategy", "no",
            "--report_to", "none", "--eval_max_new_tokens", "2", "--use_cpu", "true"]  # fmt: skip
    lm_config = str(REPO / "training/configs/gpt2_embedded.yaml")
    pretrain_lm(*lm_parser().parse_args_and_config(["--config", lm_config, *tiny, "--output_dir", str(lm_dir)]))
    lm = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    lm_tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    assert lm_tokenizer.pad_token is None

    (args,) = compose_parser().parse_args_and_config(
        ["--config", str(REPO / "training/configs/compose/gpt2v_stories.yaml"),
         "--text_model_name_or_path", str(lm_dir), "--output_dir", str(tmp_path / "vlm")]
    )  # fmt: skip
    out = save(*build(args), args.output_dir, args)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert processor.tokenizer.pad_token_id == lm_tokenizer.eos_token_id  # added by the composer: pad = eos
    text = "Once upon a time, there was a little girl named Lily."
    ids = lm_tokenizer(text, return_tensors="pt").input_ids
    assert processor.tokenizer(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():  # text alone: the composite's LM is the pretrained one, logits for its vocabulary equal
        torch.testing.assert_close(model(input_ids=ids).logits[..., : len(lm_tokenizer)], lm(input_ids=ids).logits)
    chat = to_chat(rows[0])
    text = processor.apply_chat_template(chat["prompt"], add_generation_prompt=True)
    prompt = processor(images=chat["images"], text=[text], return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert prompt["input_ids"].shape[1] < generated.shape[1] <= prompt["input_ids"].shape[1] + 3


def test_swiglu_projector_with_pixel_shuffle_is_aya_vision(tmp_path, rows):
    vision = {**VISION, "model_type": "siglip_vision_model", "patch_size": 14, "vision_use_head": False}
    text = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, tie_word_embeddings=True)  # fmt: skip
    out = compose(tmp_path, vision_config=vision, text_config=text, projector_type="swiglu", pixel_shuffle_factor=2)
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "AyaVisionForConditionalGeneration"
    assert model.config.text_config.tie_word_embeddings  # Llama names its embeddings embed_tokens: tied
    inputs = batch(processor, rows)
    assert int((inputs["input_ids"][0] == model.config.image_token_id).sum()) == 4  # 4x4 patches / (2x2)
    out = model(**inputs, output_hidden_states=True)
    assert torch.isfinite(out.loss)
    assert torch.allclose(out.logits, model.lm_head(out.hidden_states[-1]))  # the LM's own logits, unscaled
    with pytest.raises(ValueError, match="pixel shuffle comes with the swiglu"):
        ComposeArguments(vision_config=VISION, text_config=GPT2, pixel_shuffle_factor=2)


def test_vit_with_a_moe_decoder(tmp_path, rows):
    out = compose(tmp_path, vision_config={**VISION, "model_type": "vit"}, text_config=MOE)
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model.model.vision_tower).__name__ == "ViTModel"
    assert type(model.model.language_model).__name__ == "Qwen2MoeModel"
    assert torch.isfinite(model(**batch(AutoProcessor.from_pretrained(out), rows)).loss)


# ---- stages: freezing, learning rates, MoE -------------------------------------------------------------------------


def trainer_for(path: Path, tmp_path: Path, stage: StageArguments, steps: int = 2, **sft):
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    set_trainable(model, stage)
    model_args = ModelConfig(lora_r=4, lora_alpha=8)
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=steps, per_device_train_batch_size=4,
                     learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, **sft)  # fmt: skip
    peft_config = stage_lora_config(model_args, stage)
    return VLMTrainer(model=model, args=args, data_collator=CaptionCollator(processor), train_dataset=datasets_rows(8),
                      processing_class=processor, peft_config=peft_config, stage=stage)  # fmt: skip


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


@pytest.mark.integration
def test_stage1_trains_the_projector_only(gpt2v, tmp_path):
    trainer = trainer_for(gpt2v, tmp_path, StageArguments())
    before = snapshot(trainer.model)
    trainer.train()
    moved = changed(before, trainer.model)
    assert moved and all(".multi_modal_projector." in n for n in moved)
    assert {n for n in before if ".multi_modal_projector." in n} == moved


@pytest.mark.integration
def test_stage2_lora_trains_adapters_and_projector_not_the_base(gpt2v, tmp_path):
    stage = StageArguments(stage_name="instruct", train_language_model="lora")
    trainer = trainer_for(gpt2v, tmp_path, stage)
    before = snapshot(trainer.model)
    trainer.train()
    moved = changed(before, trainer.model)
    assert any("lora_B" in n for n in moved)
    assert any(".multi_modal_projector.modules_to_save." in n for n in moved)  # saved with the adapter
    assert all("lora_" in n or ".modules_to_save." in n for n in moved)  # base LM and vision untouched


def test_parameter_groups_carry_the_configured_learning_rates(gpt2v, tmp_path):
    stage = StageArguments(train_vision=True, train_language_model="full", vision_learning_rate=1e-5,
                           projector_learning_rate=2e-3)  # fmt: skip
    trainer = trainer_for(gpt2v, tmp_path, stage, weight_decay=0.1)
    groups = {g["name"]: g for g in trainer.create_optimizer().param_groups}
    assert {n: g["lr"] for n, g in groups.items()} == {
        "vision": 1e-5, "vision_no_decay": 1e-5, "projector": 2e-3, "projector_no_decay": 2e-3,
        "language_model": 1e-2, "language_model_no_decay": 1e-2,  # unset: learning_rate
    }  # fmt: skip
    assert groups["vision"]["weight_decay"] == 0.1 and groups["vision_no_decay"]["weight_decay"] == 0.0
    counts = parameter_counts(trainer.model)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == sum(counts.values())
    lora = trainer_for(gpt2v, tmp_path, StageArguments(train_language_model="lora", lora_learning_rate=3e-3))
    assert {g["name"]: g["lr"] for g in lora.create_optimizer().param_groups} == {
        "lora": 3e-3, "projector": 1e-2, "projector_no_decay": 1e-2}  # fmt: skip


@pytest.mark.integration
def test_train_steps_with_the_configured_learning_rate_per_group(gpt2v, tmp_path):
    # A constant schedule keeps each group at its configured rate; vision at lr 0 must not move although trainable.
    stage = StageArguments(train_vision=True, train_language_model="full", vision_learning_rate=0.0,
                           projector_learning_rate=2e-3, language_model_learning_rate=5e-3)  # fmt: skip
    trainer = trainer_for(gpt2v, tmp_path, stage, lr_scheduler_type="constant")
    before = snapshot(trainer.model)
    trainer.train()
    wanted = {"vision": 0.0, "projector": 2e-3, "language_model": 5e-3}
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2
    for entry in logs:  # logged at every training step, read off the optimizer the trainer stepped
        assert {k: v for k, v in entry.items() if k.startswith("lr_")} == {
            f"lr_{g}{suffix}": lr for g, lr in wanted.items() for suffix in ("", "_no_decay")
        }
    assert {g["name"]: g["lr"] for g in trainer.optimizer.param_groups} == {
        f"{g}{suffix}": lr for g, lr in wanted.items() for suffix in ("", "_no_decay")
    }
    moved = changed(before, trainer.model)
    assert not any(".vision_tower." in n for n in moved)
    assert any(".multi_modal_projector." in n for n in moved) and any(".language_model." in n for n in moved)


@pytest.mark.integration
@pytest.mark.parametrize("lm_class", list(MOE_LMS))
def test_moe_router_loss_and_expert_load_are_logged(tmp_path, rows, lm_class):
    out = compose(tmp_path / "moe", text_config=MOE_LMS[lm_class])
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model.model.language_model).__name__ == lm_class
    inputs = batch(AutoProcessor.from_pretrained(out), rows)  # images and labels
    assert (inputs["input_ids"] == model.config.image_token_id).any() and (inputs["labels"] != -100).any()
    assert torch.isfinite(model(**inputs).loss)
    stage = StageArguments(train_language_model="full")
    trainer = trainer_for(out, tmp_path, stage)
    assert trainer.is_moe and trainer.num_experts == 4  # Mixtral names it num_local_experts
    assert trainer.moe_aux_coef == pytest.approx(0.02)  # the text config's coefficient
    trainer.train()
    logs = [e for e in trainer.state.log_history if "moe_aux_loss" in e]
    assert len(logs) == 2 and all(e["moe_aux_loss"] > 0 for e in logs)
    loads = [logs[-1][f"moe_load_expert_{e}"] for e in range(4)]
    assert sum(loads) == pytest.approx(1.0) and logs[-1]["moe_load_max_over_mean"] >= 1.0
    assert trainer.model.config.text_config.router_aux_loss_coef == pytest.approx(0.02)  # the saved config keeps it


def test_every_compose_yaml_parses():
    from scripts.compose_vlm import make_parser as compose_parser
    from training.train_vlm import make_parser as train_parser

    assert len(CONFIGS) >= 12
    for path in CONFIGS:
        text = path.read_text()
        assert text.startswith("#") and f"--config training/configs/compose/{path.name}" in text, path.name
        if "vision_config" in text or "vision_model_name_or_path" in text:
            (args,) = compose_parser().parse_args_and_config(["--config", str(path)])
            assert args.output_dir
        else:
            parsed = train_parser().parse_args_and_config(["--config", str(path), "--use_cpu", "true"])
            assert parsed[2].model_name_or_path and parsed[3].stage_name
