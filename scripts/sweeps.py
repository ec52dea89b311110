"""Ablation sweeps: a grid and/or named variants of overrides on a training config and an evaluation config, expanded
into cells, each run once per seed as the normal entry points run it (training/sft.py, evals/finetuned.py) into
<output_dir>/<cell>/seed-<s>/, resumable. The command line: scripts/sweep.py.

A run folder holds train.yaml and eval.yaml (the base configs with the cell's overrides written in: each can be run by
hand with its entry point), train/ (adapter, processor, run record), logs/ (TensorBoard), train_summary.json once
training has finished, and the evaluator's predictions.jsonl, report and metrics.json. metrics.json, written last and
atomically by the evaluator, is what makes a run complete.
"""

from __future__ import annotations

import gc
import itertools
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utils.atomic_write import write_json_atomic, write_text_atomic
from utils.checkpoints import last_complete_checkpoint
from utils.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
EVAL_PREFIX = "eval."  # an override key "eval.<field>" goes to the evaluation config, any other to the training one
# Set by the sweep for every run; an override of one of them is refused.
OWNED_TRAIN = ("output_dir", "logging_dir", "run_name", "resume_from_checkpoint")
OWNED_EVAL = ("output_dir", "adapter_path", "overwrite")
FOLLOWS_TRAINING = ("model_name_or_path", "model_revision")  # the adapter is evaluated on the base it was trained on
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass
class SweepArguments:
    train_config: str = field(
        default="training/configs/embedded_lora.yaml", metadata={"help": "Base training/sft.py config of every cell."}
    )
    eval_config: str = field(
        default="evals/configs/embedded_finetuned.yaml",
        metadata={"help": "Base evals/finetuned.py config of every cell (its adapter_path and output_dir are set)."},
    )
    output_dir: str = field(
        default="artifacts/sweeps/sweep", metadata={"help": "Sweep folder: <cell>/seed-<s>/, results, plots."}
    )
    grid: dict | str | None = field(
        default=None,
        metadata={
            "help": "Cartesian product: {field: [values]} (a mapping, or JSON); 'eval.<field>' targets the evaluation "
            "config, any other key the training config."
        },
    )
    variants: dict | str | None = field(
        default=None,
        metadata={"help": "Named override sets {name: {field: value}}; crossed with the grid when both are given."},
    )
    overrides: dict | str | None = field(
        default=None, metadata={"help": "Overrides applied to every cell ({field: value}; variants and grid win)."}
    )
    extra_overrides: dict | str | None = field(
        default=None,
        metadata={
            "help": "More overrides for every cell, on top of overrides (e.g. from the command line: "
            "--extra_overrides '{\"max_steps\": 20}'). A different sweep: give it its own output_dir."
        },
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Seeds; every cell runs once per seed."})
    seed_fields: list[str] = field(
        default_factory=lambda: ["seed"], metadata={"help": "Training fields set to the run's seed."}
    )
    metrics: list[str] = field(
        default_factory=lambda: ["accuracy", "consistency"],
        metadata={"help": "metrics.json keys to collect (dotted for nested ones: accuracy_by_category.negation)."},
    )
    plot_axis: str | None = field(
        default=None, metadata={"help": "Grid axis on the plots' x axis (default: the first); lines: the rest."}
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={"help": "Keep train/checkpoint-N (optimizer state) after a run's training has finished."},
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Start over the runs whose saved train.yaml/eval.yaml differ from this sweep's (default: refuse "
            "to mix them into the results)."
        },
    )
    dry_run: bool = field(default=False, metadata={"help": "Validate every config and list the runs; run nothing."})
    collect_only: bool = field(
        default=False, metadata={"help": "Only collect results.csv, results.md and plots from the runs on disk."}
    )

    def __post_init__(self):
        for name in ("grid", "variants", "overrides", "extra_overrides"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, json.loads(value))
                except json.JSONDecodeError as e:
                    raise UsageError(f"{name} is not valid JSON: {e}") from None
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise UsageError(f"{name} must be a mapping, got {type(getattr(self, name)).__name__}")
        if not self.seeds:
            raise UsageError("seeds is empty: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"seeds repeat a value: {self.seeds}")


@dataclass(frozen=True, eq=False)  # hashed by identity: the cells hold dicts
class Cell:
    name: str
    variant: str | None
    axes: dict[str, Any]  # grid axis -> this cell's value
    train: dict[str, Any]  # overrides of the training config
    eval: dict[str, Any]  # overrides of the evaluation config


@dataclass(frozen=True, eq=False)  # hashed by identity: the cells hold dicts
class Run:
    cell: Cell
    seed: int
    dir: Path


def value_label(value: Any) -> str:
    """A value as it appears in a cell name: true, 8, 0.002, nlvr2_short."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "none"
    elif isinstance(value, float):
        text = format(value, "g")
    elif isinstance(value, int | str):
        text = str(value)
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return _UNSAFE.sub("_", text).strip("_") or "empty"


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """{"lora_r": 8, "eval.load_in_4bit": True} -> ({"lora_r": 8}, {"load_in_4bit": True})."""
    train = {k: v for k, v in overrides.items() if not k.startswith(EVAL_PREFIX)}
    evaluation = {k[len(EVAL_PREFIX) :]: v for k, v in overrides.items() if k.startswith(EVAL_PREFIX)}
    return train, evaluation


def _grid_axes(grid: dict | None) -> dict[str, list]:
    axes = {}
    for axis, values in (grid or {}).items():
        if not isinstance(values, list):
            raise UsageError(f"grid axis {axis!r}: give a list of values, got {values!r}")
        if not values:
            raise UsageError(f"grid axis {axis!r} has no values: an empty grid axis makes an empty sweep")
        axes[str(axis)] = values
    return axes


def _variants(variants: dict | None) -> dict[str, dict]:
    out = {}
    for name, overrides in (variants or {}).items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UsageError(f"variant name {name!r}: letters, digits and ._+- only, starting with a letter or digit")
        if overrides is not None and not isinstance(overrides, dict):
            raise UsageError(f"variant {name!r}: give a mapping of overrides, got {overrides!r}")
        out[name] = dict(overrides or {})
    return out


def expand(args: SweepArguments) -> list[Cell]:
    """The sweep's cells: every variant (in order) x the cartesian product of the grid axes (in order)."""
    axes, variants = _grid_axes(args.grid), _variants(args.variants)
    if not axes and not variants:
        raise UsageError("empty sweep: give a grid (field: [values]) and/or variants (name: {field: value})")
    common = {**(args.overrides or {}), **(args.extra_overrides or {})}
    cells = []
    for variant in list(variants) or [None]:
        own = variants.get(variant, {})
        both = sorted(set(own) & set(axes))
        if both:
            raise UsageError(f"variant {variant!r} sets {both}, which the grid also sweeps")
        for values in itertools.product(*axes.values()):
            point = dict(zip(axes, values, strict=True))
            parts = ([variant] if variant else []) + [f"{a}-{value_label(v)}" for a, v in point.items()]
            train, evaluation = split_overrides({**common, **own, **point})
            cells.append(Cell("__".join(parts), variant, point, train, evaluation))
    names = [c.name for c in cells]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"cells share a name (a value repeated in an axis?): {repeated}")
    for cell in cells:
        _check_owned(cell, args.seed_fields)
    return cells


