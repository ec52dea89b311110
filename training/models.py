"""Loading a VLM and its processor for training or evaluation: quantization, pixel budget, freezing, LoRA targets."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trl import ModelConfig

from utils.errors import UserError

if TYPE_CHECKING:  # imported where used: an entry point's --help needs LabModelArguments, not torch or peft
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

logger = logging.getLogger(__name__)

# LoRA's default targets per model family: the language model's linear layers only (the vision tower stays frozen).
# qwen2_vl: Qwen2-VL's names (the NLVR2 models). composed: the LLaVA-family VLMs of training/compose.py, with
# Llama/Qwen/OLMoE names and GPT-2's Conv1D names; MoE experts are fused 3-D parameters in transformers 5 (no
# nn.Linear), so LoRA reaches their attention, not the experts. `lora_targets(model)` reads the names off a model.
LORA_TARGETS = {
    "qwen2_vl": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    "composed": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|c_attn|c_proj|c_fc)",
}
# Vision modules kept out of 4-bit quantization, named before the model exists: Qwen2-VL's `visual` (ViT + merger),
# the LLaVA family's `vision_tower` + `multi_modal_projector` (training/compose.py). A name a model lacks is a no-op.
# Full names: transformers 5 matches a skip name from the start of a module's full name or as its suffix.
VISION_MODULES = ("model.visual", "model.vision_tower", "model.multi_modal_projector")


@dataclass
class LabModelArguments:
    freeze_vision_tower: bool = field(
        default=True, metadata={"help": "Keep the vision tower (ViT + merger) frozen in full fine-tuning."}
    )
    quantize_vision_tower: bool = field(
        default=False,
        metadata={"help": "Q-LoRA: also quantize the vision tower's linears (default: keep it in the compute dtype)."},
    )
    vision_feature_cache: str = field(
        default="auto",
        metadata={
            "help": "Training: compute each image's vision-tower features once and serve them from memory after "
            "(training/vision_cache.py). auto: on exactly on the CPU (the only device where a gain was measured) "
            "when the vision tower (ViT + merger) has no trainable parameter and no dropout (LoRA's default); true: "
            "on, on any device, refused with a trainable tower; false: off.",
            "choices": ["auto", "true", "false"],
        },
    )
    vision_feature_cache_max_gb: float = field(
        default=2.0,
        metadata={"help": "Host memory the vision feature cache may take, in GB; beyond it no image is added."},
    )
    vision_feature_cache_precompute: bool = field(
        default=False,
        metadata={
            "help": "Fill the vision feature cache at setup: one no-grad pass over the train split. Off by default: "
            "a run of one epoch or more computes every image once anyway (docs/training_speed.md)."
        },
    )

    shared_prefix: str = field(
        default="auto",
        metadata={
            "help": "Training: run the tokens every row of a batch starts with (system turn, user header, first "
            "image label) through the language model once per batch (training/shared_prefix.py). auto: on exactly "
            "on the CPU (the only device where a gain was measured) when the language model has no dropout and "
            "gradient checkpointing is off; true: on, on any device, refused otherwise; false: off.",
            "choices": ["auto", "true", "false"],
        },
    )

    def __post_init__(self):
        for name in ("vision_feature_cache", "shared_prefix"):  # YAML's true/false arrive as booleans
            value = getattr(self, name)
            setattr(self, name, str(value).lower() if isinstance(value, bool) else value)
            if getattr(self, name) not in ("auto", "true", "false"):
                raise ValueError(f"{name} must be auto, true or false, got {value!r}")
        if self.vision_feature_cache_max_gb < 0:
            raise ValueError(f"vision_feature_cache_max_gb must be >= 0, got {self.vision_feature_cache_max_gb}")


class ModelNotAvailableError(UserError, RuntimeError):
    """The model cannot be loaded: neither a model folder nor in the local hub cache while the hub is unreachable."""


def _offline_hint(name: str, err: Exception) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"model {name!r} could not be loaded ({type(err).__name__}: {str(err).splitlines()[0]}). "
        f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}. If the hub is unreachable, use a local folder or "
        "the embedded default: python scripts/build_embedded_model.py, then model_name_or_path: "
        "artifacts/models/embedded-qwen2vl."
    )


def has_grid(processor) -> bool:
    """Whether the image processor tiles images into a variable grid (Qwen2-VL: image_grid_thw, merge_size)."""
    return hasattr(processor.image_processor, "merge_size")


def set_pixel_budget(processor, min_pixels: int | None, max_pixels: int | None):
    """Set Qwen2-VL's resize bounds on the image processor itself (a call-time kwarg is easy to lose).

    Image processors that resize to a fixed size (CLIP / SigLIP / ViT in a composed LLaVA-family model) have no pixel
    budget: the bounds are left out, with a warning."""
    ip = processor.image_processor
    if min_pixels is None and max_pixels is None:
        return processor
    if not has_grid(processor):  # no dynamic resolution: size is the fixed output size, not pixel bounds
        logger.warning(
            "%s resizes every image to a fixed size: min_pixels/max_pixels (%s/%s) do not apply and are ignored",
            type(ip).__name__, min_pixels, max_pixels,
        )  # fmt: skip
        return processor
    size = dict(ip.size)
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    if size["shortest_edge"] > size["longest_edge"]:
        raise ValueError(f"min_pixels {size['shortest_edge']} > max_pixels {size['longest_edge']}")
    ip.size = size
    return processor


def load_processor(
    path: str, revision: str | None = None, trust_remote_code: bool = False, min_pixels=None, max_pixels=None
):
    """AutoProcessor with the pixel budget applied."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # ValueError: a folder that holds no processor
        raise _offline_hint(path, e) from None
    return set_pixel_budget(processor, min_pixels, max_pixels)


