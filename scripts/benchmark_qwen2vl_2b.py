"""Real-size training throughput of Qwen2-VL-2B's architecture with random weights (built with Qwen2VLConfig from the
published settings in training/real_shape.py, or read from --model_name_or_path; throughput and memory do not depend
on the weights' values): LoRA (bf16) and Q-LoRA (NF4, bf16 compute) through the lab's own loading (training.models),
two 448x448 images per example (2 x 256 image tokens, 2 x 1024 ViT patches), batch 1/4/8/16, with and without gradient
checkpointing. Per cell: samples/s, tokens/s, peak GPU memory, MFU (training/flops.py gives the FLOP formula).

# The whole grid on one GPU (bf16); the random-weight model is saved once under --work_dir
python scripts/benchmark_qwen2vl_2b.py --output_json artifacts/benchmarks/qwen2vl_2b.json

# One cell
python scripts/benchmark_qwen2vl_2b.py --methods qlora --batch_sizes 8 --gradient_checkpointing true

# Smoke test on the CPU: a tiny config of the same architecture, two timed steps per cell
python scripts/benchmark_qwen2vl_2b.py --tiny true

# On a saved folder instead of building one: the real-shape model of scripts/build_real_shape_model.py (real
# tokenizer and processor beside random weights; docs/real_size.md)
python scripts/build_real_shape_model.py
python scripts/benchmark_qwen2vl_2b.py --model_name_or_path artifacts/models/qwen2vl-2b-shape
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import HfArgumentParser
from trl import ModelConfig

from training.flops import count_params, peak_tflops, step_flops
from training.models import LabModelArguments, load_model, lora_config
from training.real_shape import TEXT_2B, TOKENS_2B, VISION_2B

if TYPE_CHECKING:  # torch, transformers' models and peft load in the functions that run: --help needs none
    import torch

# --tiny: the same architecture scaled down (head_dim 16 -> mrope sections summing to 8).
TINY_SIZES = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
TEXT_TINY = dict(TEXT_2B, **TINY_SIZES, rope_scaling={"type": "mrope", "mrope_section": [4, 2, 2]})
VISION_TINY = dict(VISION_2B, depth=2, embed_dim=32, num_heads=2, hidden_size=64)
TOKENS_TINY = dict(bos=500, pad=500, eos=501, image=502, video=503, vision_start=504, vision_end=505)


@dataclass
class Qwen2VLBenchmarkArguments:
    methods: str = field(default="lora,qlora", metadata={"help": "lora (bf16) and/or qlora (NF4, bf16 compute)."})
    batch_sizes: str = field(default="1,4,8,16", metadata={"help": "Examples per step."})
    gradient_checkpointing: str = field(default="false,true", metadata={"help": "Without and/or with."})
    image_size: int = field(default=448, metadata={"help": "Side of each of the two square images, pixels."})
    text_tokens: int = field(default=40, metadata={"help": "Text tokens per example besides the image tokens."})
    steps: int = field(default=10, metadata={"help": "Timed optimizer steps per cell."})
    warmup_steps: int = field(default=3, metadata={"help": "Untimed steps first (allocator, kernels)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (language model linears, as the lab's configs)."})
    peak_tflops: float | None = field(default=None, metadata={"help": "Device peak for MFU (default: by GPU name)."})
    work_dir: str | None = field(default=None, metadata={"help": "Where the random-weight model is saved."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the table as JSON here."})
    tiny: bool = field(default=False, metadata={"help": "Tiny config on the CPU, 2 steps: a smoke test."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A saved Qwen2-VL folder to benchmark instead of building the random-weight model, e.g. "
            "artifacts/models/qwen2vl-2b-shape (scripts/build_real_shape_model.py); its config gives the token ids."
        },
    )


def build_model_dir(args: Qwen2VLBenchmarkArguments, folder: Path) -> Path:
    """Save the random-weight model once, so Q-LoRA quantizes it through from_pretrained like a real checkpoint."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, set_seed

    text, vision, ids = (TEXT_TINY, VISION_TINY, TOKENS_TINY) if args.tiny else (TEXT_2B, VISION_2B, TOKENS_2B)
    config = Qwen2VLConfig(
        text_config=dict(text, bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]),
        vision_config=vision,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=True,
    )
    set_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2VLForConditionalGeneration(config).to(torch.float32 if args.tiny else torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def token_ids(args: Qwen2VLBenchmarkArguments) -> dict[str, int]:
    """The special token ids of the model benchmarked (a folder's from its config) and `text_below`: random text ids
    are drawn under it."""
    if args.model_name_or_path:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model_name_or_path)
        ids = {k: getattr(config, f"{k}_token_id") for k in ("image", "vision_start", "vision_end")}
        return dict(ids, text_below=min(150000, config.get_text_config().vocab_size))
    return dict(TOKENS_TINY, text_below=400) if args.tiny else dict(TOKENS_2B, text_below=150000)


