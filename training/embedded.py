"""The embedded default model: a small Qwen2-VL-architecture model and processor built locally, no hub needed.

Same classes, chat layout and special tokens as Qwen/Qwen2-VL-2B-Instruct (training/real_shape.py), scaled down:
the text model is a 4-layer Qwen2 with GQA and M-RoPE, the vision tower a 4-layer ViT with patch 14 and 2x2 merge.
The tokenizer is a byte-level BPE trained on the synthetic corpus, so any text still tokenizes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from vlm_datasets.prompts import TEMPLATES
from vlm_datasets.synthetic import generate, pretraining_rows

if TYPE_CHECKING:  # imported by the builders: EMBEDDED_MODEL_DIR and the chat template need no transformers (--help)
    from transformers import PreTrainedTokenizerFast, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

EMBEDDED_MODEL_DIR = Path("artifacts/models/embedded-qwen2vl")

# Qwen2-VL's special tokens, in the order of the real vocabulary (ids differ: the vocabulary is small).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Sizes of the small model (the 2B model: hidden 1536, 28 layers, ViT depth 32 x 1280).
TEXT_CONFIG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="silu",
    rms_norm_eps=1e-6,
    max_position_embeddings=2048,
    rope_theta=1000000.0,
    # head_dim 32 -> mrope sections must sum to 16 (the 2B model: [16, 24, 24] for head_dim 128)
    rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
    tie_word_embeddings=True,
    # The 2B model's 0.02 leaves a 128-wide model from scratch on a long plateau before it learns to look up the
    # statement's words in the image tokens; 0.1 learns that lookup in ~100 steps (measured on this CPU).
    initializer_range=0.1,
)
VISION_CONFIG = dict(
    depth=4,
    embed_dim=128,
    num_heads=4,
    mlp_ratio=4,
    hidden_act="quick_gelu",
    patch_size=14,
    temporal_patch_size=2,
    spatial_merge_size=2,
    in_channels=3,
    hidden_size=128,
)


def qwen2vl_chat_template() -> str:
    """Qwen2-VL's chat template (shared with Qwen2.5-VL), as TRL ships it."""
    return resources.files("trl").joinpath("chat_templates/qwen2_5_vl.jinja").read_text()


def _tokenizer_corpus(seed: int) -> list[str]:
    texts = [ex.sentence for ex in generate("corpus", 2000, seed)]
    texts += [r["question"] + " " + r["answer"] for r in pretraining_rows(2000, seed)]
    texts += [t.text.replace("{sentence}", "") for t in TEMPLATES.values()] * 50
    texts += ["You are a helpful assistant.", "user", "assistant", "system", "True", "False"] * 200
    return texts


def build_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the synthetic corpus, with Qwen2-VL's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.chat_template = qwen2vl_chat_template()
    for answer in ("True", "False"):
        if len(fast(answer, add_special_tokens=False).input_ids) != 1:
            raise RuntimeError(f"embedded tokenizer: {answer!r} is not a single token")
    return fast


def build_processor(
    tokenizer: PreTrainedTokenizerFast, min_pixels: int = 56 * 56, max_pixels: int = 84 * 84
) -> Qwen2VLProcessor:
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),  # required by the processor even for images only
        chat_template=tokenizer.chat_template,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2VLForConditionalGeneration:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(
            TEXT_CONFIG,
            vocab_size=len(tokenizer),
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=VISION_CONFIG,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids("<|im_end|>")
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    return model
