"""Compose a VLM from parts: a vision encoder + a projector + a language model -> a transformers model and processor.

Each part is a hub id / local folder (pretrained weights) or a config (random init). The result is one of
transformers' own LLaVA-family classes, so AutoModelForImageTextToText / AutoProcessor load it, PEFT wraps it and
generate() runs it with no code of ours:
- projector mlp2x_gelu (LLaVA-1.5) or linear -> LlavaForConditionalGeneration. "linear" is Llava's two linears
  with the identity activation (projector_hidden_act="linear"): a linear map, parameterized as a product.
- projector swiglu, with optional pixel shuffle (pixel_shuffle_factor d: d x d neighbouring patches concatenated
  into one token, d^2 fewer image tokens) -> AyaVisionForConditionalGeneration, whose connector is exactly
  pixel shuffle -> LayerNorm -> Linear -> SwiGLU -> Linear. (Idefics3/SmolVLM's connector is pixel shuffle + one
  linear but needs its own vision tower; Llava / LlavaNext have no token reduction.) Pixel shuffle with the
  other projectors is refused rather than written as a custom class.
The processor is LlavaProcessor for both (image processor of the encoder + the LM's tokenizer with an <image>
token and a chat template); its patch_size is the encoder's times d so it expands <image> to the right count.

Checked in transformers 5.23-5.25: Llava/AyaVision accept GPT-2, Llama (SmolLM2) and MoE (Qwen2-MoE, Mixtral, OLMoE; all
three in the tests, router aux loss included) text configs and CLIP / SigLIP / ViT vision configs, except that their
`_tied_weights_keys` name `model.language_model.embed_tokens.weight`, which GPT-2 (`wte`) lacks: constructing
one with tie_word_embeddings=True raises AttributeError. Such LMs are composed untied, lm_head a copy of the
input embeddings (GPT-2 124M: +38.6M parameters).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    SiglipImageProcessor,
    ViTImageProcessor,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from training.compose_arguments import ComposeArguments

logger = logging.getLogger(__name__)

CLS_ENCODERS = ("clip_vision_model", "vit")  # a CLS token first: dropped with vision_feature_select_strategy default
IMAGE_PROCESSORS = {  # encoder model_type -> image processor built from the config's image_size S
    "clip_vision_model": lambda s: CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s}),
    "siglip_vision_model": lambda s: SiglipImageProcessor(size={"height": s, "width": s}),
    "vit": lambda s: ViTImageProcessor(size={"height": s, "width": s}),
}
# Heads that do more than lm_head(hidden): LLaVA-family classes apply lm_head alone, so these would be wrong.
UNSUPPORTED_HEADS = ("logits_scaling", "final_logit_softcapping", "logit_scale", "output_multiplier")
EOS = "<|endoftext|>"


# ---- parts ---------------------------------------------------------------------------------------------------------


def _from_dict(d: dict):
    d = dict(d)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def load_vision(args: ComposeArguments, dtype: torch.dtype):
    """(encoder with weights or None, its config, image processor)."""
    if args.vision_config is not None:
        config = _from_dict(args.vision_config)
        if config.model_type not in IMAGE_PROCESSORS:
            raise ValueError(f"vision model_type {config.model_type!r}: one of {list(IMAGE_PROCESSORS)}")
        return None, config, IMAGE_PROCESSORS[config.model_type](config.image_size)
    path = args.vision_model_name_or_path
    config = AutoConfig.from_pretrained(path)
    config = getattr(config, "vision_config", config)  # a full CLIP / SigLIP checkpoint: its vision half
    encoder_class = MODEL_MAPPING[type(config)]  # e.g. CLIPVisionModel
    encoder = encoder_class.from_pretrained(path, dtype=dtype, use_safetensors=True)
    return encoder, encoder.config, AutoImageProcessor.from_pretrained(path)


def train_tokenizer(texts: list[str], vocab_size: int, special: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text round-trips) trained on `texts`; <|endoftext|> is bos, eos and pad."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, *special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, clean_up_tokenization_spaces=False
    )


def _tokenizer_corpus(seed: int) -> list[str]:
    from vlm_datasets.captions import synthetic_rows

    rows = synthetic_rows(3000, seed, "tokenizer", "mixed")
    return [f"USER: {r['question']}\nASSISTANT: {r['answer']}" for r in rows]


def load_text(args: ComposeArguments, dtype: torch.dtype):
    """(causal LM with weights or None, its config, tokenizer prepared by `prepare_tokenizer`, chat format)."""
    if args.text_config is not None:
        if args.tokenizer_name_or_path:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
        else:
            tokenizer = train_tokenizer(_tokenizer_corpus(args.seed), args.tokenizer_vocab_size, [args.image_token])
        tokenizer, fmt = prepare_tokenizer(tokenizer, args)
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        ids = dict(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
        return None, _from_dict({**args.text_config, **ids}), tokenizer, fmt
    path = args.text_model_name_or_path
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    tokenizer, fmt = prepare_tokenizer(AutoTokenizer.from_pretrained(args.tokenizer_name_or_path or path), args)
    return lm, lm.config, tokenizer, fmt


# ---- tokenizer and chat template ----------------------------------------------------------------------------------

_CONTENT = (
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ IMAGE + '\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)
TEMPLATES = {
    # ChatML, as SmolLM2-Instruct / Qwen write it; the assistant turn ends with <|im_end|> (the eos).
    "chatml": "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    + _CONTENT
    + "{{ '<|im_end|>\\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}",
    # LLaVA-v1 style for LMs with no chat tokens (GPT-2): USER: ... / ASSISTANT: ...<eos>
    "plain": "{%- for message in messages -%}{%- if message['role'] == 'user' -%}{{ 'USER: ' }}"
    + _CONTENT
    + "{{ '\\n' }}{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' }}"
    + _CONTENT
    + "{{ EOS + '\\n' }}{%- else -%}"
    + _CONTENT
    + "{{ '\\n\\n' }}{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}",
}


def chat_template(fmt: str, image_token: str, eos: str) -> str:
    """The jinja template with the image token and eos written in (no reliance on render-time variables)."""
    return (
        "{%- set IMAGE = " + json.dumps(image_token) + " -%}{%- set EOS = " + json.dumps(eos) + " -%}" + TEMPLATES[fmt]
    )


def prepare_tokenizer(tokenizer, args: ComposeArguments) -> tuple[PreTrainedTokenizerFast, str]:
    """Add the image token (and a pad token), pick the chat format; returns (tokenizer, format)."""
    vocab = tokenizer.get_vocab()
    fmt = args.chat_format
    if fmt == "auto":
        fmt = "chatml" if "<|im_start|>" in vocab and "<|im_end|>" in vocab else "plain"
    special = [args.image_token] + (["<|im_start|>", "<|im_end|>"] if fmt == "chatml" else [])
    # Keep the tokenizer's own additional special tokens (the default call replaces the list).
    tokenizer.add_special_tokens({"extra_special_tokens": special}, replace_extra_special_tokens=False)
    if fmt == "chatml":
        tokenizer.eos_token = "<|im_end|>"  # the collator ends the completion, and generation stops, at eos
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; padding is masked by the attention mask
    tokenizer.chat_template = chat_template(fmt, args.image_token, tokenizer.eos_token)
    return tokenizer, fmt


# ---- the composite -------------------------------------------------------------------------------------------------


def _has_embed_tokens(text_config) -> bool:
    """Whether the LM's base model names its input embeddings embed_tokens (what LLaVA classes tie lm_head to)."""
    with torch.device("meta"):  # no memory, no init
        base = AutoModel.from_config(text_config)
    return isinstance(getattr(base, "embed_tokens", None), torch.nn.Embedding)