def batch_of(args: Qwen2VLBenchmarkArguments, batch_size: int, device) -> dict[str, torch.Tensor]:
    """Two images per example, random text tokens around them, labels on the last two tokens (answer + <|im_end|>)."""
    import torch

    ids = token_ids(args)
    side = 56 if args.tiny else args.image_size
    grid = side // 14  # patches per side; merged 2x2 into one LM token
    image = [ids["vision_start"]] + [ids["image"]] * (grid * grid // 4) + [ids["vision_end"]]
    text = torch.randint(0, ids["text_below"], (batch_size, args.text_tokens))  # [B, text_tokens]
    vision = torch.tensor([ids["image"], ids["vision_start"], ids["vision_end"]])
    text = torch.where(torch.isin(text, vision), 0, text).tolist()  # a small vocabulary's vision ids stay out
    rows = [t[: len(t) // 2] + image + image + t[len(t) // 2 :] for t in text]
    input_ids = torch.tensor(rows, device=device)  # [B, T]
    labels = torch.full_like(input_ids, -100)
    labels[:, -2:] = input_ids[:, -2:]
    patches = batch_size * 2 * grid * grid
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == ids["image"]).long(),
        "pixel_values": torch.randn(patches, 3 * 2 * 14 * 14, device=device),  # [patches, C*T*P*P]
        "image_grid_thw": torch.tensor([[1, grid, grid]] * batch_size * 2, device=device),
        "labels": labels,
    }


def run_cell(
    args: Qwen2VLBenchmarkArguments, model_dir: Path, method: str, batch_size: int, checkpointing: bool
) -> dict:
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from trl.trainer.utils import add_fused_lm_head

    cuda = torch.cuda.is_available()
    dtype = "float32" if args.tiny and not cuda else "bfloat16"
    quantized = method == "qlora"
    model_args = ModelConfig(model_name_or_path=str(model_dir), dtype=dtype, use_peft=True, lora_r=args.lora_r)
    model_args.lora_alpha, model_args.load_in_4bit, model_args.use_bnb_nested_quant = 2 * args.lora_r, quantized, True
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = load_model(model_args, LabModelArguments())  # k-bit: placed on the GPU by its device_map
    if quantized:  # what SFTTrainer does with a k-bit model (fp32 upcasts of norms, input grads)
        model = prepare_model_for_kbit_training(
            model, checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    else:
        model.to("cuda" if cuda else "cpu")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    device = next(model.parameters()).device
    add_fused_lm_head(model)  # as SFTTrainer: only labelled positions through the LM head on a GPU
    model = get_peft_model(model, lora_config(model_args))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = batch_of(args, batch_size, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    steps = 2 if args.tiny else args.steps
    warmup = 1 if args.tiny else args.warmup_steps
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = model(**batch, fused_lm_head=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    counts = count_params(model)
    flops = step_flops(counts, batch["pixel_values"].shape[0], batch["input_ids"].numel(), batch_size * 2)
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if cuda else None)
    return {
        "method": method,
        "batch_size": batch_size,
        "gradient_checkpointing": checkpointing,
        "tokens_per_example": batch["input_ids"].shape[1],
        "samples_per_s": batch_size / seconds,
        "tokens_per_s": batch["input_ids"].numel() / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / (peak * 1e12) if peak else None,
        "loss": float(loss.detach()),
        "params": vars(counts),
    }


def main(args: Qwen2VLBenchmarkArguments) -> list[dict]:
    import torch

    if args.model_name_or_path:
        model_dir = Path(args.model_name_or_path)
    else:
        model_dir = build_model_dir(args, Path(args.work_dir or tempfile.mkdtemp(prefix="qwen2vl-2b-random-")))
    rows = []
    for method in args.methods.split(","):
        for checkpointing in [v.strip() == "true" for v in args.gradient_checkpointing.split(",")]:
            for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
                try:
                    row = run_cell(args, model_dir, method, batch_size, checkpointing)
                except torch.OutOfMemoryError:
                    row = {"method": method, "batch_size": batch_size, "gradient_checkpointing": checkpointing,
                           "error": "out of memory"}  # fmt: skip
                rows.append(row)
                mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
                mem = f"{row['peak_memory_gib']:.1f}" if row.get("peak_memory_gib") is not None else "-"
                print(f"{method:<6} batch {batch_size:>2} gc {str(checkpointing):<5} " + (
                    row.get("error") or f"{row['samples_per_s']:8.2f} samples/s {row['tokens_per_s']:9.0f} tokens/s "
                    f"{mem:>6} GiB  MFU {mfu}"), flush=True)  # fmt: skip
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    from utils.cli import entry_point, parse_args

    with entry_point():
        main(*parse_args(HfArgumentParser(Qwen2VLBenchmarkArguments)))
