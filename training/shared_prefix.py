"""Shared-prefix forward: the tokens every row of a batch starts with go through the language model once, not B times.

Every training row of a chat template starts the same way: the system turn, `<|im_start|>user\\n`, an image label, up
to the first image. On a causal decoder those positions see only each other, so their keys, values and hidden
states are the same in every row. `install` replaces `forward` on the model's text model (Qwen2-VL's
`Qwen2VLTextModel`, instance attribute; the class is untouched): per call it measures the longest prefix on which the
rows agree (input embeddings, attention mask all ones, and positions, compared exactly), runs that prefix for one
row with a `DynamicCache`, repeats the cache over the batch (`Cache.batch_repeat_interleave`), runs the rest of
every row against it, and returns the hidden states of the full sequence. Gradients flow through the repeated cache
into the one prefix computation, where they add up as they would over B copies: the same math, in another
summation order (losses equal the full forward's to float rounding: tests/training/test_shared_prefix.py).

What it saves is the prefix's share of the tokens: 20 of ~66 on the embedded default (~30% of the language model's
linear work), about 20 of ~556 on Qwen2-VL-2B with two 448x448 images (~4%). The forward falls back to the full
computation (counted) when nothing is shared (left padding, rows differing from the first token), when a cache is
passed or asked for (generation), or when hidden states or attentions are asked for. Refused (with `auto`: off) when
the text model's training would differ: a dropout in it (one mask for the prefix instead of B) or gradient
checkpointing (which drops the cache inside checkpointed layers). `auto` is also off on device types where no gain
was measured (only the CPU is in `MEASURED_ON`: docs/training_speed.md); `true` runs on any device. Not tried: FSDP,
DeepSpeed ZeRO-3.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from training.vision_cache import vision_backbone

logger = logging.getLogger(__name__)

MODES = ("auto", "true", "false")
# Device types where `auto` turns it on: where a measurement showed a gain (docs/training_speed.md).
MEASURED_ON = ("cpu",)
ATTRIBUTE = "shared_prefix_stats"  # the SharedPrefixStats on the text model
MIN_TOKENS = 2  # a shorter shared prefix is run with the rest (its own call costs more than it saves)
_OUTPUTS = ("output_attentions", "output_hidden_states")


@dataclass
class SharedPrefixStats:
    """Counters of one text model: calls with a shared prefix, calls run in full, and the row-tokens not computed."""

    shared_calls: int = 0
    full_calls: int = 0
    positions_total: int = 0  # rows x sequence length over all calls
    positions_saved: int = 0  # (rows - 1) x prefix length over the shared calls
    last_prefix: int = 0
    dropout: bool = False  # the text model had a dropout when installed: training calls run in full

    def stats(self) -> dict:
        share = self.positions_saved / self.positions_total if self.positions_total else 0.0
        return {
            "shared_calls": self.shared_calls,
            "full_calls": self.full_calls,
            "positions_saved_share": round(share, 4),
            "last_prefix_length": self.last_prefix,
        }


def text_model(model) -> torch.nn.Module | None:
    """The language model (Qwen2VLTextModel or Qwen2.5-VL's) inside `model`; None for other families."""
    inner = vision_backbone(model)
    return getattr(inner, "language_model", None) if inner is not None else None


def _dropouts(lm: torch.nn.Module) -> list[str]:
    return [
        n
        for n, m in lm.named_modules()
        if (isinstance(m, torch.nn.Dropout) and m.p > 0) or float(getattr(m, "attention_dropout", 0.0) or 0.0) > 0
    ]


def why_not_shareable(lm: torch.nn.Module) -> list[str]:
    """What makes one prefix computation differ from B of them in training: dropout, gradient checkpointing."""
    problems = []
    dropouts = _dropouts(lm)
    if dropouts:
        problems.append(f"dropout in the language model ({dropouts[0]})")
    if getattr(lm, "gradient_checkpointing", False):
        problems.append("gradient checkpointing (checkpointed layers drop the cache)")
    return problems


def shared_prefix_length(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> int:
    """Leading positions on which every row has the first row's embedding, a mask of 1 and the same positions."""
    same = (inputs_embeds == inputs_embeds[:1]).all(dim=-1).all(dim=0)  # [T]
    same &= (attention_mask == 1).all(dim=0)
    rows = 0 if position_ids.ndim == 2 else 1  # [B, T] or [3 or 4, B, T]
    same &= (position_ids == position_ids.narrow(rows, 0, 1)).flatten(0, rows).all(dim=0)
    length = int(same.int().cumprod(dim=0).sum())
    return min(length, inputs_embeds.shape[1] - 1)  # at least one position in the second call


def _rows(position_ids: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    return position_ids[rows, cols] if position_ids.ndim == 2 else position_ids[:, rows, cols]


def _shared_forward(
    self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None, use_cache=None, **kw
):
    """The text model's forward with the batch's common prefix computed once (bound by `install`)."""
    stats: SharedPrefixStats = getattr(self, ATTRIBUTE)
    full = type(self).forward

    def run_full():
        stats.full_calls += 1
        args = dict(attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=use_cache)
        return full(self, input_ids=input_ids, inputs_embeds=inputs_embeds, **args, **kw)

    eligible = (
        inputs_embeds is not None
        and cache is None
        and not use_cache
        and isinstance(attention_mask, torch.Tensor)
        and attention_mask.ndim == 2
        and isinstance(position_ids, torch.Tensor)
        and inputs_embeds.shape[0] > 1
        and not any(kw.get(k) for k in _OUTPUTS)
        # dropout was looked for once, at install; the Trainer may turn checkpointing on later, so that is read here
        and not (self.training and (stats.dropout or getattr(self, "gradient_checkpointing", False)))
    )
    if not eligible:
        return run_full()
    rows, length = inputs_embeds.shape[:2]
    stats.positions_total += rows * length
    prefix = shared_prefix_length(inputs_embeds, attention_mask, position_ids)
    if prefix < MIN_TOKENS:
        return run_full()
    kv = DynamicCache(config=self.config)
    head = full(
        self,
        inputs_embeds=inputs_embeds[:1, :prefix],
        attention_mask=attention_mask[:1, :prefix],
        position_ids=_rows(position_ids, slice(0, 1), slice(0, prefix)),
        cache=kv,
        use_cache=True,
        **kw,
    )
    kv.batch_repeat_interleave(rows)  # [1, heads, prefix, dim] -> [rows, ...]; its backward sums over the rows
    tail = full(
        self,
        inputs_embeds=inputs_embeds[:, prefix:],
        attention_mask=attention_mask,  # the whole sequence's mask: the cache holds the prefix
        position_ids=_rows(position_ids, slice(None), slice(prefix, None)),
        cache=kv,
        use_cache=True,
        **kw,
    )
    stats.shared_calls += 1
    stats.positions_saved += (rows - 1) * prefix
    stats.last_prefix = prefix
    hidden = torch.cat([head.last_hidden_state.expand(rows, -1, -1), tail.last_hidden_state], dim=1)
    return BaseModelOutputWithPast(last_hidden_state=hidden)


def install(model) -> SharedPrefixStats:
    """Run `model`'s text model with shared prefixes from now on; returns its counters."""
    lm = text_model(model)
    if lm is None:
        raise ValueError(f"{type(model).__name__}: no Qwen2-VL-family text model to share prefixes in")
    stats = SharedPrefixStats(dropout=bool(_dropouts(lm)))
    setattr(lm, ATTRIBUTE, stats)
    lm.forward = types.MethodType(_shared_forward, lm)  # bound to the instance, like the vision feature cache
    return stats


def uninstall(model) -> None:
    lm = text_model(model)
    if lm is not None and hasattr(lm, ATTRIBUTE):
        del lm.forward
        delattr(lm, ATTRIBUTE)


def installed(model) -> SharedPrefixStats | None:
    lm = text_model(model)
    return getattr(lm, ATTRIBUTE, None) if lm is not None else None


def decide(mode: str, model, device_type: str) -> tuple[bool, str]:
    """(on, why) for shared_prefix `mode` on a `device_type` ("cpu", "cuda", ...) device: auto is on exactly on a
    MEASURED_ON device when one prefix computation trains as B do; true refuses otherwise (on any device)."""
    if mode not in MODES:
        raise ValueError(f"shared_prefix must be one of {MODES}, got {mode!r}")
    if mode == "false":
        return False, "off (shared_prefix: false)"
    if mode == "auto" and device_type not in MEASURED_ON:
        return False, f"auto: off on {device_type}, not measured there; set true to try it"
    lm = text_model(model)
    problems = ["not a Qwen2-VL-family model"] if lm is None else why_not_shareable(lm)
    if problems and mode == "true":
        raise ValueError(
            f"shared_prefix: true needs a language model without dropout or gradient checkpointing, but: "
            f"{'; '.join(problems)}. Use shared_prefix: auto (off here) or false."
        )
    if problems:
        return False, f"off (auto: {'; '.join(problems)})"
    return True, f"on ({mode} on {device_type}: no dropout, no gradient checkpointing in the language model)"


@dataclass
class SharedPrefixReport:
    """What a run did: the setting, the decision and, when on, the text model's counters."""

    setting: str
    enabled: bool
    reason: str
    stats: SharedPrefixStats | None = None

    def record(self) -> dict:
        out = {"setting": self.setting, "enabled": self.enabled, "reason": self.reason}
        return out | self.stats.stats() if self.stats is not None else out


def use_shared_prefix(trainer, lab_args) -> SharedPrefixReport:
    """Apply lab_args.shared_prefix to a built trainer on its device (after PEFT wrapped its model, so LoRA dropout is
    seen; the trainer's gradient_checkpointing setting counts although the Trainer turns it on only when training
    starts)."""
    mode = lab_args.shared_prefix
    if mode == "true" and trainer.args.gradient_checkpointing:
        raise ValueError(
            "shared_prefix: true cannot run with gradient_checkpointing (checkpointed layers drop the cache). "
            "Use shared_prefix: auto (off then) or turn gradient checkpointing off."
        )
    on, reason = decide(mode, trainer.model, trainer.accelerator.device.type)
    if on and mode == "auto" and trainer.args.gradient_checkpointing:
        on, reason = False, "off (auto: gradient checkpointing)"
    logger.info("shared prefix: %s", reason)
    report = SharedPrefixReport(mode, on, reason)
    if on:
        report.stats = install(trainer.model)
    return report
