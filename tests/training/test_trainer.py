"""LabSFTTrainer: TRL's loss, gradients and metrics, with only the labelled positions through the LM head on the CPU."""

from __future__ import annotations

import pytest
import torch
import trl.trainer.utils as trl_utils
from trl import ModelConfig, SFTConfig, SFTTrainer

from training.models import load_model, load_processor, lora_config
from training.pipeline import training_data
from training.trainer import LabSFTTrainer, label_positions_only
from vlm_datasets.config import DataArguments
from vlm_datasets.prompts import get_template


def loss_and_grads(trainer_class, tiny_model_dir, tmp_path, rows_seen: list[int]):
    torch.manual_seed(0)
    model_args = ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32", use_peft=True, lora_r=8)
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True, gradient_checkpointing=False)
    data_args = DataArguments(synthetic_train_size=8, max_pixels=3136)
    processor = load_processor(str(tiny_model_dir), max_pixels=3136)
    data = training_data(data_args, args, processor, get_template(data_args.prompt_template))
    trainer = trainer_class(
        model=load_model(model_args),
        args=args,
        data_collator=data.collator,
        train_dataset=data.train,
        processing_class=processor,
        peft_config=lora_config(model_args),
    )
    batch = data.collator(list(data.train))
    original = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden, *rest):  # how many positions go through the LM head
        rows_seen.append(hidden.shape[0])
        return original(hidden, *rest)

    trl_utils._ChunkedLogProbFunction.apply = counting
    try:
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
    finally:
        trl_utils._ChunkedLogProbFunction.apply = original
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics, batch


def test_only_labelled_positions_are_scored_with_the_same_loss(tiny_model_dir, tmp_path, isolated_artifacts):
    trl_rows, lab_rows = [], []
    trl_loss, trl_grads, trl_metrics, batch = loss_and_grads(SFTTrainer, tiny_model_dir, tmp_path, trl_rows)
    lab_loss, lab_grads, lab_metrics, _ = loss_and_grads(LabSFTTrainer, tiny_model_dir, tmp_path, lab_rows)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert trl_rows == [batch["input_ids"].numel() - len(batch["input_ids"])]  # TRL on the CPU: every position
    assert lab_rows == [labelled] and labelled == 2 * len(batch["input_ids"])  # the answer and <|im_end|>
    torch.testing.assert_close(lab_loss, trl_loss)
    assert lab_grads.keys() == trl_grads.keys() and lab_grads
    for name in trl_grads:
        torch.testing.assert_close(lab_grads[name], trl_grads[name], rtol=1e-5, atol=1e-7)
    assert lab_metrics == pytest.approx(trl_metrics)


def test_the_switch_is_scoped_to_the_block_and_the_cpu():
    with label_positions_only():
        assert trl_utils._use_triton(torch.device("cpu"))
        assert trl_utils._use_triton(torch.device("meta")) is False
    assert trl_utils._use_triton(torch.device("cpu")) is False
