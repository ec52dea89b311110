"""Write the report of one evaluation run (evals/run_report.py): report.md + three PNGs in the run folder, named after
it (<run>_accuracy_by_category.png, <run>_confusion_matrix.png, <run>_reliability.png).

# Report of an evaluation run (written into the run folder)
python evals/report.py artifacts/evals/run

# NLVR2 dev run: accuracy per linguistic phenomenon from the annotations (the official NLVR2 repository's file)
python evals/report.py artifacts/evals/run --annotations nlvr2/util/annotated_dev_examples.txt
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evals.run_report import plot_files, write_report
from utils.errors import DataError


def cli(
    run_dir: Annotated[Path, typer.Argument(help="Evaluation output folder with predictions.jsonl + metrics.json.")],
    annotations: Annotated[Path | None, typer.Option(help="annotated_dev_examples.txt (phenomena).")] = None,
    n_resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Write report.md and the plots into the run folder."""
    try:
        path = write_report(run_dir, annotations, n_resamples, seed)
    except (DataError, OSError) as e:  # bad or missing input: one line, no traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"written: {path} + {', '.join(p.name for p in plot_files(run_dir).values())}")


if __name__ == "__main__":
    from utils.cli import run_typer

    run_typer(cli)
