"""Evaluation of a base model or base + adapter on an NLVR2-style split: predictions.jsonl by uid + metrics.json."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import set_seed
from trl import ModelConfig

from evals.scoring import batches_by_length, score_generate, score_likelihood
from training.models import LabModelArguments, load_model, load_processor
from training.run_record import write_json_atomic, write_run_record
from vlm_datasets.config import DataArguments
from vlm_datasets.loading import dataset_manifest, iter_examples, load_split
from vlm_datasets.prompts import get_template

logger = logging.getLogger(__name__)


@dataclass
class EvalArguments:
    output_dir: str = field(
        default="artifacts/evals/run", metadata={"help": "Where predictions.jsonl and metrics.json go."}
    )
    adapter_path: str | None = field(
        default=None, metadata={"help": "PEFT adapter (a training run directory) to apply on the base model."}
    )
    scoring: str = field(
        default="likelihood",
        metadata={
            "help": "likelihood: compare P(True) and P(False) after the prompt (never unparseable); generate: greedy "
            "generation + answer parser.",
            "choices": ["likelihood", "generate"],
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Examples per forward pass."})
    max_new_tokens: int = field(default=8, metadata={"help": "Generation scoring: new tokens per answer."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run model code shipped with a hub repo (off: installed transformers only)."},
    )


def _device(model) -> torch.device:
    return next(model.parameters()).device


def load_for_eval(
    eval_args: EvalArguments, data_args: DataArguments, model_args: ModelConfig, lab_args: LabModelArguments
):
    """Base model (+ adapter) in eval mode and the processor (the adapter run's own processor when it saved one)."""
    processor_path = model_args.model_name_or_path
    if eval_args.adapter_path and (Path(eval_args.adapter_path) / "processor_config.json").exists():
        processor_path = eval_args.adapter_path
    processor = load_processor(
        processor_path,
        revision=None if processor_path == eval_args.adapter_path else model_args.model_revision,
        trust_remote_code=eval_args.trust_remote_code,
        min_pixels=data_args.min_pixels,
        max_pixels=data_args.max_pixels,
    )
    model_args.use_peft = False  # evaluation never creates a fresh adapter
    model = load_model(model_args, lab_args, trust_remote_code=eval_args.trust_remote_code)
    if eval_args.adapter_path:
        from peft import PeftModel

        if not (Path(eval_args.adapter_path) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{eval_args.adapter_path}: no adapter_config.json (not a PEFT adapter folder)")
        model = PeftModel.from_pretrained(model, eval_args.adapter_path)
    if torch.cuda.is_available() and _device(model).type == "cpu" and not getattr(model, "hf_device_map", None):
        model = model.to("cuda")
    model.eval()
    return model, processor


def summarize(records: list[dict]) -> dict:
    """n, accuracy over labeled examples, unparseable count and accuracy per category (when examples carry one)."""
    labeled = [r for r in records if r["label"] is not None]
    correct = [r["prediction"] == r["label"] for r in labeled]
    by_cat = defaultdict(list)
    for r, ok in zip(labeled, correct, strict=True):
        if r.get("category"):
            by_cat[r["category"]].append(ok)
    return {
        "n": len(records),
        "n_labeled": len(labeled),
        "accuracy": sum(correct) / len(labeled) if labeled else None,
        "n_unparseable": sum(r["prediction"] is None for r in records),
        "accuracy_by_category": {c: sum(v) / len(v) for c, v in sorted(by_cat.items())},
    }


def run_evaluation(
    eval_args: EvalArguments,
    data_args: DataArguments,
    model_args: ModelConfig,
    lab_args: LabModelArguments | None = None,
) -> dict:
    """Score every example of the eval split, write predictions.jsonl (by uid) and metrics.json; return metrics."""
    set_seed(eval_args.seed)
    start = time.time()
    template = get_template(data_args.prompt_template)
    lab_args = lab_args or LabModelArguments()
    model, processor = load_for_eval(eval_args, data_args, model_args, lab_args)
    split = data_args.dataset_eval_split
    examples = list(iter_examples(load_split(data_args, split, limit=data_args.max_eval_examples)))
    seen = set()
    for ex in examples:
        if ex.uid in seen:
            raise ValueError(f"uid {ex.uid}: appears twice in split {split!r}; predictions are keyed by uid")
        seen.add(ex.uid)

    scored = {}
    score_start = time.time()
    with tqdm(total=len(examples), desc=f"eval {split} ({eval_args.scoring})", unit="ex") as bar:
        for batch in batches_by_length(examples, eval_args.batch_size):
            if eval_args.scoring == "likelihood":
                results = score_likelihood(model, processor, batch, template)
            else:
                results = score_generate(model, processor, batch, template, eval_args.max_new_tokens)
            scored.update({r.uid: r for r in results})
            bar.update(len(batch))
    score_seconds = time.time() - score_start

    out_dir = Path(eval_args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for ex in examples:  # the split's own order
        s = scored[ex.uid]
        rec = {
            "uid": ex.uid,
            "sentence": ex.sentence,
            "label": ex.label,
            "prediction": s.prediction,
            "p_true": s.p_true,
            "category": ex.meta.get("category"),
        }
        if s.raw is not None:
            rec["raw"] = s.raw
        records.append(rec)
    tmp = out_dir / ".predictions.jsonl.tmp"
    with tmp.open("w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    tmp.replace(out_dir / "predictions.jsonl")

    metrics = summarize(records) | {
        "split": split,
        "scoring": eval_args.scoring,
        "model": model_args.model_name_or_path,
        "adapter": eval_args.adapter_path,
        "prompt_template": template.name,
        "examples_per_second": len(examples) / score_seconds if score_seconds > 0 else None,
        "wall_seconds": time.time() - start,
    }
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_run_record(
        out_dir,
        (eval_args, data_args, model_args, lab_args),
        template,
        dataset_manifest(data_args, split),
        eval_args.seed,
        kind="eval",
    )
    return metrics


def make_parser():
    """The evaluation scripts' parser: YAML config + CLI overrides into the four argument dataclasses."""
    from trl import TrlParser

    return TrlParser((EvalArguments, DataArguments, ModelConfig, LabModelArguments))