def _check_owned(cell: Cell, seed_fields: list[str]) -> None:
    for key in cell.train:
        if key in OWNED_TRAIN:
            raise UsageError(f"cell {cell.name}: {key} is set by the sweep for every run; do not override it")
        if key in seed_fields:
            raise UsageError(f"cell {cell.name}: {key} is set per run from seeds ({seed_fields}); use seeds instead")
    for key in cell.eval:
        if key in OWNED_EVAL:
            raise UsageError(f"cell {cell.name}: eval.{key} is set by the sweep for every run; do not override it")


def plan(args: SweepArguments, cells: list[Cell]) -> list[Run]:
    """Every run, seed-major: all cells at the first seed come first, so a sweep cut short holds whole seeds."""
    out = Path(args.output_dir)
    return [Run(cell, seed, out / cell.name / f"seed-{seed}") for seed in args.seeds for cell in cells]


def resolve_config(path: str) -> Path:
    """A config path as given (absolute or from the current folder), else from the repository root."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else REPO / p


def _load_yaml(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise UsageError(f"{path}: not a YAML mapping")
    return config


def config_texts(args: SweepArguments, run: Run) -> tuple[str, str]:
    """(train.yaml, eval.yaml) of a run: each base config with the cell's overrides and the sweep's own fields."""
    train_path, eval_path = resolve_config(args.train_config), resolve_config(args.eval_config)
    train = {**_load_yaml(train_path), **run.cell.train}
    train |= {field_: run.seed for field_ in args.seed_fields}
    train |= {
        "output_dir": str(run.dir / "train"),
        "logging_dir": str(run.dir / "logs"),
        "run_name": f"{Path(args.output_dir).name}-{run.cell.name}-seed-{run.seed}",
    }
    evaluation = _load_yaml(eval_path)
    evaluation |= {k: run.cell.train[k] for k in FOLLOWS_TRAINING if k in run.cell.train and k not in run.cell.eval}
    evaluation |= run.cell.eval
    evaluation |= {"output_dir": str(run.dir), "adapter_path": str(run.dir / "train")}
    where = f"cell {run.cell.name}, seed {run.seed}"
    texts = []
    bases = (("training/sft.py", args.train_config, train), ("evals/finetuned.py", args.eval_config, evaluation))
    for entry, base, config in bases:
        kind = "train" if entry.startswith("training") else "eval"
        header = f"# {entry} --config {run.dir / (kind + '.yaml')}\n# written by scripts/sweep.py: {base} + {where}\n"
        texts.append(header + yaml.safe_dump(config, sort_keys=False))
    return texts[0], texts[1]


def parse_config(path: Path, kind: str, extra: tuple[str, ...] = ()):
    """A config file parsed by its entry point's own parser (a fresh one: TrlParser keeps a config's defaults)."""
    from evals.evaluate import make_parser as eval_parser
    from training.fine_tuning import make_parser as train_parser

    parser = train_parser() if kind == "train" else eval_parser()
    return parser.parse_args_and_config(["--config", str(path), *extra])


def _parse_text(text: str, kind: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{kind}.yaml"
        path.write_text(text)
        return parse_config(path, kind)


def validate(args: SweepArguments, runs: list[Run]) -> dict[Run, int]:
    """Parse every run's configs as the entry points do (an unknown field is refused the same way), before anything
    runs; {run: its max_steps}."""
    steps = {}
    for run in runs:
        train_text, eval_text = config_texts(args, run)
        for kind, text in (("train", train_text), ("eval", eval_text)):
            try:
                parsed = _parse_text(text, kind)
            except ValueError as e:  # TrlParser: "Unknown arguments from config file: [...]"; __post_init__ checks
                raise UsageError(f"cell {run.cell.name}: {kind} config: {e}") from None
            if kind == "train":
                steps[run] = parsed[1].max_steps
                train_model = parsed[2].model_name_or_path
            elif parsed[2].model_name_or_path != train_model:
                raise UsageError(
                    f"cell {run.cell.name}: evaluation loads base {parsed[2].model_name_or_path!r}, training "
                    f"{train_model!r}; an adapter is evaluated on the base it was trained on"
                )
    return steps


def run_state(args: SweepArguments, run: Run) -> str:
    """complete (metrics.json) | trained (train_summary.json) | partial | new | changed (other saved configs)."""
    texts = zip((run.dir / "train.yaml", run.dir / "eval.yaml"), config_texts(args, run), strict=True)
    if any(path.exists() and path.read_text() != text for path, text in texts):
        return "changed"
    if (run.dir / "metrics.json").exists():
        return "complete"
    if (run.dir / "train_summary.json").exists():
        return "trained"
    return "partial" if run.dir.exists() else "new"


def check_changed(args: SweepArguments, runs: list[Run], remove: bool = True) -> list[Run]:
    """Runs saved with other configs: refused unless overwrite (then, with remove, their folders are removed, to
    start over)."""
    changed = [r for r in runs if run_state(args, r) == "changed"]
    if changed and not (args.overwrite and remove):
        names = ", ".join(str(r.dir) for r in changed[:5]) + (" ..." if len(changed) > 5 else "")
        raise UsageError(
            f"{len(changed)} runs were made with other settings ({names}): their train.yaml/eval.yaml differ from "
            "this sweep's. Use another output_dir, or --overwrite true to start them over."
        )
    for run in changed:
        shutil.rmtree(run.dir)
    return changed


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def execute(args: SweepArguments, run: Run) -> dict:
    """Train (unless train_summary.json says it is done; from the newest complete checkpoint when there is one) and
    evaluate one run; returns its metrics. In-process, as scripts/demo.py does: each config is parsed by the entry
    point's own parser and run by the library function its main() runs (training/fine_tuning.py, evals/modes.py),
    sparing a fresh interpreter and stack import per run (~7 s on 2 cores, against ~60 s runs); the trainer and model
    are dropped before the next run."""
    from evals.held_out import held_out_accuracy
    from evals.modes import finetuned
    from training.fine_tuning import run_sft

    train_text, eval_text = config_texts(args, run)
    run.dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.yaml", train_text), ("eval.yaml", eval_text)):
        write_text_atomic(run.dir / name, text)
    train_dir = run.dir / "train"
    if not (run.dir / "train_summary.json").exists():
        resume = last_complete_checkpoint(train_dir) is not None
        if not resume:
            shutil.rmtree(train_dir, ignore_errors=True)  # a killed start with no checkpoint: begin again
        start = time.time()
        extra = ("--resume_from_checkpoint", "true") if resume else ()
        trainer = run_sft(*parse_config(run.dir / "train.yaml", "train", extra), held_out=held_out_accuracy)
        history = trainer.state.log_history
        losses = [e["loss"] for e in history if "loss" in e]
        summary = {
            "global_step": trainer.state.global_step,
            "train_loss": next((e["train_loss"] for e in reversed(history) if "train_loss" in e), None),
            "loss_first_last": [losses[0], losses[-1]] if losses else None,
            "resumed": resume,
            "seconds": round(time.time() - start, 1),
        }
        del trainer
        _free_memory()
        write_json_atomic(run.dir / "train_summary.json", summary)
        if not args.keep_checkpoints:  # the adapter is saved beside them; they only served a resume
            for checkpoint in train_dir.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
    metrics = finetuned(*parse_config(run.dir / "eval.yaml", "eval"))
    _free_memory()
    return metrics


def sweep_record(args: SweepArguments, cells: list[Cell]) -> dict:
    """sweep.json: the sweep's settings and every cell's overrides (what results.md is about)."""
    return {
        "name": Path(args.output_dir).name,
        "train_config": args.train_config,
        "eval_config": args.eval_config,
        "seeds": args.seeds,
        "seed_fields": args.seed_fields,
        "grid": args.grid,
        "variants": args.variants,
        "overrides": args.overrides,
        "extra_overrides": args.extra_overrides,
        "metrics": args.metrics,
        "cells": [
            {"name": c.name, "variant": c.variant, "axes": c.axes, "train": c.train, "eval": c.eval} for c in cells
        ],
    }
