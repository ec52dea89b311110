"""Paired comparison of two evaluation runs (evals/comparison.py): accuracy and consistency deltas with paired bootstrap
CIs, McNemar's test overall and per category (raw and Holm-adjusted p); a short summary printed, compare.json, the flip
lists and a plot of the deltas written.

# Zero-shot vs fine-tuned on the same split (RUN: an evaluation folder holding predictions.jsonl, or the file itself)
python evals/compare.py artifacts/evals/zero_shot artifacts/evals/finetuned

# Official CSV predictions need the labels; accuracy per phenomenon from the annotations (both files as the official
# NLVR2 repository holds them); choose the output folder
python evals/compare.py a.csv b.csv --labels nlvr2/data/dev.json \
    --annotations nlvr2/util/annotated_dev_examples.txt --out artifacts/analysis/compare/a_vs_b

Writes <out>/compare.json, <out>/wrong_to_right.txt (A wrong, B right), <out>/right_to_wrong.txt (one uid a line) and
<out>/<A name>__vs__<B name>_deltas.png. Default out: <artifact root>/analysis/compare/<A name>__vs__<B name>. A missing
input is one line on stderr ("error: no such file or folder: PATH"), exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evals.comparison import FLIPS, compare_runs, summary_text
from utils.errors import DataError


def cli(
    run_a: Annotated[Path, typer.Argument(help="Run A: evaluation folder (predictions.jsonl) or predictions file.")],
    run_b: Annotated[Path, typer.Argument(help="Run B, compared against A (delta = B - A).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default under artifacts/analysis/compare).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Official NLVR2 JSON lines; needed for CSV runs.")] = None,
    annotations: Annotated[Path | None, typer.Option(help="annotated_dev_examples.txt (phenomena).")] = None,
    n_resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Print a short summary of the comparison and write compare.json, the flip lists and the deltas plot."""
    try:
        result = compare_runs(run_a, run_b, out, labels, annotations, n_resamples, seed)
    except (DataError, OSError) as e:  # bad or missing input: one line, no traceback
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(summary_text(result))
    out_dir = Path(result["out_dir"])
    written = [out_dir / f for f in ["compare.json", *(f"{x}.txt" for x in FLIPS)]] + [result["plot"]]
    typer.echo("written: " + ", ".join(map(str, written)))


if __name__ == "__main__":
    from utils.cli import run_typer

    run_typer(cli)