def run_processor(model_args: ModelConfig, data_args, trust_remote_code: bool = False):
    """The processor of `model_args`' checkpoint with `data_args`' pixel budget (min_pixels / max_pixels)."""
    return load_processor(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=trust_remote_code,
        min_pixels=data_args.min_pixels,
        max_pixels=data_args.max_pixels,
    )


def quantization_config(model_args: ModelConfig, lab_args: LabModelArguments) -> BitsAndBytesConfig | None:
    """4-bit NF4 (double quantization, bf16 compute) when load_in_4bit; the vision tower skipped unless asked."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    compute = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else torch.bfloat16
    skip = [] if lab_args.quantize_vision_tower else list(VISION_MODULES)
    return BitsAndBytesConfig(
        load_in_4bit=model_args.load_in_4bit,
        load_in_8bit=model_args.load_in_8bit,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=compute,
        llm_int8_skip_modules=skip + ["lm_head"],
    )


def load_model(model_args: ModelConfig, lab_args: LabModelArguments | None = None, trust_remote_code: bool = False):
    """Load a VLM, Qwen2-VL or a composed LLaVA-family model (training/compose.py), for training/sft.py,
    training/train_vlm.py and evaluation: optionally 4/8-bit, the vision tower frozen when asked (full fine-tuning);
    remote code runs only if allowed."""
    import torch
    from transformers import AutoModelForImageTextToText

    lab_args = lab_args or LabModelArguments()
    qconfig = quantization_config(model_args, lab_args)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    kwargs = dict(
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = _kbit_device_map()
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, **kwargs)
    except (OSError, ValueError) as e:  # ValueError: a folder that holds no model
        raise _offline_hint(model_args.model_name_or_path, e) from None
    if lab_args.freeze_vision_tower and not model_args.use_peft:
        frozen = freeze(model, vision_modules(model))
        logger.info("froze %d vision-tower parameters", frozen)
    return model


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo). Elsewhere
    bf16 autocast on the CPU is emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _kbit_device_map() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return {"": "cpu"}


def freeze(model, prefixes: tuple[str, ...]) -> int:
    """requires_grad=False on every parameter under a module named in `prefixes`; returns how many were frozen."""
    n = 0
    for name, param in model.named_parameters():
        if any(f".{p}." in f".{name}" for p in prefixes):
            param.requires_grad_(False)
            n += param.numel()
    return n


def language_model(model) -> torch.nn.Module:
    """The VLM's language model (decoder without lm_head): `model.model.language_model` in Qwen2-VL and the LLaVA
    family in transformers 5, else what get_decoder() returns."""
    import torch

    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    return lm if isinstance(lm, torch.nn.Module) else model.get_decoder()


def vision_modules(model) -> tuple[str, ...]:
    """Names of the backbone's children that are not the language model: the vision side (Qwen2-VL: visual, its
    merger inside; LLaVA family: vision_tower, multi_modal_projector)."""
    inner = getattr(model, "model", model)
    lm = language_model(model)
    return tuple(name for name, child in inner.named_children() if child is not lm)


def lora_targets(model) -> str:
    """A PEFT target regex: every nn.Linear / Conv1D (GPT-2) leaf name under the language model, nothing else."""
    import torch
    from transformers.pytorch_utils import Conv1D

    lm = language_model(model)
    prefix = next(name for name, module in model.named_modules() if module is lm)
    leaves = {name.rsplit(".", 1)[-1] for name, m in lm.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    if not leaves:
        raise ValueError(f"{type(lm).__name__} has no linear layers for LoRA; set lora_target_modules")
    return rf"{re.escape(prefix)}\..*\.({'|'.join(sorted(leaves))})"


def lora_config(
    model_args: ModelConfig, model=None, family: str = "qwen2_vl", modules_to_save: list[str] | tuple[str, ...] = ()
) -> LoraConfig | None:
    """TRL's LoRA config from ModelConfig (None unless use_peft). Unset targets default to the language model's
    linears: read off `model` when given, else LORA_TARGETS[family]. `modules_to_save` (trained whole, saved with the
    adapter) join model_args.lora_modules_to_save."""
    if not model_args.use_peft:
        return None
    if model_args.lora_target_modules is None:
        model_args.lora_target_modules = LORA_TARGETS[family] if model is None else lora_targets(model)
    if modules_to_save:
        model_args.lora_modules_to_save = sorted(set(model_args.lora_modules_to_save or []) | set(modules_to_save))
    from trl import get_peft_config

    return get_peft_config(model_args)
