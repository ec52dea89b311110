"""Ablation sweeps with one command: a grid and/or named variants of config overrides (any training or evaluation
field), several seeds per cell; each run trains with training/sft.py and evaluates with evals/finetuned.py into
<output_dir>/<cell>/seed-<s>/, then results.csv, summary.csv, results.md (mean, std, 95% CI over seeds) and plots
are written into output_dir. Format, outputs and the sweeps: docs/ablations.md.

# Embedded default (CPU, offline; each YAML's header gives its estimated time on 2 cores)
python scripts/build_embedded_model.py
python scripts/sweep.py --config training/configs/sweeps/embedded_image_pairs.yaml
python scripts/sweep.py --config training/configs/sweeps/embedded_instructions.yaml
python scripts/sweep.py --config training/configs/sweeps/embedded_lora_qlora_rank.yaml

# Started again after an interruption, the same command skips the complete runs and redoes the others
# (training from its newest complete checkpoint, evaluation from the predictions already written)

# Validate every run's configs and list the runs with their state; run nothing
python scripts/sweep.py --config training/configs/sweeps/embedded_image_pairs.yaml --dry_run true

# Collect results.csv, summary.csv, results.md and the plots again from the runs on disk
python scripts/sweep.py --config training/configs/sweeps/embedded_image_pairs.yaml --collect_only true

# A short smoke version (another sweep: give it its own output_dir)
python scripts/sweep.py --config training/configs/sweeps/embedded_lora_qlora_rank.yaml --output_dir /tmp/sweep-smoke \
    --seeds 0 --extra_overrides '{"max_steps": 20}'

# Real target on one GPU: Qwen2-VL-2B-Instruct on NLVR2 (the same three questions)
python scripts/sweep.py --config training/configs/sweeps/qwen2vl_2b_image_pairs.yaml
python scripts/sweep.py --config training/configs/sweeps/qwen2vl_2b_instructions.yaml
python scripts/sweep.py --config training/configs/sweeps/qwen2vl_2b_lora_qlora_rank.yaml
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

from trl import TrlParser

from evals.sweep_report import metric_value, write_results
from scripts.sweeps import SweepArguments, check_changed, execute, expand, plan, run_state, sweep_record, validate
from utils.atomic_write import write_json_atomic


def _runs_for_report(runs) -> list[dict]:
    return [
        {"cell": r.cell.name, "variant": r.cell.variant, "axes": r.cell.axes, "seed": r.seed, "dir": r.dir}
        for r in runs
    ]


def _command(argv: list[str]) -> str:
    """The command that runs the sweep (for results.md): this one without --collect_only / --dry_run."""
    kept, i = [], 0
    while i < len(argv):
        if argv[i] in ("--collect_only", "--dry_run"):  # the flag and its value, when one follows
            i += 2 if i + 1 < len(argv) and not argv[i + 1].startswith("--") else 1
            continue
        kept.append(argv[i])
        i += 1
    return " ".join(["python", "scripts/sweep.py", *map(shlex.quote, kept)])


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(args: SweepArguments, command: str | None = None) -> Path:
    """Run (or only collect) a sweep; returns the path of its results.md."""
    command = command or _command(sys.argv[1:])
    cells = expand(args)
    runs = plan(args, cells)
    out = Path(args.output_dir)
    record = sweep_record(args, cells)

    def report() -> Path:
        return write_results(out, record, _runs_for_report(runs), command, args.plot_axis)[2]

    if args.collect_only:
        check_changed(args, runs, remove=False)  # never mix in results made with other settings
        out.mkdir(parents=True, exist_ok=True)
        path = report()
        print(path)
        return path

    steps = validate(args, runs)  # every config parsed before anything runs
    states = {run: run_state(args, run) for run in runs}
    todo = [r for r in runs if states[r] != "complete"]
    print(
        f"sweep {out}: {len(cells)} cells x {len(args.seeds)} seeds = {len(runs)} runs; "
        f"{len(runs) - len(todo)} complete, {len(todo)} to run "
        f"({sum(steps[r] for r in todo if states[r] != 'trained')} training steps)"
    )
    if args.dry_run:
        for run in runs:
            overrides = json.dumps({**run.cell.train, **{f"eval.{k}": v for k, v in run.cell.eval.items()}})
            print(f"  {states[run]:9} {run.dir}  {overrides}")
        return out / "results.md"

    check_changed(args, runs)  # runs saved with other configs: refused, or started over with --overwrite true
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "sweep.json", record)
    for i, run in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {run.cell.name} seed {run.seed}"
        if run_state(args, run) == "complete":
            print(f"{tag}: complete, skipped")
            continue
        start = time.time()
        print(f"{tag}: {run.dir}")
        metrics = execute(args, run)
        shown = ", ".join(f"{m} {_fmt(metric_value(metrics, m))}" for m in args.metrics)
        print(f"{tag}: {shown} ({time.time() - start:.0f} s)")
        report()  # kept current, so an interrupted sweep still has its table
    path = report()
    print(path)
    return path


if __name__ == "__main__":
    from utils.cli import entry_point, parse_args

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with entry_point():
        (sweep_args,) = parse_args(TrlParser((SweepArguments,)))
        main(sweep_args)
