"""GPT-2 for language-model pretraining: model arguments, the tokenizer (GPT-2's, or a byte-level BPE trained on the
training text when the hub is out of reach) and a GPT2LMHeadModel built from a config (defaults: GPT-2 124M).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"  # GPT-2's only special token: document separator, bos and eos
TOKENIZER_SOURCES = ("auto", "pretrained", "train")


@dataclass
class LMModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from these weights (hub id or folder); default: from scratch."}
    )
    tokenizer_name_or_path: str = field(
        default="openai-community/gpt2", metadata={"help": "Pretrained tokenizer (tokenizer_source auto/pretrained)."}
    )
    tokenizer_source: str = field(
        default="auto",
        metadata={
            "help": "pretrained: load tokenizer_name_or_path; train: a byte-level BPE trained on the training text; "
            "auto: pretrained if it can be loaded, else train.",
            "choices": list(TOKENIZER_SOURCES),
        },
    )
    tokenizer_vocab_size: int = field(default=8192, metadata={"help": "Trained tokenizer: vocabulary size."})
    tokenizer_train_docs: int = field(default=20_000, metadata={"help": "Trained tokenizer: documents it sees."})
    n_embd: int = field(default=768, metadata={"help": "GPT2Config: hidden size (124M: 768)."})
    n_layer: int = field(default=12, metadata={"help": "GPT2Config: transformer blocks (124M: 12)."})
    n_head: int = field(default=12, metadata={"help": "GPT2Config: attention heads (124M: 12)."})
    n_positions: int = field(default=1024, metadata={"help": "GPT2Config: longest sequence (124M: 1024)."})
    n_inner: int | None = field(default=None, metadata={"help": "GPT2Config: MLP width (None: 4 * n_embd)."})
    dropout: float = field(default=0.1, metadata={"help": "GPT2Config resid/embd/attn dropout (GPT-2: 0.1)."})
    initializer_range: float = field(default=0.02, metadata={"help": "GPT2Config: init std."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager, sdpa or flash_attention_2."})
    torch_num_threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads for torch (None: torch's default). On a CPU shared with other jobs 1 is far faster: "
            "OpenMP threads wait for each other when one is descheduled (10x measured, docs/lm_pretraining.md)."
        },
    )

    def __post_init__(self):
        if self.tokenizer_source not in TOKENIZER_SOURCES:
            raise ValueError(f"tokenizer_source {self.tokenizer_source!r}: choose one of {list(TOKENIZER_SOURCES)}")


def train_byte_bpe(texts: Iterable[str], vocab_size: int, model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained on `texts`: any text round-trips; `<|endoftext|>` is bos and eos."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=None,
        clean_up_tokenization_spaces=False,  # keep decode(encode(text)) == text
        model_max_length=model_max_length,
    )


def load_tokenizer(args: LMModelArguments, texts: Iterable[str]) -> tuple[PreTrainedTokenizerFast, str]:
    """(tokenizer, how it was made). `texts` (training documents) is read only when a BPE is trained: its first
    tokenizer_train_docs documents."""
    if args.tokenizer_source in ("auto", "pretrained"):
        try:
            return AutoTokenizer.from_pretrained(
                args.tokenizer_name_or_path
            ), f"pretrained {args.tokenizer_name_or_path}"
        except OSError as e:  # offline / not cached / no network
            if args.tokenizer_source == "pretrained":
                raise OSError(
                    f"tokenizer {args.tokenizer_name_or_path!r} cannot be loaded ({e}); pass a local folder, or "
                    "--tokenizer_source train for a byte-level BPE trained on the training text"
                ) from e
            logger.warning("tokenizer %s unavailable (%s): training a byte-level BPE", args.tokenizer_name_or_path, e)
    docs = list(islice(texts, args.tokenizer_train_docs))
    tokenizer = train_byte_bpe(docs, args.tokenizer_vocab_size, model_max_length=args.n_positions)
    return tokenizer, f"byte-level BPE ({len(tokenizer)} tokens) trained on {len(docs)} training documents"


def build_model(args: LMModelArguments, tokenizer) -> GPT2LMHeadModel:
    """GPT2LMHeadModel from GPT2Config sized by `args` (vocabulary = the tokenizer's), or the given weights."""
    eos = tokenizer.eos_token_id
    if args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(
            args.model_name_or_path, attn_implementation=args.attn_implementation, use_safetensors=True
        )
    else:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=args.n_positions,
            n_embd=args.n_embd,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_inner=args.n_inner,
            resid_pdrop=args.dropout,
            embd_pdrop=args.dropout,
            attn_pdrop=args.dropout,
            initializer_range=args.initializer_range,
            bos_token_id=eos,
            eos_token_id=eos,
            tie_word_embeddings=True,
        )
        model = GPT2LMHeadModel._from_config(config, attn_implementation=args.attn_implementation)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(f"the model's vocabulary is smaller than the tokenizer's ({len(tokenizer)} tokens)")
    # transformers 5.23 infers loss_type from the class name, and "GPT2LMHeadModel" has no "ForCausalLM": loss_type
    # stays None, so Trainer counts num_items_in_batch over unshifted labels (T per block instead of T - 1) and
    # reports every loss (T - 1) / T too low (measured: tests/training/test_pretrain_lm.py). Name it.
    model.loss_type = "ForCausalLM"
    # GPT-2 has no pad token: generation pads with eos.
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    return model
