"""Model FLOPs of a parameter-efficient VLM training step, and MFU.

Counted: dense matmul FLOPs, 2 * params * tokens per forward pass of each part, over the tokens that part sees:
  vision tower (frozen, no gradient flows into it): forward only           2 * N_vit   * patches
  language model body (frozen weights, LoRA inside every layer):
      forward, then the activation-gradient pass of the backward (1x)    2 * N_lm    * tokens * (1 + 1)
  LoRA weights (trainable): forward, then backward (2x: input and weight) 2 * N_lora  * tokens * (1 + 2)
  LM head: only the labelled positions (TRL's fused head on a GPU)        2 * N_head  * labels * (1 + 1)
Not counted: attention's score/value products (quadratic in length; ~3% at 550 tokens and width 1536), norms and
element-wise work, and the re-forward of gradient checkpointing (so this is MFU, not hardware FLOPs utilisation).
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense bf16 peak TFLOPS (no sparsity), by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_BF16_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("T4", 65.0),  # fp16
)


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


@dataclass
class ParamCounts:
    vision: int  # vision tower incl. the merger
    language_body: int  # decoder layers + final norm (the token embedding is a lookup, not a matmul)
    lm_head: int
    lora: int


def count_params(model) -> ParamCounts:
    """Parameter counts of a (PEFT-wrapped) Qwen2-VL by part; LoRA weights counted apart from the base weights."""
    vision = body = head = lora = 0
    for name, p in model.named_parameters():
        n = p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)  # bitsandbytes 4-bit: 2 values per byte
        if "lora_" in name:
            lora += n
        elif ".visual." in f".{name}":
            vision += n
        elif "embed_tokens" in name:
            continue
        elif "lm_head" in name:
            head += n
        else:
            body += n
    if head == 0:  # tied: the head is the embedding matrix
        emb = model.get_input_embeddings().weight
        head = emb.numel()
    return ParamCounts(vision, body, head, lora)


def step_flops(counts: ParamCounts, patches: int, tokens: int, labels: int) -> float:
    """Model FLOPs of one optimizer step over a batch with these totals (see the module docstring)."""
    return (
        2 * counts.vision * patches
        + 2 * counts.language_body * tokens * 2
        + 2 * counts.lora * tokens * 3
        + 2 * counts.lm_head * labels * 2
    )
