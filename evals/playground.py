"""The playground's engine: decoding knobs -> a transformers GenerationConfig, a loaded model (+ adapter) with its
current images (files or a dataset uid), one prompt -> text, and the JSON-lines log every call is appended to."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import GenerationConfig, set_seed
from trl import ModelConfig

from evals.evaluate import EvalArguments, load_for_eval
from evals.scoring import score_likelihood
from training.embedded import EMBEDDED_MODEL_DIR
from training.models import LabModelArguments
from utils.artifacts import artifact_dir
from utils.uid_bookmarks import UidCache
from vlm_datasets.config import DataArguments
from vlm_datasets.example import Example
from vlm_datasets.example_lookup import data_arguments, find_example, read_config
from vlm_datasets.images import open_image
from vlm_datasets.prompts import get_template, to_conversation, user_message


@dataclass
class DecodingKnobs:
    """Everything that decides the output besides the model and the prompt; recorded with every call."""

    do_sample: bool = field(default=False, metadata={"help": "Sample (True) or decode greedily / by beam search."})
    max_new_tokens: int = field(default=64, metadata={"help": "New tokens at most."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling: keep the smallest set with this mass."})
    top_k: int = field(default=50, metadata={"help": "Sampling: keep the k most likely tokens (0: all)."})
    num_beams: int = field(default=1, metadata={"help": "Beam search width (1: none)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "> 1 discourages repeated tokens."})
    seed: int = field(default=0, metadata={"help": "Seed set right before generate (sampling is reproducible)."})

    def generation_config(self) -> GenerationConfig:
        """Every knob set explicitly, so none is inherited from the model's generation_config (only eos/pad/bos)."""
        return GenerationConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k != "seed"})

    def set(self, key: str, text: str) -> None:
        """Set one knob from text (`temperature=0.7` in the playground), converted to the knob's type."""
        kinds = {f.name: {"bool": bool, "int": int, "float": float}[str(f.type)] for f in dataclasses.fields(self)}
        if key not in kinds:
            raise ValueError(f"unknown knob {key!r}; knobs: {', '.join(kinds)}")
        kind = kinds[key]
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{key}: {text!r} is not true or false")
            value = text.lower() in ("true", "1", "yes")
        else:
            value = kind(text)
        setattr(self, key, value)


def chat_inputs(processor, messages: list[dict], images: list[Image.Image]):
    """Chat template with the generation prompt -> processor tensors ([1, T] input ids, pixel values per image)."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(images=images or None, text=[text], return_tensors="pt", add_special_tokens=False)


def user_turn(prompt: str, num_images: int) -> list[dict]:
    """A one-turn conversation: the images first (Qwen2-VL's layout), then the prompt."""
    return [user_message(num_images, prompt)]


@torch.inference_mode()
def generate_text(model, processor, messages: list[dict], images: list[Image.Image], knobs: DecodingKnobs) -> str:
    """The model's continuation of the conversation (special tokens dropped)."""
    batch = chat_inputs(processor, messages, images).to(model.device)
    set_seed(knobs.seed)  # right before generate: the same seed gives the same sample
    out = model.generate(**batch, generation_config=knobs.generation_config())
    return processor.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0]


def default_log_path() -> Path:
    """<artifact root>/logs/playground.jsonl."""
    return artifact_dir("logs") / "playground.jsonl"


