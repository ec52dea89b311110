"""The lab's SFTTrainer: TRL's, with the fused LM head scoring only the labelled positions on the CPU too.

TRL 1.16's fused LM head (trl.trainer.utils.add_fused_lm_head, used by SFTTrainer.compute_loss) projects through the
LM head only the positions that carry a label on CUDA/XPU, but every position on other devices ("the number of valid
positions would change the tile shapes on every batch and trigger a recompilation", written for Neuron). On the CPU
that puts the whole sequence through the head, the log-softmax, the entropy and top-1 metrics, forward and backward:
~210 ms of a ~950 ms step on the embedded default (batch 32, 2 labelled tokens of ~77 per row; docs/training_speed.md).
`LabSFTTrainer` takes the compact path on the CPU as well. Loss, gradients and logged metrics are unchanged
(tests/training/test_trainer.py). The switch is TRL's private `trl.trainer.utils._use_triton`, wrapped through
training/upstream.py only under the TRL versions it was checked on; under others the trainer warns and runs TRL's path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager

import torch
from trl import SFTTrainer

from training import upstream

_state = threading.local()  # per thread: the one-process benchmark trains several trainers in threads


def _compact_on_cpu_too(trl_test):
    """TRL's "score only labelled positions here?" test, answering yes on the CPU inside `label_positions_only`."""

    def use_compact(device: torch.device) -> bool:
        return (getattr(_state, "active", False) and device.type == "cpu") or trl_test(device)

    return use_compact


def install() -> bool:
    """Route TRL's device test through `_compact_on_cpu_too` (once per process); False when training/upstream.py
    did not patch it (a TRL version it was not checked on, or the test is gone)."""
    return upstream.patch_trl_use_triton(_compact_on_cpu_too)


@contextmanager
def label_positions_only():
    """Within the block (this thread), TRL's fused LM head on the CPU scores only positions with a label."""
    install()
    before = getattr(_state, "active", False)
    _state.active = True
    try:
        yield
    finally:
        _state.active = before


class LabSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss scores only the labelled positions on every device (see the module docstring), and
    whose evaluation adds `held_out(model)`'s figures (e.g. NLVR2 accuracy by answer likelihood) to eval/loss: logged
    beside it at every eval_steps, and usable as metric_for_best_model (eval_accuracy)."""

    held_out: Callable[[torch.nn.Module], dict[str, float]] | None = None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.held_out is None or eval_dataset is not None:
            return metrics
        was_training = self.model.training
        self.model.eval()
        try:
            with self.autocast_smart_context_manager():  # the precision training runs at (bf16 autocast, ...)
                extra = {f"{metric_key_prefix}_{k}": v for k, v in self.held_out(self.model).items()}
        finally:
            self.model.train(was_training)
        self.log(extra)
        return metrics | extra

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with label_positions_only():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