def _check_head(text_config) -> None:
    for name in UNSUPPORTED_HEADS:
        value = getattr(text_config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"{text_config.model_type}: {name}={value} changes the logits after lm_head, which the LLaVA-family "
                "classes do not apply; this LM would compose with wrong outputs"
            )


def image_token_count(vision_config, args: ComposeArguments) -> int:
    side = vision_config.image_size // vision_config.patch_size
    if side % args.pixel_shuffle_factor:
        raise ValueError(f"{side}x{side} patches do not divide by pixel_shuffle_factor {args.pixel_shuffle_factor}")
    return (side // args.pixel_shuffle_factor) ** 2


def build(args: ComposeArguments):
    """(model, processor): parts loaded or built, weights copied in, vocabulary resized for the new tokens."""
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    encoder, vision_config, image_processor = load_vision(args, dtype)
    lm, text_config, tokenizer, fmt = load_text(args, dtype)
    _check_head(text_config)
    tie = bool(getattr(text_config, "tie_word_embeddings", False)) and _has_embed_tokens(text_config)
    text_config.tie_word_embeddings = tie  # see the module docstring: GPT-2 must be untied
    strategy = args.vision_feature_select_strategy or (
        "default" if vision_config.model_type in CLS_ENCODERS else "full"
    )
    common = dict(
        vision_config=vision_config,
        text_config=text_config,
        vision_feature_layer=args.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        image_token_index=0,  # set below, once the vocabulary is final
        tie_word_embeddings=tie,
    )
    if args.projector_type == "swiglu":
        hidden = text_config.hidden_size
        # transformers >= 5.25's AyaVision multiplies the logits by text_config.logit_scale (a Cohere field): 1.0 is
        # the plain lm_head(hidden) of every LM _check_head admits; 5.23 ignores it.
        text_config.logit_scale = 1.0
        config = AyaVisionConfig(
            **common,
            downsample_factor=args.pixel_shuffle_factor,
            alignment_intermediate_size=args.projector_intermediate_size or 4 * hidden,
        )
        cls = AyaVisionForConditionalGeneration
    else:
        act = "gelu" if args.projector_type == "mlp2x_gelu" else "linear"
        config = LlavaConfig(**common, projector_hidden_act=act)
        cls = LlavaForConditionalGeneration
    model = cls(config).to(dtype)
    if encoder is not None:
        _load_part(model.model.vision_tower, encoder.state_dict(), "vision encoder", allow_unused=("head", "pooler"))
    if lm is not None:
        _load_part(model.model.language_model, lm.base_model.state_dict(), "language model")
        if not tie:
            model.lm_head.weight.data.copy_(lm.get_output_embeddings().weight.data)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)  # new rows: mean of the old ones
    ids = tokenizer.convert_tokens_to_ids
    model.config.image_token_id = ids(args.image_token)
    model.config.image_seq_length = image_token_count(vision_config, args)
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size * args.pixel_shuffle_factor,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1 if vision_config.model_type in CLS_ENCODERS else 0,
        chat_template=tokenizer.chat_template,
        image_token=args.image_token,
    )
    logger.info("composed %s: %s, chat format %s", cls.__name__, json.dumps(parameter_counts(model)), fmt)
    return model, processor


