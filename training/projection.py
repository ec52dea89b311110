"""GPU memory and time-per-epoch projections of a LoRA / Q-LoRA training config at Qwen2-VL-2B's real size, from
the real architecture (built on the meta device: no weights), the config's batch and settings, and measured token
counts. Stated models, not measurements:

memory = weights + LoRA training state + activations + 1 GB (CUDA context and allocator slack, assumed)
  weights      every parameter at the compute width (2 bytes bf16/fp16, 4 fp32); Q-LoRA: the language model's decoder
               linears in NF4 with double quantization (4 bits + an 8-bit absmax per 64 values + a 32-bit one per 256
               absmax blocks, bitsandbytes' layout), the rest (embedding = tied head, norms, vision tower) unquantized
  LoRA state   16 bytes per trainable parameter (fp32 weight, gradient, Adam m and v)
  activations  per token per decoder layer, 16-bit: 11h (attention without the score matrix, which SDPA does not
               store; Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models") +
               4h (two norms) + 2h + 6I (SwiGLU MLP inputs and its three I-wide tensors) + 12h + 2I (LoRA dropout keeps
               each adapted linear's dropped-out input) = 29h + 8I bytes; doubled at fp32. With gradient checkpointing
               every layer keeps only its input (2h) and one layer at a time holds the full set; without it every
               layer does. Plus the frozen ViT's no-grad working set (one block: patches x 4*d_vit x 2 tensors).
time per epoch = examples x model FLOPs per example (training/flops.py) / (peak TFLOPS x MFU)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

from training.flops import ParamCounts, count_params, peak_tflops, step_flops
from training.models import LORA_TARGETS
from training.real_shape import TEXT_2B, VISION_2B, real_shape_config

NLVR2_TRAIN_EXAMPLES = 86_373
OVERHEAD_GB = 1.0
NF4_BYTES_PER_VALUE = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit value, 8-bit absmax per 64, fp32 absmax per 256 blocks


@dataclass
class Gpu:
    name: str
    memory_gb: float
    bf16: bool
    peak_tflops: float  # dense 16-bit (T4: fp16) peak, training/flops.py
    fp32_tflops: float  # peak without 16-bit tensor cores
    mfu: float  # assumed model FLOPs utilisation


GPUS = (
    Gpu("T4 16 GB", 16.0, False, peak_tflops("T4"), 8.1, 0.25),
    Gpu("A100 40 GB", 40.0, True, peak_tflops("A100"), 19.5, 0.35),
    Gpu("H100 80 GB", 80.0, True, peak_tflops("H100"), 67.0, 0.35),
)


@dataclass
class RealSize:
    counts: ParamCounts  # vision, language body, head, LoRA (at the config's rank)
    parameters: int  # every base parameter once (the tied head counted with the embedding)
    nf4_linear: int  # parameters of the language model's decoder linears (what Q-LoRA quantizes)


def real_size(lora_r: int) -> RealSize:
    """Qwen2-VL-2B-Instruct's parameter counts by part, LoRA at rank `lora_r` on the lab's default targets."""
    with torch.device("meta"):
        from transformers import Qwen2VLForConditionalGeneration

        model = Qwen2VLForConditionalGeneration(real_shape_config())
    targets = re.compile(LORA_TARGETS["qwen2_vl"])
    linears = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and targets.fullmatch(name)]
    lora = sum(lora_r * (m.in_features + m.out_features) for m in linears)
    counts = count_params(model)
    counts.lora = lora
    total = sum(p.numel() for p in model.parameters())  # tied: the embedding once
    return RealSize(counts, total, sum(m.weight.numel() for m in linears))


def weights_gb(size: RealSize, qlora: bool, width: int) -> float:
    if not qlora:
        return size.parameters * width / 1e9
    return (size.nf4_linear * NF4_BYTES_PER_VALUE + (size.parameters - size.nf4_linear) * width) / 1e9


def activations_gb(batch: int, tokens: int, patches: int, checkpointing: bool, width: int) -> float:
    h, inter, layers = TEXT_2B["hidden_size"], TEXT_2B["intermediate_size"], TEXT_2B["num_hidden_layers"]
    per_layer = batch * tokens * (29 * h + 8 * inter) * width / 2
    kept = layers * batch * tokens * 2 * h * width / 2 + per_layer if checkpointing else layers * per_layer
    vit = batch * patches * 4 * VISION_2B["embed_dim"] * width * 2
    return (kept + vit) / 1e9


def memory_gb(size: RealSize, qlora: bool, batch: int, tokens: int, patches: int, checkpointing: bool, width: int):
    parts = {
        "weights_gb": weights_gb(size, qlora, width),
        "lora_state_gb": size.counts.lora * 16 / 1e9,
        "activations_gb": activations_gb(batch, tokens, patches, checkpointing, width),
        "overhead_gb": OVERHEAD_GB,
    }
    return {k: round(v, 2) for k, v in parts.items()} | {"total_gb": round(sum(parts.values()), 2)}


def project(size: RealSize, config: dict, tokens: dict, labels: int = 2, examples: int = NLVR2_TRAIN_EXAMPLES):
    """Per GPU of GPUS: memory at the config's batch (max tokens of an example), whether it fits, a batch that fits
    when it does not, and hours per epoch of `examples` at the median example; flags what the GPU cannot run as set."""
    qlora, batch = bool(config.get("load_in_4bit")), int(config.get("per_device_train_batch_size", 1))
    checkpointing = bool(config.get("gradient_checkpointing"))
    accumulation = int(config.get("gradient_accumulation_steps", 1))
    max_tokens, max_patches = tokens["total_max"], tokens["image_max"] * 4  # 2x2 patches merged into one token
    flops = step_flops(size.counts, tokens["image_median"] * 4, tokens["total_median"], labels)
    out = {}
    for gpu in GPUS:
        width = 2 if gpu.bf16 else 4  # no bf16 on a T4: fp32 compute (fp16 overflows in Qwen2-VL)
        mem = memory_gb(size, qlora, batch, max_tokens, max_patches, checkpointing, width)
        row = {"memory": mem, "fits": mem["total_gb"] <= gpu.memory_gb, "compute": "bf16" if gpu.bf16 else "fp32"}
        if not row["fits"]:
            row["fits_with"] = _smaller_batch(size, qlora, batch, accumulation, max_tokens, max_patches, width, gpu)
        peak = gpu.peak_tflops if gpu.bf16 else gpu.fp32_tflops
        row |= {"peak_tflops": peak, "mfu": gpu.mfu, "flops_per_example": flops}
        row["hours_per_epoch"] = round(examples * flops / (peak * 1e12 * gpu.mfu) / 3600, 2)
        if not gpu.bf16:
            row["fp16_hours_per_epoch"] = round(examples * flops / (gpu.peak_tflops * 1e12 * gpu.mfu) / 3600, 2)
            row["flag"] = (
                "no bf16 on a T4: the config's bf16 needs fp32 compute (memory and hours here are fp32's); fp16 "
                "would be faster (fp16_hours_per_epoch) but overflows in Qwen2-VL's activations"
            )
        out[gpu.name] = row
    return out


def _smaller_batch(size, qlora, batch, accumulation, tokens, patches, width, gpu: Gpu) -> str:
    """The largest batch (gradient checkpointing on, accumulation raised to keep the examples per step) that fits."""
    for b in range(batch, 0, -1):
        mem = memory_gb(size, qlora, b, tokens, patches, True, width)
        if mem["total_gb"] <= gpu.memory_gb:
            return (f"per_device_train_batch_size {b}, gradient_accumulation_steps {batch * accumulation // b}, "
                    f"gradient_checkpointing true: {mem['total_gb']} GB")  # fmt: skip
    return "nothing at these tokens: lower max_pixels (or Q-LoRA)"


def describe_size(size: RealSize) -> dict:
    return asdict(size.counts) | {"parameters": size.parameters, "nf4_linear": size.nf4_linear}
