"""A composed LLaVA-family VLM (training/compose.py) through the stock path: training/sft.py with LoRA on the
synthetic NLVR-style data (only adapters change, labels exactly the answer), then evals/finetuned.py on the adapter
(predictions keyed by uid). Tiny GPT-2v at random init, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from evals import finetuned
from evals.evaluate import make_parser as eval_parser
from evals.scoring import answer_tokens
from training.collators import IGNORE_INDEX
from training.compose import ComposeArguments, build, save
from training.models import LabModelArguments, language_model, load_model, lora_targets, vision_modules
from training.sft import main as sft_main
from training.sft import make_parser as sft_parser
from vlm_datasets.prompts import get_template
from vlm_datasets.synthetic import generate

REPO = Path(__file__).resolve().parents[2]
VISION = dict(model_type="clip_vision_model", image_size=56, patch_size=28, hidden_size=32, intermediate_size=64,
              num_hidden_layers=1, num_attention_heads=2)  # fmt: skip
GPT2 = dict(model_type="gpt2", n_embd=32, n_layer=1, n_head=2, n_positions=256)


@pytest.fixture(scope="module")
def gpt2v(tmp_path_factory) -> Path:
    # chatml: the answer starts a line, so "True" / "False" tokenize alike alone (likelihood scoring) and in the
    # completion (training); the plain format's "ASSISTANT: True" puts a space before the answer.
    out = tmp_path_factory.mktemp("gpt2v-chatml")
    args = ComposeArguments(vision_config=VISION, text_config=GPT2, vision_feature_layer=-1, tokenizer_vocab_size=300,
                            chat_format="chatml", output_dir=str(out))  # fmt: skip
    return save(*build(args), out, args)


def test_lora_targets_and_vision_modules_are_read_off_the_model(gpt2v, tiny_model_dir):
    from trl import ModelConfig

    llava = load_model(ModelConfig(model_name_or_path=str(gpt2v)), LabModelArguments())
    assert vision_modules(llava) == ("vision_tower", "multi_modal_projector")
    assert lora_targets(llava) == r"model\.language_model\..*\.(c_attn|c_fc|c_proj)"  # GPT-2's Conv1D layers
    frozen = [n for n, p in llava.named_parameters() if not p.requires_grad]
    assert frozen and all(".vision_tower." in f".{n}" or ".multi_modal_projector." in f".{n}" for n in frozen)
    assert all(p.requires_grad for p in language_model(llava).parameters())
    # Qwen2-VL: the same modules as its fixed default names
    qwen = load_model(ModelConfig(model_name_or_path=str(tiny_model_dir)), LabModelArguments())
    assert vision_modules(qwen) == ("visual",)
    assert lora_targets(qwen) == r"model\.language_model\..*\.(down_proj|gate_proj|k_proj|o_proj|q_proj|up_proj|v_proj)"


@pytest.mark.integration
def test_composed_gpt2v_trains_with_sft_and_evaluates_with_finetuned(gpt2v, tmp_path, isolated_artifacts):
    base = AutoModelForImageTextToText.from_pretrained(gpt2v)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    run = tmp_path / "run"
    args = sft_parser().parse_args_and_config(
        ["--config", str(REPO / "training/configs/embedded_lora.yaml"), "--model_name_or_path", str(gpt2v),
         "--output_dir", str(run), "--synthetic_train_size", "8", "--per_device_train_batch_size", "4",
         "--max_steps", "2", "--learning_rate", "0.05", "--logging_steps", "1", "--report_to", "none"]
    )  # fmt: skip
    trainer = sft_main(*args)
    assert trainer.state.global_step == 2

    # Only the adapters moved: LoRA B left zero would mean no gradient reached them.
    model = trainer.model
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(".language_model." in n for n in lora)
    assert any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    for name, p in model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(p.detach(), before[name.replace("base_layer.", "")]), f"base parameter {name} changed"

    # The labels are exactly the answer and the end of turn, at the end of each row (nothing else, no image token).
    processor = trainer.processing_class
    tok = processor.tokenizer
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}  # what LlavaProcessor returns
    template = get_template(args[0].prompt_template)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        kept = (batch["labels"][i] != IGNORE_INDEX).nonzero().flatten().tolist()
        answer = tok(template.answer(row["label"]) + tok.eos_token, add_special_tokens=False).input_ids
        assert kept == list(range(n - len(answer), n))
        assert batch["labels"][i, kept].tolist() == answer == batch["input_ids"][i, kept].tolist()
        assert row["image_tokens"] == 4 * len(row["images"])  # 2x2 patches per image, CLS dropped
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == sum(r["image_tokens"] for r in rows)
    answer = answer_tokens(processor, template)  # likelihood scoring: the first tokens after the header differ
    assert answer.prefix == "" and answer.true_id != answer.false_id

    out = tmp_path / "eval"
    eval_args = eval_parser().parse_args_and_config(
        ["--config", str(REPO / "evals/configs/embedded_finetuned.yaml"), "--model_name_or_path", str(gpt2v),
         "--adapter_path", str(run), "--synthetic_eval_size", "8", "--batch_size", "8", "--output_dir", str(out)]
    )  # fmt: skip
    metrics = finetuned.main(*eval_args)
    import json

    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    expected = list(generate("test", 8, seed=eval_args[1].synthetic_seed))
    assert [p["uid"] for p in preds] == [ex.uid for ex in expected]
    assert [p["label"] for p in preds] == [ex.label for ex in expected]
    assert all(0.0 <= p["p_true"] <= 1.0 and p["prediction"] == (p["p_true"] >= 0.5) for p in preds)
    assert metrics["n"] == 8 and metrics["adapter"] == str(run)


@pytest.mark.parametrize("chat_format", ["chatml", "plain"])
def test_likelihood_scoring_reads_the_answer_token_training_labels(chat_format, tmp_path):
    """The plain format renders "ASSISTANT: True": the labelled token is " True", not the bare "True"."""
    from transformers import AutoProcessor

    from training.collators import PromptCompletionCollator
    from vlm_datasets.prompts import to_conversation

    args = ComposeArguments(vision_config=VISION, text_config=GPT2, vision_feature_layer=-1, tokenizer_vocab_size=300,
                            chat_format=chat_format, output_dir=str(tmp_path))  # fmt: skip
    processor = AutoProcessor.from_pretrained(save(*build(args), tmp_path, args))
    template = get_template("nlvr2_labeled_images")
    examples = list(generate("train", 4, seed=0))
    rows = [to_conversation(ex, template) for ex in examples]
    batch = PromptCompletionCollator(processor)(rows)
    answer = answer_tokens(processor, template)
    skip = len(processor.tokenizer(answer.prefix, add_special_tokens=False).input_ids) if answer.prefix else 0
    for i, ex in enumerate(examples):
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist()
        assert labelled[skip] == (answer.true_id if ex.label else answer.false_id)
    # chatml: the bare answer's first token; plain: "ASSISTANT: True" (this tiny vocabulary: a space token first)
    assert (answer.prefix == "") == (chat_format == "chatml")
    assert answer.prefix.strip() == ""
