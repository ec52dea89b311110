"""ComposeArguments: what scripts/compose_vlm.py composes (the parts, the projector, the chat format), with no
torch or transformers import, so the command's --help stays quick; training/compose.py builds from it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

PROJECTORS = ("mlp2x_gelu", "linear", "swiglu")
CHAT_FORMATS = ("auto", "chatml", "plain")


@dataclass
class ComposeArguments:
    vision_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Vision encoder weights: hub id or folder (CLIP, SigLIP or ViT)."}
    )
    vision_config: dict | str | None = field(
        default=None,
        metadata={"help": "Or a vision config to build at random init: {model_type: clip_vision_model|...}."},
    )
    vision_feature_layer: int = field(
        default=-2, metadata={"help": "Encoder hidden state fed to the projector (LLaVA: -2, the penultimate)."}
    )
    vision_feature_select_strategy: str | None = field(
        default=None,
        metadata={"help": "default: drop the CLS token; full: keep all. None: default for CLIP/ViT, full for SigLIP."},
    )
    projector_type: str = field(default="mlp2x_gelu", metadata={"help": "Projector.", "choices": list(PROJECTORS)})
    pixel_shuffle_factor: int = field(
        default=1, metadata={"help": "swiglu: merge d x d patches into one token (d^2 fewer image tokens); 1: off."}
    )
    projector_intermediate_size: int | None = field(
        default=None, metadata={"help": "swiglu: width of the gated layer (before the split in half)."}
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Language model weights: hub id or folder (AutoModelForCausalLM)."}
    )
    text_config: dict | str | None = field(
        default=None, metadata={"help": "Or a text config to build at random init: {model_type: gpt2|llama|...}."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer (default: the text model's; with text_config only: a BPE trained here)."},
    )
    tokenizer_vocab_size: int = field(
        default=1024, metadata={"help": "Trained tokenizer: vocabulary size (byte-level BPE on synthetic captions)."}
    )
    chat_format: str = field(
        default="auto",
        metadata={
            "help": "chatml (<|im_start|>role ... <|im_end|>) or plain (USER: / ASSISTANT: ... eos). auto: chatml "
            "when the tokenizer has <|im_start|> and <|im_end|>, else plain.",
            "choices": list(CHAT_FORMATS),
        },
    )
    image_token: str = field(default="<image>", metadata={"help": "Placeholder token expanded to image features."})
    dtype: str = field(default="float32", metadata={"help": "Parameter dtype of the saved model."})
    seed: int = field(default=0, metadata={"help": "Seed of the random init (projector, parts built from configs)."})
    output_dir: str = field(default="artifacts/models/composed-vlm", metadata={"help": "Where the model goes."})

    def __post_init__(self):
        for name in ("vision_config", "text_config"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, json.loads(getattr(self, name)))
        if (self.vision_model_name_or_path is None) == (self.vision_config is None):
            raise ValueError("give exactly one of vision_model_name_or_path and vision_config")
        if (self.text_model_name_or_path is None) == (self.text_config is None):
            raise ValueError("give exactly one of text_model_name_or_path and text_config")
        if self.projector_type not in PROJECTORS:
            raise ValueError(f"projector_type {self.projector_type!r}: choose one of {list(PROJECTORS)}")
        if self.chat_format not in CHAT_FORMATS:
            raise ValueError(f"chat_format {self.chat_format!r}: choose one of {list(CHAT_FORMATS)}")
        if self.pixel_shuffle_factor < 1:
            raise ValueError("pixel_shuffle_factor must be >= 1")
        if self.pixel_shuffle_factor > 1 and self.projector_type != "swiglu":
            raise ValueError(
                "pixel shuffle comes with the swiglu projector (AyaVision's connector); transformers has no LLaVA "
                "class with pixel shuffle + an MLP projector, and this lab writes no custom one"
            )