def _load_part(module: torch.nn.Module, state: dict, what: str, allow_unused: tuple[str, ...] = ()) -> None:
    result = module.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not any(f".{u}." in f".{k}" for u in allow_unused)]
    if result.missing_keys or unexpected:
        raise ValueError(f"{what}: weights do not fit (missing {result.missing_keys[:5]}, unexpected {unexpected[:5]})")


def component_of(name: str) -> str:
    """vision | projector | language_model for a parameter name (lm_head counts as the language model)."""
    if ".vision_tower." in f".{name}":
        return "vision"
    if ".multi_modal_projector." in f".{name}":
        return "projector"
    return "language_model"


def parameter_counts(model) -> dict[str, int]:
    counts = {"vision": 0, "projector": 0, "language_model": 0}
    for name, p in model.named_parameters():
        counts[component_of(name)] += p.numel()
    return counts


def save(model, processor, output_dir: str | Path, args: ComposeArguments | None = None) -> Path:
    """save_pretrained both, plus compose.json (parts, counts, image tokens) for the record."""
    out = Path(output_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    record = {
        "architecture": type(model).__name__,
        "parameters": parameter_counts(model),
        "image_tokens": model.config.image_seq_length,
        "tied_embeddings": bool(model.config.get_text_config().tie_word_embeddings),
        "arguments": None if args is None else {k: v for k, v in vars(args).items()},
    }
    (out / "compose.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out
