"""A training run's TensorBoard scalars as PNG plots and a markdown table of final values.

# A run folder (its run_record.json names the TensorBoard folder; old runs keep events under <run>/runs/)
python scripts/plot_run.py artifacts/checkpoints/embedded-lora

# A run name (-> <artifact root>/logs/<name>) or an event folder; every other scalar too; elsewhere
python scripts/plot_run.py embedded-lora --all --out /tmp/plots

Writes <out>/<group>.png for each group that has data (loss: train and eval, on a log axis; accuracy: the held-out
NLVR2 accuracy and p_label; learning_rate; grad_norm; mean_token_accuracy: train and eval), <out>/summary.png (all
groups), <out>/summary.md (the final, min and max of every scalar); every title carries the run's name. Prints the
table and the folder. A resumed run's event files are merged: a step logged twice keeps its latest value.

eval/accuracy is the task's: training/sft.py scores the eval split's first eval_accuracy_examples by answer likelihood
at every evaluation (the figure evals/finetuned.py gives on those examples). mean_token_accuracy is TRL's: the share
of answer tokens predicted right under teacher forcing, not the task's accuracy.

Where the plots land (--out overrides):
- a run folder (output_dir, e.g. artifacts/checkpoints/<run>): <run>/plots;
- a run name, TensorBoard folder or event file: the folder the events are in, + /plots (artifacts/logs/<run>/plots);
- colab/Train.ipynb passes --out <root>/analysis/plots/<run>, beside the other analysis on Drive.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import matplotlib

matplotlib.use("Agg")  # files only, no display (Colab, CI)
import matplotlib.pyplot as plt  # noqa: E402
import typer  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from utils.artifacts import artifact_dir  # noqa: E402

EVENTS = "events.out.tfevents.*"
# The Trainer's TensorBoard tags (transformers' rewrite_logs: "train/..." and "eval/...").
GROUPS = {
    "loss": ("train/loss", "eval/loss"),
    "accuracy": ("eval/accuracy", "eval/p_label"),  # held out, by answer likelihood (training/sft.py)
    "learning_rate": ("train/learning_rate",),
    "grad_norm": ("train/grad_norm",),
    "mean_token_accuracy": ("train/mean_token_accuracy", "eval/mean_token_accuracy"),  # TRL's, teacher-forced
}
LOG_AXIS = {"loss"}  # the first losses (~3.5) would flatten the range that matters

Series = dict[str, list[tuple[int, float]]]  # tag -> [(step, value)], by step


def recorded_logging_dir(run: Path) -> Path | None:
    """The TensorBoard folder a training run recorded in its run_record.json (training/callbacks.py), if any."""
    try:
        record = json.loads((run / "run_record.json").read_text())
        return Path(record["config"]["LabTrainingArguments"]["logging_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def event_files(run: Path) -> tuple[list[Path], Path]:
    """The run's event files and the folder they were found in: run itself (a file or any folder holding some),
    else the folder its run record names, else <artifact root>/logs/<run name>."""
    if run.is_file():
        return [run], run.parent
    candidates = [run, recorded_logging_dir(run) if run.is_dir() else None, artifact_dir("logs") / run.name]
    for folder in [c for c in candidates if c is not None]:
        found = sorted(folder.rglob(EVENTS)) if folder.is_dir() else []
        if found:
            return found, folder
    looked = ", ".join(str(c) for c in candidates if c is not None)
    raise FileNotFoundError(f"no TensorBoard event files ({EVENTS}) in {looked}")


def read_scalars(files: list[Path]) -> Series:
    """Every scalar of the event files; a step logged in several files (a resumed run) keeps the latest value."""
    latest: dict[str, dict[int, tuple[float, float]]] = {}
    for path in files:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point, not a sample
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            points = latest.setdefault(tag, {})
            for event in acc.Scalars(tag):
                if event.step not in points or event.wall_time >= points[event.step][0]:
                    points[event.step] = (event.wall_time, event.value)
    return {tag: sorted((step, value) for step, (_, value) in pts.items()) for tag, pts in sorted(latest.items())}


def plot_groups(scalars: Series, every_scalar: bool = False) -> dict[str, tuple[str, ...]]:
    """Group name -> tags with data: the GROUPS first, then (every_scalar) each other tag with 2+ points alone."""
    groups = {name: tuple(t for t in tags if t in scalars) for name, tags in GROUPS.items()}
    groups = {name: tags for name, tags in groups.items() if tags}
    if every_scalar:
        grouped = {t for tags in groups.values() for t in tags}
        for tag, points in scalars.items():
            if tag not in grouped and len(points) > 1:
                groups[tag.replace("/", "_")] = (tag,)
    return groups


def _draw(ax, scalars: Series, title: str, tags: tuple[str, ...], log_axis: bool = False) -> None:
    for tag in tags:
        steps, values = zip(*scalars[tag], strict=True)
        ax.plot(steps, values, marker="o" if len(steps) <= 20 else None, markersize=3, label=tag)
    if log_axis and all(v > 0 for tag in tags for _, v in scalars[tag]):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def write_plots(scalars: Series, groups: dict[str, tuple[str, ...]], out: Path, title: str) -> list[Path]:
    """<out>/<group>.png for each group and <out>/summary.png with all of them."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, tags in groups.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw(ax, scalars, f"{title}: {name}", tags, name in LOG_AXIS)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        written.append(out / f"{name}.png")
    cols = min(2, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for ax, (name, tags) in zip(axes.flat, groups.items(), strict=False):
        _draw(ax, scalars, f"{title}: {name}", tags, name in LOG_AXIS)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=100)
    plt.close(fig)
    return [*written, out / "summary.png"]


def final_values_table(scalars: Series) -> str:
    """Markdown: each scalar's final value, its step, min and max, and how many points."""
    lines = ["| scalar | final | at step | min | max | points |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for tag, points in scalars.items():
        values = [v for _, v in points]
        step, final = points[-1]
        lines.append(f"| {tag} | {final:.6g} | {step} | {min(values):.6g} | {max(values):.6g} | {len(points)} |")
    return "\n".join(lines) + "\n"


def main(
    run: Annotated[Path, typer.Argument(help="Run folder, TensorBoard folder or event file, or a run name.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default <run>/plots; see above).")] = None,
    every_scalar: Annotated[bool, typer.Option("--all", help="Also plot every other scalar with 2+ points.")] = False,
) -> Path:
    """Read the run's scalars, write the PNGs and summary.md; returns the output folder."""
    files, found_in = event_files(run)
    scalars = read_scalars(files)
    if not scalars:
        raise ValueError(f"{found_in}: the event files hold no scalars (did the run log anything yet?)")
    groups = plot_groups(scalars, every_scalar)
    if not groups:
        groups = plot_groups(scalars, every_scalar=True)  # no Trainer tags (another writer): plot what there is
    out = out or ((run if run.is_dir() else found_in) / "plots")
    title = run.resolve().name if run.exists() else run.name
    pngs = write_plots(scalars, groups, out, title)
    table = final_values_table(scalars)
    sources = "".join(f"- {p}\n" for p in files)
    (out / "summary.md").write_text(f"# {title}\n\nEvent files:\n{sources}\n{table}", encoding="utf-8")
    print(table)
    print(f"{len(pngs)} plots + summary.md in {out}")
    return out


if __name__ == "__main__":
    from utils.cli import run_typer

    run_typer(main, help=__doc__.split("\n\n")[0], user_errors=(ValueError,))
