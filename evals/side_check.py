"""Which image does the model read? For the synthetic statements that name one image ("... in the left image"), each
is judged again, by the generator's own truth function, on the pair swapped: where the other image gives the other
answer the side matters, where it gives the same answer it does not. A model that reads the named image is right in
both groups alike; one that reads the other image follows the swapped answer where the side matters.

# An evaluation folder of the embedded default (its eval_state.json names the synthetic split it scored)
python evals/side_check.py artifacts/demo/finetuned

Prints the table and writes <run>/side_check.json.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer

from evals.prediction_files import predictions_file, read_prediction_records
from evals.run_metrics import bootstrap_ci
from utils.errors import DataError
from vlm_datasets.config import DataArguments
from vlm_datasets.synthetic import SIDES, scenes_of, statement_truths
from vlm_datasets.synthetic_source import synthetic_config, synthetic_size

GROUPS = ("side matters", "side does not matter")


def named_side(sentence: str) -> str | None:
    """The one image a sentence names ("left" / "right"), None when it names none or both."""
    named = [side for side in SIDES if f"{side} image" in sentence]
    return named[0] if len(named) == 1 else None


def eval_data(run: Path) -> DataArguments:
    """The data settings an evaluation folder recorded, refused unless they name a synthetic split."""
    state_path = run / "eval_state.json"
    if not state_path.is_file():
        raise DataError(str(run), "no eval_state.json: not an evaluation folder of evals/zero_shot.py or finetuned.py")
    data = json.loads(state_path.read_text())["data"]
    if data.get("dataset_source") != "synthetic":
        raise DataError(str(state_path), f"source {data.get('dataset_source')!r}: the side check needs synthetic data")
    return DataArguments(**data)


def side_check(run: Path) -> dict:
    """Per named side and group: n, accuracy (with a bootstrap CI) and the share of predictions equal to the answer
    on the swapped pair."""
    args = eval_data(run)
    split = args.dataset_eval_split
    examples, truths = statement_truths(
        split, synthetic_size(args, split), args.synthetic_seed, synthetic_config(args, split)
    )
    by_uid = {ex.uid: ex for ex in examples}
    cells: dict[tuple[str, str], list[tuple[bool, bool]]] = defaultdict(list)  # (right, follows the swap)
    path = predictions_file(run)
    for record in read_prediction_records(path):
        example = by_uid.get(record["uid"])
        if example is None:
            raise DataError(
                f"{path}", f"uid {record['uid']} is not in synthetic split {split!r} (seed {args.synthetic_seed})"
            )
        side = named_side(example.sentence)
        if side is None or record["prediction"] is None:
            continue
        pair = scenes_of(example)
        holds, swapped = truths[example.sentence](pair), truths[example.sentence](pair[::-1])
        if holds != example.label:
            raise DataError(f"uid {example.uid}", "the regenerated truth differs from the label: another generator?")
        group = GROUPS[0] if holds != swapped else GROUPS[1]
        cells[(side, group)].append((record["prediction"] == holds, record["prediction"] == swapped))
    out = {}
    for (side, group), rows in sorted(cells.items()):
        right = [float(r) for r, _ in rows]
        out[f"{side}, {group}"] = {
            "n": len(rows),
            "accuracy": sum(right) / len(rows),
            "accuracy_ci": bootstrap_ci(right),
            "follows_swapped": sum(s for _, s in rows) / len(rows),
        }
    return out


def main(run: Annotated[Path, typer.Argument(help="An evaluation folder (predictions.jsonl + eval_state.json).")]):
    result = side_check(run)
    print(f"{'statements naming one image':38} {'n':>4} {'accuracy':>9} {'95% CI':>13} {'= swapped answer':>17}")
    for name, cell in result.items():
        lo, hi = cell["accuracy_ci"]
        print(f"{name:38} {cell['n']:4d} {cell['accuracy']:9.3f} {lo:6.3f}-{hi:.3f} {cell['follows_swapped']:17.3f}")
    out = run / "side_check.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(out)
    return result


if __name__ == "__main__":
    from utils.cli import run_typer

    run_typer(main)
