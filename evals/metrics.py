"""The NLVR2 metrics of a predictions file (evals/run_metrics.py), printed as JSON.

Paths below are those of the official NLVR2 repository (github.com/lil-lab/nlvr, folder nlvr2/) once cloned.

# A lab evaluation run against the official dev labels, with phenomena and the balanced/unbalanced subsets
python evals/metrics.py artifacts/evals/run/predictions.jsonl nlvr2/data/dev.json \
    --annotations nlvr2/util/annotated_dev_examples.txt \
    --balanced nlvr2/data/balanced/balanced_dev.json --unbalanced nlvr2/data/unbalanced/unbalanced_dev.json

# Official CSV predictions (identifier,prediction); --intersection scores only the uids both files hold
python evals/metrics.py predictions.csv nlvr2/data/dev.json --intersection

# Labels (and synthetic categories) from predictions.jsonl itself; also export the official CSV
python evals/metrics.py artifacts/evals/run/predictions.jsonl --csv-out artifacts/evals/run/predictions.csv
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from evals.run_metrics import consistency_note, file_metrics
from utils.errors import DataError


def cli(
    predictions: Annotated[Path, typer.Argument(help="Run folder, predictions.jsonl or official CSV.")],
    labels: Annotated[
        Path | None, typer.Argument(help="Official NLVR2 JSON lines (dev.json); default: the jsonl's own labels.")
    ] = None,
    annotations: Annotated[Path | None, typer.Option(help="annotated_dev_examples.txt (phenomena).")] = None,
    balanced: Annotated[
        Path | None, typer.Option(help="balanced_dev.json: accuracy and consistency on that subset.")
    ] = None,
    unbalanced: Annotated[
        Path | None, typer.Option(help="unbalanced_dev.json: accuracy and consistency on that subset.")
    ] = None,
    intersection: Annotated[bool, typer.Option(help="Score the shared uids instead of refusing a mismatch.")] = False,
    csv_out: Annotated[Path | None, typer.Option(help="Also write the predictions as the official CSV.")] = None,
    n_resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Print the metrics of a predictions file as JSON."""
    try:
        metrics = file_metrics(
            predictions, labels, annotations, balanced, unbalanced, intersection, csv_out, n_resamples, seed
        )
    except (DataError, OSError) as e:  # bad or missing input: one line, no traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(metrics, indent=2))
    if metrics["consistency"] is not None and metrics["n_consistency_excluded"]:  # stdout stays pure JSON
        typer.echo(f"note: {consistency_note(metrics)}", err=True)


if __name__ == "__main__":
    from utils.cli import run_typer

    run_typer(cli)