def append_log(path: str | Path, record: dict[str, Any]) -> Path:
    """Append one JSON line (one write of the whole line, so concurrent appends do not interleave)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": datetime.now(UTC).isoformat(timespec="seconds"), **record}, ensure_ascii=False)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    return path


@dataclass
class Playground:
    """A loaded model and the current images; `ask` generates, prints nothing and appends to the log."""

    model: object
    processor: object
    model_name: str
    adapter: str | None
    data_args: DataArguments
    split: str
    knobs: DecodingKnobs
    log_path: Path
    uid_cache: UidCache
    images: list = field(default_factory=list)
    image_source: dict = field(default_factory=lambda: {"paths": []})
    example: Example | None = None

    def load_paths(self, paths: list[str | Path]) -> None:
        self.images = [open_image(p) for p in paths]
        self.image_source, self.example = {"paths": [str(Path(p).resolve()) for p in paths]}, None

    def load_uid(self, uid: str) -> Example:
        return self.use_example(find_example(self.data_args, self.split, uid))

    def use_example(self, example: Example) -> Example:
        """Make `example` (of this playground's split) the current one: its images, {sentence} in prompts."""
        self.example, self.images = example, list(example.images)
        self.image_source = {"uid": example.uid, "split": self.split, "dataset_source": self.data_args.dataset_source}
        return example

    def p_true(self) -> float:
        """The current example's p_true as evaluation scores it: answer likelihood under the config's template."""
        if self.example is None:
            raise ValueError("p_true needs a loaded example (:uid UID or :next)")
        template = get_template(self.data_args.prompt_template)
        return score_likelihood(self.model, self.processor, [self.example], template)[0].p_true

    def step(self, offset: int) -> Example | None:
        """Load the uid `offset` places from the current one in the UID cache (None: past the end)."""
        current = self.example.uid if self.example else None
        if current is not None and self.uid_cache.get(current) is None:
            current = None  # a uid loaded by hand: start from the cache's first (or last) bookmark
        entry = self.uid_cache.step(current, offset)
        return self.load_uid(entry.uid) if entry else None

    def ask(self, prompt: str, messages: list[dict] | None = None, template: str | None = None) -> str:
        """Generate from `prompt` (or prepared `messages`, logged as `prompt` + `template`) with the current images."""
        if self.example is not None:
            prompt = prompt.replace("{sentence}", self.example.sentence)
        start = time.perf_counter()
        output = generate_text(
            self.model, self.processor, messages or user_turn(prompt, len(self.images)), self.images, self.knobs
        )
        record = {
            "model": self.model_name,
            "adapter": self.adapter,
            "prompt": prompt,
            **({"prompt_template": template} if template else {}),
            "images": self.image_source,
            "knobs": asdict(self.knobs),
            "output": output,
            "seconds": round(time.perf_counter() - start, 3),
        }
        append_log(self.log_path, record)
        return output

    def ask_template(self) -> str:
        if self.example is None:
            raise ValueError(":ask needs a loaded example (:uid UID or :next)")
        template = get_template(self.data_args.prompt_template)
        messages = to_conversation(self.example, template)["prompt"]
        text = template.user_text(self.example.sentence, len(self.example.images))
        return self.ask(text, messages, template.name)


def load_playground(
    config: Path | None = None,
    knobs: DecodingKnobs | None = None,
    model: str | None = None,
    adapter: str | None = None,
    dtype: str | None = None,
    split: str | None = None,
    log: Path | None = None,
    uid_cache: Path | None = None,
    uid: str | None = None,
    **data_overrides,
) -> Playground:
    """Model (+ adapter) through evals.evaluate.load_for_eval, data settings from the config and overrides, and the
    example `uid` of the split as the current one.

    The model is --model, else the config's model_name_or_path (with its adapter_path), else the embedded model. The
    uid and the adapter are checked before the model loads: a wrong one fails in seconds.
    """
    values = read_config(config)
    data_args = data_arguments(values, **data_overrides)
    split = split or data_args.dataset_eval_split
    example = find_example(data_args, split, uid) if uid else None
    from_config = model is None and "model_name_or_path" in values  # the config's adapter goes with its model only
    model = model or values.get("model_name_or_path") or str(EMBEDDED_MODEL_DIR)
    adapter = adapter or (values.get("adapter_path") if from_config else None)
    model_args = ModelConfig(model_name_or_path=model, dtype=dtype or values.get("dtype") or "float32")
    lm, processor = load_for_eval(EvalArguments(adapter_path=adapter), data_args, model_args, LabModelArguments())
    pg = Playground(
        model=lm,
        processor=processor,
        model_name=model,
        adapter=adapter,
        data_args=data_args,
        split=split,
        knobs=knobs or DecodingKnobs(),
        log_path=Path(log) if log else default_log_path(),
        uid_cache=UidCache(uid_cache),
    )
    if example is not None:
        pg.use_example(example)
    return pg
