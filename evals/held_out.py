"""The held-out figures a training run logs at each evaluation, beside eval/loss: NLVR2 accuracy and p_label by answer
likelihood (evals/scoring.py) on the eval split's first examples, as evals/evaluate.py scores them.
"""

from __future__ import annotations

from evals.scoring import likelihood_accuracy
from vlm_datasets.config import DataArguments
from vlm_datasets.loading import iter_examples, load_split


def held_out_accuracy(data_args: DataArguments, training_args, train_lab_args, processor, template):
    """model -> {"accuracy", "p_label"} by answer likelihood on the eval split's first eval_accuracy_examples
    labelled examples (loaded once); None when the run does not evaluate."""
    n = train_lab_args.eval_accuracy_examples
    if training_args.eval_strategy == "no" or n <= 0:
        return None
    rows = load_split(data_args, data_args.dataset_eval_split, limit=n)
    examples = [ex for ex in iter_examples(rows) if ex.label is not None]
    if not examples:
        raise ValueError(f"eval_accuracy_examples: the eval split {data_args.dataset_eval_split!r} has no labels")
    batch = training_args.per_device_eval_batch_size

    def score(model) -> dict[str, float]:
        return likelihood_accuracy(model, processor, examples, template, batch)

    return score
