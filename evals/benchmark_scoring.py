"""Benchmark: likelihood scoring vs generation + answer parser, same model, same examples, one process.

Likelihood scoring runs one forward pass per batch over the prompt (images processed once, both answers read from
the last position's logits); generation decodes up to max_new_tokens and parses the text. Prints examples/s of each,
their agreement wherever the generated answer parses, and `speedup: X` as the last line.

# Embedded default: base + the demo's LoRA adapter (answers parse), the held-out synthetic split
python evals/benchmark_scoring.py --config evals/configs/embedded_finetuned.yaml --adapter_path artifacts/demo/lora

# Generation one example per call (as harnesses that do not batch generation run it), likelihood in batches of 64
python evals/benchmark_scoring.py --config evals/configs/embedded_finetuned.yaml --adapter_path artifacts/demo/lora \
    --generate_batch_size 1

# Qwen2-VL-2B zero-shot on the first 512 NLVR2 dev examples (a GPU)
python evals/benchmark_scoring.py --config evals/configs/qwen2vl_2b_zero_shot.yaml --max_eval_examples 512
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from trl import ModelConfig

from evals.arguments import EvalArguments, make_parser
from training.models import LabModelArguments
from utils.atomic_write import write_json_atomic
from utils.run_record import library_versions
from vlm_datasets.config import DataArguments
from vlm_datasets.prompts import get_template


@dataclass
class ScoringBenchmarkArguments:
    generate_batch_size: int | None = field(
        default=None, metadata={"help": "Examples per generate() call (default: batch_size, as likelihood scoring)."}
    )


def _timed(name: str, scoring: str, score, processor, template, examples, batch_size: int) -> tuple[dict, float, float]:
    """(results by uid, seconds preparing the prompts, seconds in the model) over batches grouped by length."""
    from evals.scoring import batches_by_length, prompts

    batches = list(batches_by_length(examples, batch_size))
    score(batches[0], prompts(processor, batches[0], template, scoring))  # warm-up: lazy initialisation left out
    results, t_prep, t_model = {}, 0.0, 0.0
    for batch in tqdm(batches, desc=name, unit="batch"):
        start = time.perf_counter()
        inputs = prompts(processor, batch, template, scoring)
        middle = time.perf_counter()
        results.update({r.uid: r for r in score(batch, inputs)})
        t_prep, t_model = t_prep + middle - start, t_model + time.perf_counter() - middle
    return results, t_prep, t_model


def main(
    eval_args: EvalArguments,
    data_args: DataArguments,
    model_args: ModelConfig,
    lab_args: LabModelArguments | None = None,
    bench_args: ScoringBenchmarkArguments | None = None,
) -> dict:
    # The model and data stack (torch, datasets) loads for a benchmark, not for --help.
    import torch

    from evals.evaluate import load_for_eval
    from evals.scoring import score_generate, score_likelihood
    from vlm_datasets.loading import iter_examples, load_split

    template = get_template(data_args.prompt_template)
    generate_batch_size = (bench_args or ScoringBenchmarkArguments()).generate_batch_size or eval_args.batch_size
    model, processor = load_for_eval(eval_args, data_args, model_args, lab_args or LabModelArguments())
    split = data_args.dataset_eval_split
    examples = list(iter_examples(load_split(data_args, split, limit=data_args.max_eval_examples)))
    likelihood, prep_lik, model_lik = _timed(
        "likelihood",
        "likelihood",
        lambda b, x: score_likelihood(model, processor, b, template, inputs=x),
        processor,
        template,
        examples,
        eval_args.batch_size,
    )
    generated, prep_gen, model_gen = _timed(
        "generate",
        "generate",
        lambda b, x: score_generate(model, processor, b, template, eval_args.max_new_tokens, inputs=x),
        processor,
        template,
        examples,
        generate_batch_size,
    )
    t_lik, t_gen = prep_lik + model_lik, prep_gen + model_gen
    parsed = [u for u, r in generated.items() if r.prediction is not None]
    same = sum(generated[u].prediction == likelihood[u].prediction for u in parsed)
    result = {
        "n": len(examples),
        "split": split,
        "model": model_args.model_name_or_path,
        "adapter": eval_args.adapter_path,
        "batch_size": eval_args.batch_size,
        "generate_batch_size": generate_batch_size,
        "max_new_tokens": eval_args.max_new_tokens,
        "likelihood_examples_per_second": len(examples) / t_lik,
        "generate_examples_per_second": len(examples) / t_gen,
        "speedup": t_gen / t_lik,
        "seconds": {
            "likelihood": {"prompts": prep_lik, "model": model_lik},
            "generate": {"prompts": prep_gen, "model": model_gen},
        },
        "generate_parsed": len(parsed),
        "identical_where_parsed": same,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor()})",
        "torch_threads": torch.get_num_threads(),
        "versions": library_versions(),
    }
    write_json_atomic(Path(eval_args.output_dir) / "benchmark_scoring.json", result)
    print(f"{'':14}{'examples/s':>12}")
    print(f"{'likelihood':14}{result['likelihood_examples_per_second']:>12.1f}")
    print(f"{'generate':14}{result['generate_examples_per_second']:>12.1f}")
    print(
        f"generated answers parsed: {len(parsed)}/{len(examples)}; same prediction as likelihood: {same}/{len(parsed)}"
    )
    print(
        f"seconds in prompts (chat template + image processor) / in the model: likelihood {prep_lik:.2f} / "
        f"{model_lik:.2f} (one forward pass), generate {prep_gen:.2f} / {model_gen:.2f} (forward + decoding)"
    )
    print(f"speedup: {result['speedup']:.1f}")
    return result


if __name__ == "__main__":
    from utils.cli import entry_point, parse_args

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        from trl import TrlParser

        main(*parse_args(TrlParser((*make_parser().dataclass_types, ScoringBenchmarkArguments))))
